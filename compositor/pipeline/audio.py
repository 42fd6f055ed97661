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
from ..process import ManagedProcess

SINK = "compositor"


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
             # An idle null sink sleeps in 2 s blocks, and a stream arriving
             # mid-block is not heard until the block ends (up to 2 s of lost
             # sound at the start). Suspended instead, it wakes on demand.
             "-L", "module-suspend-on-idle timeout=0"],
            env=env,
        )
        await self._proc.start()
        deadline = time.monotonic() + timeout
        while not await self._answers():
            if not self._proc.running or time.monotonic() > deadline:
                await self._proc.stop()
                raise AudioFailed(f"PulseAudio did not start: {self._proc.describe_exit()}")
            await asyncio.sleep(0.02)

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
