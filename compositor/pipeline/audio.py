"""The page's sound: a private PulseAudio server whose only sink is a null sink.

A server per egress (not a sink in a shared one) means nothing to clean up
in anyone else's daemon, and two workers can never hear each other.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from ..errors import AudioFailed
from ..process import ManagedProcess, run_tool

SINK = "compositor"
#: the silent source that keeps the sink busy
QUIET = "quiet"


class AudioSink:
    """Owns a PulseAudio daemon in `runtime_dir` with one null sink."""

    def __init__(self, runtime_dir: Path, sample_rate: int = 48000):
        self.runtime_dir = runtime_dir
        self.sample_rate = sample_rate
        self._proc: ManagedProcess | None = None

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "native"

    @property
    def server(self) -> str:
        """The PULSE_SERVER value clients (Chromium, ffmpeg) connect with."""
        return f"unix:{self.socket}"

    @property
    def monitor(self) -> str:
        return f"{SINK}.monitor"

    @property
    def process(self) -> ManagedProcess | None:
        return self._proc

    async def start(self, timeout: float = 10.0) -> None:
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        # Chromium opens its output at the server's default rate (44.1 kHz unless told), not the sink's: the page's
        # 48 kHz sound went to 44.1 kHz in Chromium and back in PulseAudio on its way to the file.
        config = self.runtime_dir / "daemon.conf"
        config.write_text(f"default-sample-rate = {self.sample_rate}\n")
        env = {
            **os.environ,
            "HOME": str(self.runtime_dir),
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "XDG_CONFIG_HOME": str(self.runtime_dir / "config"),
            "PULSE_STATE_PATH": str(self.runtime_dir / "state"),
            "PULSE_RUNTIME_PATH": str(self.runtime_dir),
            "PULSE_CONFIG": str(config),
        }
        env.pop("DISPLAY", None)  # no X11 bell or session modules
        self._proc = ManagedProcess(
            "pulseaudio",
            ["pulseaudio", "--daemonize=no", "--exit-idle-time=-1", "-n", "--use-pid-file=no",
             "--disallow-module-loading", "--log-target=stderr", "--log-level=error",
             "-L", f"module-native-protocol-unix socket={self.socket} auth-anonymous=1",
             "-L", f"module-null-sink sink_name={SINK} rate={self.sample_rate} channels=2 "
                   f"sink_properties=device.description={SINK}",
             # A null sink with nothing playing works in 2 s blocks: a recording of a page that plays no sound
             # got its first sound 2 s late, and ffmpeg, which waits for it before it reads any grab, began the
             # file with 2 s of one picture. A silent input of the sink's own keeps its blocks short (50 ms; a
             # page's own stream asks for ~11, and the sink follows the shortest). Source and sink run on the same
             # clock, so the loopback matches no rates (adjust_time=0): nothing is resampled.
             "-L", f"module-null-source source_name={QUIET} rate={self.sample_rate} channels=2",
             "-L", f"module-loopback source={QUIET} sink={SINK} latency_msec=50 "
                   "adjust_time=0 source_dont_move=true sink_dont_move=true"],
            env=env,
        )
        await self._proc.start()
        deadline = time.monotonic() + timeout
        while not await self._answers():
            if not self._proc.running or time.monotonic() > deadline:
                await self._proc.stop()
                raise AudioFailed(f"PulseAudio did not start: {self._proc.describe_exit()}")
            await asyncio.sleep(0.02)
        try:
            # The sink began its first block (2 s) before the silent input came; restarted, it works in short ones.
            await self.control("restart the sink", "suspend-sink", SINK, "1")
            await self.control("restart the sink", "suspend-sink", SINK, "0")
        except AudioFailed:
            await self._proc.stop()
            raise

    async def control(self, what: str, *command: str) -> None:
        """Run a pactl command on this server; AudioFailed (saying it could not `what`) when it fails."""
        code, _ = await run_tool("pactl", ["pactl", "--server", self.server, *command], 5)
        if code != 0:
            raise AudioFailed(f"could not {what} (pactl exit {code})")

    async def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            _, writer = await asyncio.open_unix_connection(str(self.socket))
        except OSError:
            return False
        writer.close()
        return True

    async def stop(self) -> None:
        if self._proc is not None:
            await self._proc.stop()
