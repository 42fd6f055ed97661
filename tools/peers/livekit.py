"""A real livekit-server on 127.0.0.1 and publishers (tools/lkpub) sending pre-encoded clips, for the LiveKit
room tests and benchmarks. Both are built by `make livekit-tools`."""

from __future__ import annotations

import asyncio
import random
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .receivers import free_port, wait_http

REPO = Path(__file__).resolve().parent.parent.parent
BIN = REPO / ".tools" / "bin"
API_KEY = "devkey"
API_SECRET = "compositor-test-secret-0123456789abcdef"
WHY_MISSING = ("LiveKit tools missing: install Go 1.22+ (https://go.dev/dl/) and run `make livekit-tools` "
               "(builds livekit-server and tools/lkpub into .tools/bin)")


#: The clips' frame rate, and lkpub's pacing of a clip's video unless told another.
CLIP_FPS = 15


@dataclass(frozen=True)
class Clip:
    """A participant's pre-encoded camera (VP8 in IVF) and microphone (Opus in OGG)."""

    color: str
    tone: int
    video: Path
    audio: Path
    fps: int = CLIP_FPS


def make_clip(folder: Path, color: str, tone: int, seconds: int = 40, size: str = "320x240") -> Clip:
    """A solid `color` clip and a `tone` Hz sine, cheap to publish (15 fps)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = color.lstrip("#")
    video, audio = folder / f"{name}-{size}.ivf", folder / f"{tone}.ogg"
    if not video.exists():
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                        f"color=c=0x{name}:s={size}:r={CLIP_FPS}", "-t", str(seconds), "-c:v", "libvpx",
                        "-deadline", "realtime", "-cpu-used", "8", "-b:v", "200k", "-g", str(CLIP_FPS),
                        "-keyint_min", str(CLIP_FPS),
                        "-auto-alt-ref", "0", "-pix_fmt", "yuv420p", "-y", str(video)], check=True)
    if not audio.exists():
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                        f"sine=frequency={tone}:sample_rate=48000", "-t", str(seconds), "-ac", "1",
                        "-c:a", "libopus", "-b:a", "32k", "-frame_duration", "20", "-y", str(audio)], check=True)
    return Clip(color, tone, video, audio)


#: A stepped marker clip's frame rate and its steps: marker n comes (n mod STEPS) frames after second n.
STEPPED_FPS, STEPS = 24, 4


def make_marker_clip(folder: Path, seconds: int = 40, stepped: bool = False) -> Clip:
    """A clip with sync markers: once a second a white flash (~0.13 s) and a 3 kHz click (analysis.CLICK_HZ) at
    the same instant, on a dark blue camera.

    At 15 fps every flash falls at the same place between two 30 fps captures, so a recording's offsets carry
    that one capture phase (up to a frame). `stepped` makes a 24 fps clip whose marker n comes (n mod 4)
    frames after second n: 0, 8.3, 16.7 and 25 ms into a 30 fps capture's frame, so four markers in a row
    average the phase out."""
    folder.mkdir(parents=True, exist_ok=True)
    fps, steps = (STEPPED_FPS, STEPS) if stepped else (CLIP_FPS, 1)
    video, audio = folder / f"markers-{fps}.ivf", folder / f"markers-{fps}.ogg"
    # Time since marker floor(t) began (negative before it): the flash and the click both start at 0.
    since = f"(mod(t\\,1)-mod(floor(t)\\,{steps})/{fps})"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"color=c=0x203060:s=320x240:r={fps},"
                    f"drawbox=c=white:t=fill:enable='between({since}\\,-0.001\\,0.12)'",
                    "-t", str(seconds), "-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "300k",
                    "-g", str(fps), "-keyint_min", str(fps), "-auto-alt-ref", "0", "-pix_fmt", "yuv420p", "-y",
                    str(video)], check=True)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"aevalsrc='if(between({since}\\,0\\,0.03)\\,0.8*sin(2*PI*3000*t)\\,0)':s=48000:c=mono",
                    "-t", str(seconds), "-c:a", "libopus", "-b:a", "64k", "-frame_duration", "20", "-y", str(audio)],
                   check=True)
    return Clip("#203060", 0, video, audio, fps)


def clock_residuals(flashes: list[float]) -> list[float]:
    """Where each flash falls against the publisher's clock (s), from the first one, the markers' own steps taken
    out: marker n comes (n mod STEPS) frames after second n, and which step the first flash was, the best fit
    says (a wrong guess is off by whole frames)."""
    if not flashes:
        return []
    whole = [round(f - flashes[0]) for f in flashes]
    fits = [[f - flashes[0] - n - (((first + n) % STEPS) - first) / STEPPED_FPS for f, n in zip(flashes, whole)]
            for first in range(STEPS)]
    return min(fits, key=statistics.pstdev)


class LiveKitServer:
    """livekit-server with its own ports on 127.0.0.1, dev keys, and optional webhook receivers."""

    def __init__(self, workdir: Path, webhook_urls: list[str] | None = None):
        self.workdir = workdir
        self.port = free_port()
        rtc_base = random.randrange(40000, 59000, 100)
        config = {
            "port": self.port, "bind_addresses": ["127.0.0.1"], "log_level": "info",
            "rtc": {"tcp_port": 0, "port_range_start": rtc_base, "port_range_end": rtc_base + 99,
                    "use_external_ip": False, "node_ip": "127.0.0.1", "enable_loopback_candidate": True,
                    # No STUN beyond this host: candidates stay on 127.0.0.1.
                    "stun_servers": ["127.0.0.1:3478"], "ips": {"includes": ["127.0.0.1/32"]}},
            "keys": {API_KEY: API_SECRET},
        }
        if webhook_urls:
            config["webhook"] = {"api_key": API_KEY, "urls": webhook_urls}
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "livekit.yaml").write_text(yaml.safe_dump(config))
        self.log = workdir / "livekit.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(BIN / "livekit-server"), "--config", str(workdir / "livekit.yaml")],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_http(self.http_url, proc=self.proc)
        self.publishers: list[Publisher] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What a worker (or the service) needs to record from this server."""
        return {"LIVEKIT_URL": self.url, "LIVEKIT_API_KEY": API_KEY, "LIVEKIT_API_SECRET": API_SECRET}

    def publish(self, room: str, identity: str, *files: Path, source: str = "", simulcast: bool = False,
                kind: str = "", fps: int = CLIP_FPS) -> Publisher:
        """`identity` joins `room` and publishes `files` (with `simulcast`, its videos are one track's layers; their
        frame rate `fps`), as a participant of `kind` (agent, sip, …; default standard)."""
        pub = Publisher(self, room, identity, files, source, simulcast, kind, fps)
        self.publishers.append(pub)
        return pub

    def api(self, call):
        """Run `call(lkapi)` with livekit-api's client for this server (RoomService and friends)."""
        from livekit import api

        async def run():
            async with api.LiveKitAPI(self.http_url, API_KEY, API_SECRET) as lkapi:
                return await call(lkapi)

        return asyncio.run(run())

    def participants(self, room: str) -> dict[str, int]:
        """identity -> published tracks, of the room's visible participants."""
        from livekit import api

        async def call(lkapi):
            try:
                res = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
            except api.TwirpError:
                return {}
            return {p.identity: len(p.tracks) for p in res.participants}

        return self.api(call)

    def tracks(self, room: str) -> dict[str, dict[str, str]]:
        """identity -> {source: track sid} (camera, microphone, screen_share, screen_share_audio)."""
        from livekit import api

        async def call(lkapi):
            res = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
            return {p.identity: {api.TrackSource.Name(t.source).lower(): t.sid for t in p.tracks}
                    for p in res.participants}

        return self.api(call)

    def room_sid(self, room: str) -> str:
        """The room's sid (`RM_…`), as the server names this session of it."""
        from livekit import api

        async def call(lkapi):
            res = await lkapi.room.list_rooms(api.ListRoomsRequest(names=[room]))
            return next(r.sid for r in res.rooms if r.name == room)

        return self.api(call)

    def wait_published(self, room: str, tracks: dict[str, int], timeout: float = 20) -> None:
        """Until each identity has published at least that many tracks."""
        deadline = time.monotonic() + timeout
        while not all((now := self.participants(room)).get(k, 0) >= n for k, n in tracks.items()):
            if time.monotonic() > deadline:
                raise AssertionError(f"room {room}: {now}, wanted {tracks}\n{self.log.read_text()[-2000:]}")
            time.sleep(0.3)

    def delete_room(self, room: str) -> None:
        from livekit import api
        self.api(lambda lkapi: lkapi.room.delete_room(api.DeleteRoomRequest(room=room)))

    def close(self) -> None:
        for pub in self.publishers:
            pub.stop()
        _stop(self.proc)


class Publisher:
    """One participant publishing files with lkpub until stopped (it leaves the room then)."""

    def __init__(self, server: LiveKitServer, room: str, identity: str, files: tuple[Path, ...], source: str,
                 simulcast: bool = False, kind: str = "", fps: int = CLIP_FPS):
        self.identity = identity
        argv = [str(BIN / "lkpub"), "-url", server.url, "-key", API_KEY, "-secret", API_SECRET, "-room", room,
                "-identity", identity, "-fps", str(fps), *(["-source", source] if source else []),
                *(["-simulcast"] if simulcast else []), *(["-kind", kind] if kind else []), *map(str, files)]
        self.log = server.workdir / f"lkpub-{identity}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        """Leave the room (SIGTERM)."""
        _stop(self.proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it is still there after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
