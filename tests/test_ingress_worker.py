"""The ingress worker (`compositor ingress`) against a real livekit-server: a URL pulled in real time, an RTMP
push through nginx-rtmp, a stop, an input that is not there. What reaches the room is checked from a second
participant's side: the colour of the video, the pitch of the audio, the events, the participant leaving."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from livekit import api, rtc

from compositor.protocol import IngressJob, IngressState, InputKind, VideoLayer, parse_ingress_event
from tools.peers.livekit import API_KEY, API_SECRET
from tools.peers.receivers import NGINX_RTMP_MODULE, BackgroundApp, free_port, free_udp_port, listening, wait_until

REPO = Path(__file__).resolve().parent.parent
COLOR, TONE = (0x30, 0x50, 0xE0), 440
PUSH_COLOR, PUSH_TONE = (0xE0, 0x80, 0x20), 660
CLIP_S = 4.0
# Small frames and one layer keep a 2-core machine free for the server and the viewer.
SMALL = [VideoLayer(width=320, height=240, bitrate=300_000)]


def hex_color(rgb: tuple[int, int, int]) -> str:
    return "0x{:02x}{:02x}{:02x}".format(*rgb)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """A folder served over HTTP holding clip.mp4: solid COLOR at 320x240, 15 fps, and a TONE Hz sine."""
    folder = tmp_path_factory.mktemp("media")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"color=c={hex_color(COLOR)}:s=320x240:r=15", "-f", "lavfi", "-i",
                    f"sine=frequency={TONE}:sample_rate=48000", "-t", str(CLIP_S), "-c:v", "libx264", "-preset",
                    "ultrafast", "-g", "15", "-pix_fmt", "yuv420p", "-c:a", "aac", "-movflags", "+faststart",
                    "-y", str(folder / "clip.mp4")], check=True)
    # The same clip as an HLS VOD playlist of 1 s MPEG-TS segments.
    (folder / "hls").mkdir()
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(folder / "clip.mp4"), "-c", "copy",
                    "-f", "hls", "-hls_time", "1", "-hls_playlist_type", "vod",
                    str(folder / "hls" / "clip.m3u8")], check=True)
    return folder


@pytest.fixture(scope="module")
def http_server(media):
    """The media folder on 127.0.0.1 (aiohttp: range requests, as a real server answers them)."""
    from aiohttp import web

    app = web.Application()
    app.router.add_static("/", media)
    server = BackgroundApp(app)
    yield f"http://127.0.0.1:{server.port}"
    server.close()


class Nginx:
    """nginx-rtmp on 127.0.0.1 as an ingress node runs it. App `live` tells its players when the publisher leaves
    (publish_notify: ffmpeg's reader sees the end of the stream at once) and lets a player wait for a publisher
    (the worker may start first); app `strict` drops its players when the publisher leaves and refuses to play
    a stream not yet published (idle_streams off)."""

    def __init__(self, root: Path):
        self.port = free_port()
        (root / "nginx.conf").write_text(f"""load_module {NGINX_RTMP_MODULE};
daemon off;
master_process off;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 64; }}
rtmp {{ server {{
  listen 127.0.0.1:{self.port};
  application live {{ live on; publish_notify on; }}
  application strict {{ live on; idle_streams off; }}
}} }}
""")
        self.proc = subprocess.Popen(["nginx", "-p", str(root), "-c", str(root / "nginx.conf"), "-e",
                                      str(root / "error.log")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(lambda: listening(self.port), 10, "nginx")

    def url(self, key: str, app: str = "live") -> str:
        return f"rtmp://127.0.0.1:{self.port}/{app}/{key}"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def nginx_rtmp(tmp_path_factory):
    server = Nginx(tmp_path_factory.mktemp("nginx-rtmp"))
    yield server
    server.close()


def push(url: str, seconds: float | None = None) -> subprocess.Popen:
    """An RTMP publisher, as OBS would be: PUSH_COLOR video at 30 fps, a PUSH_TONE Hz tone."""
    return subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
         f"color=c={hex_color(PUSH_COLOR)}:s=320x240:r=30", "-f", "lavfi", "-i",
         f"sine=frequency={PUSH_TONE}:sample_rate=48000", *(["-t", str(seconds)] if seconds else []),
         "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "30", "-c:a", "aac",
         "-f", "flv", url], stdin=subprocess.DEVNULL)


def token(room: str, identity: str, kind: str | None = None, publish: bool = False) -> str:
    grants = api.VideoGrants(room_join=True, room=room, can_publish=publish, can_subscribe=not publish)
    tok = api.AccessToken(API_KEY, API_SECRET).with_identity(identity).with_grants(grants)
    return (tok.with_kind(kind) if kind else tok).to_jwt()


def job(livekit, room: str, input: InputKind, url: str, **extra) -> IngressJob:
    return IngressJob(ingress_id=f"IN_{room}", input=input, source_url=url, room_url=livekit.url,
                      token=token(room, f"ingress-{room}", "ingress", publish=True),
                      video={"layers": SMALL, "fps": 30}, **extra)


@dataclass
class Worker:
    """`compositor ingress` as the service runs it: a subprocess, JSON events on stdout."""

    proc: asyncio.subprocess.Process
    started: float
    events: list[tuple[float, dict]] = field(default_factory=list)
    reader: asyncio.Task | None = None

    @classmethod
    async def start(cls, tmp_path: Path, job: IngressJob, *flags: str, env: dict[str, str] | None = None) -> Worker:
        config = tmp_path / "job.json"
        config.write_text(job.model_dump_json())
        config.chmod(0o600)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "compositor", "ingress", "--config", str(config), "--events", "json", *flags,
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})})
        worker = cls(proc, time.monotonic())
        worker.reader = asyncio.create_task(worker._read())
        return worker

    async def _read(self) -> None:
        async for line in self.proc.stdout:
            event = parse_ingress_event(line)
            assert event is not None, f"not an event: {line!r}"
            self.events.append((time.monotonic(), json.loads(line)))

    def states(self) -> list[str]:
        return [e["state"] for _, e in self.events if e["type"] == "ingress"]

    def at(self, state: IngressState) -> float | None:
        return next((t for t, e in self.events if e.get("state") == state), None)

    async def wait_for(self, state: IngressState | str, timeout: float) -> dict:
        """The first event of `state` (or of type "whip_answer")."""
        deadline = time.monotonic() + timeout
        while (found := [e for _, e in self.events if state in (e.get("state"), e["type"])]) == []:
            assert self.proc.returncode is None or not self.reader.done(), \
                f"exited {self.proc.returncode} before {state}: {self.states()}"
            assert time.monotonic() < deadline, f"no {state} within {timeout} s: {self.states()}"
            await asyncio.sleep(0.05)
        return found[0]

    async def finish(self, timeout: float = 15) -> tuple[int, str]:
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
        await self.reader
        return code, (await self.proc.stderr.read()).decode(errors="replace")


class Viewer:
    """A second participant: subscribes to the ingress and keeps what it sees and hears."""

    def __init__(self):
        self.room = rtc.Room()
        self.colors: list[tuple[float, np.ndarray]] = []
        self.samples: list[np.ndarray] = []
        self.left: set[str] = set()
        self._tasks: list[asyncio.Task] = []
        self.room.on("track_subscribed", self._subscribed)
        self.room.on("participant_disconnected", lambda p: self.left.add(p.identity))

    async def join(self, url: str, room: str) -> Viewer:
        await self.room.connect(url, token(room, "viewer"))
        return self

    def _subscribed(self, track, publication, participant) -> None:
        if track.kind == rtc.TrackKind.KIND_VIDEO:
            self._tasks.append(asyncio.create_task(self._watch(rtc.VideoStream(track))))
        else:
            stream = rtc.AudioStream(track, sample_rate=48000, num_channels=1)
            self._tasks.append(asyncio.create_task(self._listen(stream)))

    async def _watch(self, stream: rtc.VideoStream) -> None:
        async for n, event in _numbered(stream):
            if n % 5 == 0:  # a colour now and then is enough, and keeps the viewer cheap
                frame = event.frame.convert(rtc.VideoBufferType.RGBA)
                pixels = np.frombuffer(frame.data, np.uint8).reshape(frame.height, frame.width, 4)
                h, w = frame.height, frame.width
                self.colors.append((time.monotonic(), pixels[h // 4: 3 * h // 4, w // 4: 3 * w // 4, :3]
                                    .reshape(-1, 3).mean(axis=0)))

    async def _listen(self, stream: rtc.AudioStream) -> None:
        async for event in stream:
            self.samples.append(np.frombuffer(event.frame.data, np.int16).copy())

    def first_video(self) -> float | None:
        return self.colors[0][0] if self.colors else None

    def color(self, skip: int = 3) -> np.ndarray:
        assert len(self.colors) > skip, f"the viewer saw {len(self.colors)} sampled frames"
        return np.median([c for _, c in self.colors[skip:]], axis=0)

    def pitch(self) -> float:
        audio = np.concatenate(self.samples).astype(float) if self.samples else np.zeros(0)
        assert len(audio) > 48000, f"the viewer heard {len(audio) / 48000:.2f} s"
        audio = audio[len(audio) // 4:]  # past the start (an encoder warming up)
        spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
        return float(np.fft.rfftfreq(len(audio), 1 / 48000)[spectrum.argmax()])

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.room.disconnect()


async def _numbered(stream):
    n = 0
    async for item in stream:
        yield n, item
        n += 1


def assert_color(seen: np.ndarray, want: tuple[int, int, int]) -> None:
    assert np.abs(seen - np.array(want)).max() <= 25, f"saw {seen.round()}, want {want}"


async def wait_left(viewer: Viewer, identity: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while identity not in viewer.left:
        assert time.monotonic() < deadline, f"{identity} still in the room"
        await asyncio.sleep(0.05)


@pytest.fixture
async def viewer_factory():
    viewers: list[Viewer] = []

    async def make(livekit, room: str) -> Viewer:
        viewers.append(await Viewer().join(livekit.url, room))
        return viewers[-1]

    yield make
    for v in viewers:
        with contextlib.suppress(Exception):
            await v.close()


async def test_url_is_published_in_real_time_then_complete(livekit, http_server, viewer_factory, tmp_path):
    room = "ingress-url"
    viewer = await viewer_factory(livekit, room)
    worker = await Worker.start(tmp_path, job(livekit, room, InputKind.URL, f"{http_server}/clip.mp4"))
    code, stderr = await worker.finish(timeout=30)
    assert code == 0, stderr[-3000:]
    assert worker.states() == [IngressState.BUFFERING, IngressState.PUBLISHING, IngressState.COMPLETE]
    buffering, publishing = (e for _, e in worker.events[:2])
    assert buffering["ingress_id"] == f"IN_{room}"
    assert buffering["video"]["mime_type"] == "video/h264" and buffering["video"]["width"] == 320
    assert buffering["audio"]["mime_type"] == "audio/aac" and buffering["audio"]["sample_rate"] == 48000
    tracks = {t["type"]: t for t in publishing["tracks"]}
    assert tracks["video"]["source"] == "camera" and tracks["video"]["width"] == 320
    assert tracks["audio"]["source"] == "microphone" and tracks["video"]["sid"].startswith("TR_")
    # Real time: the clip's 4 s take 4 s in the room, not the moment a decoder needs.
    played = worker.at(IngressState.COMPLETE) - worker.at(IngressState.PUBLISHING)
    assert CLIP_S - 0.3 <= played <= CLIP_S + 3, played
    assert_color(viewer.color(), COLOR)
    assert abs(viewer.pitch() - TONE) < 10
    await wait_left(viewer, f"ingress-{room}")


async def test_an_untrusted_hls_pull_is_fetched_here_under_the_policy(livekit, http_server, viewer_factory,
                                                                     tmp_path):
    """An HLS playlist of a request is read by the worker itself (each playlist and segment a GET under the
    outbound policy, through the gate), in real time, to COMPLETE."""
    room = "ingress-hls"
    port = int(http_server.rsplit(":", 1)[1])
    viewer = await viewer_factory(livekit, room)
    worker = await Worker.start(tmp_path, job(livekit, room, InputKind.URL, f"{http_server}/hls/clip.m3u8"),
                                "--untrusted", "--allow-host", f"127.0.0.1:{port}")
    code, stderr = await worker.finish(timeout=30)
    assert code == 0, stderr[-3000:]
    assert worker.states() == [IngressState.BUFFERING, IngressState.PUBLISHING, IngressState.COMPLETE]
    played = worker.at(IngressState.COMPLETE) - worker.at(IngressState.PUBLISHING)
    assert CLIP_S - 0.5 <= played <= CLIP_S + 3, played
    assert_color(viewer.color(), COLOR)
    assert abs(viewer.pitch() - TONE) < 10
    await wait_left(viewer, f"ingress-{room}")


async def test_a_live_hls_playlist_is_followed_until_it_ends(livekit, media, http_server, viewer_factory, tmp_path):
    """A live playlist (no ENDLIST yet) is joined near its edge and reloaded as segments come; when its
    encoder finishes it (ENDLIST), the session is COMPLETE."""
    room = "ingress-hls-live"
    port = int(http_server.rsplit(":", 1)[1])
    folder = media / "live"
    folder.mkdir(exist_ok=True)
    encoder = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "1", "-i", str(media / "clip.mp4"),
         "-c", "copy", "-f", "hls", "-hls_time", "1", "-hls_list_size", "4", str(folder / "live.m3u8")])
    try:
        wait_until(lambda: (folder / "live.m3u8").exists(), 10, "the live playlist")
        viewer = await viewer_factory(livekit, room)
        worker = await Worker.start(tmp_path, job(livekit, room, InputKind.URL, f"{http_server}/live/live.m3u8"),
                                    "--untrusted", "--allow-host", f"127.0.0.1:{port}")
        code, stderr = await worker.finish(timeout=40)
    finally:
        encoder.kill()
        encoder.wait()
    assert code == 0, stderr[-3000:]
    assert worker.states() == [IngressState.BUFFERING, IngressState.PUBLISHING, IngressState.COMPLETE]
    assert_color(viewer.color(), COLOR)
    assert abs(viewer.pitch() - TONE) < 10


async def test_rtmp_push_is_published_and_ends_inactive_when_the_publisher_leaves(livekit, nginx_rtmp,
                                                                                   viewer_factory, tmp_path):
    room = "ingress-rtmp"
    viewer = await viewer_factory(livekit, room)
    url = nginx_rtmp.url("stream-key-1")
    # Started ahead of its publisher, the worker waits for it and catches the stream from its first key frame.
    worker = await Worker.start(tmp_path, job(livekit, room, InputKind.RTMP, url))
    await asyncio.sleep(3)
    assert worker.states() == []
    pusher = push(url)
    pushed = time.monotonic()
    try:
        await worker.wait_for(IngressState.PUBLISHING, timeout=20)
        await asyncio.sleep(3)
        assert_color(viewer.color(), PUSH_COLOR)
        assert abs(viewer.pitch() - PUSH_TONE) < 10
        # Typically 0.5-1 s; the bound leaves room for a busy machine.
        assert viewer.first_video() - pushed < 3
    finally:
        pusher.kill()
        pusher.wait()
    left = time.monotonic()
    code, stderr = await worker.finish(timeout=10)
    assert code == 0, stderr[-3000:]
    assert worker.states() == [IngressState.BUFFERING, IngressState.PUBLISHING, IngressState.INACTIVE]
    assert worker.at(IngressState.INACTIVE) - left < 5
    assert "stream-key-1" not in stderr  # the stream key is a secret: logs name the stream without it
    await wait_left(viewer, f"ingress-{room}")


async def test_rtmp_worker_started_as_the_publisher_connects(livekit, nginx_rtmp, viewer_factory, tmp_path):
    """A server that refuses to play a stream not yet published: the worker, started by the publisher's
    arrival, asks again until the stream is there; the publisher's end closes the stream."""
    room = "ingress-rtmp-strict"
    viewer = await viewer_factory(livekit, room)
    url = nginx_rtmp.url("stream-key-2", app="strict")
    worker = await Worker.start(tmp_path, job(livekit, room, InputKind.RTMP, url))
    pusher = push(url)
    try:
        await worker.wait_for(IngressState.PUBLISHING, timeout=20)
        await asyncio.sleep(2)
        assert_color(viewer.color(skip=1), PUSH_COLOR)
    finally:
        pusher.kill()
        pusher.wait()
    left = time.monotonic()
    code, stderr = await worker.finish(timeout=10)
    assert code == 0, stderr[-3000:]
    assert worker.states()[-1] == IngressState.INACTIVE and worker.at(IngressState.INACTIVE) - left < 5


async def test_srt_pull_is_published_until_its_source_ends(livekit, viewer_factory, tmp_path):
    """An SRT URL: Debian's ffmpeg pulls it for the worker; the source's end completes the ingress."""
    room = "ingress-srt"
    viewer = await viewer_factory(livekit, room)
    port = free_udp_port()
    source = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
         f"color=c={hex_color(PUSH_COLOR)}:s=320x240:r=30", "-f", "lavfi", "-i",
         f"sine=frequency={PUSH_TONE}:sample_rate=48000", "-t", "7", "-c:v", "libx264", "-preset", "ultrafast",
         "-tune", "zerolatency", "-g", "30", "-c:a", "aac", "-f", "mpegts",
         f"srt://127.0.0.1:{port}?mode=listener&passphrase=srt-secret-42"], stdin=subprocess.DEVNULL)
    try:
        await asyncio.sleep(0.5)
        worker = await Worker.start(tmp_path, job(livekit, room, InputKind.URL,
                                                  f"srt://127.0.0.1:{port}?passphrase=srt-secret-42"), "-v")
        await worker.wait_for(IngressState.PUBLISHING, timeout=20)
        await asyncio.to_thread(source.wait, 20)
    finally:
        source.kill()
        source.wait()
    ended = time.monotonic()
    code, stderr = await worker.finish(timeout=10)
    assert code == 0, stderr[-3000:]
    assert worker.states() == [IngressState.BUFFERING, IngressState.PUBLISHING, IngressState.COMPLETE]
    assert worker.at(IngressState.COMPLETE) - ended < 5
    assert_color(viewer.color(), PUSH_COLOR)
    assert abs(viewer.pitch() - PUSH_TONE) < 10
    assert "srt-secret-42" not in stderr  # logged (-v) without its passphrase


async def test_a_publisher_that_stops_sending_is_a_stalled_input(livekit, nginx_rtmp, viewer_factory, tmp_path):
    room = "ingress-stall"
    viewer = await viewer_factory(livekit, room)
    url = nginx_rtmp.url("stream-key-3")
    pusher = push(url)
    try:
        worker = await Worker.start(tmp_path, job(livekit, room, InputKind.RTMP, url, stall_s=2.0))
        await worker.wait_for(IngressState.PUBLISHING, timeout=20)
        await asyncio.sleep(1)
        pusher.send_signal(signal.SIGSTOP)  # its connection stays open; nothing more comes
        stalled = time.monotonic()
        code, stderr = await worker.finish(timeout=10)
    finally:
        pusher.kill()
        pusher.wait()
    assert code == 1, stderr[-3000:]
    assert worker.states()[-1] == IngressState.ERROR and worker.events[-1][1]["code"] == "INPUT_STALLED"
    assert worker.at(IngressState.ERROR) - stalled < 5
    await wait_left(viewer, f"ingress-{room}")


async def test_whip_publisher_is_answered_published_and_ends_inactive(livekit, viewer_factory, tmp_path):
    from tools.peers.whip import LOOPBACK, WhipPublisher

    room = "ingress-whip"
    viewer = await viewer_factory(livekit, room)
    publisher = WhipPublisher(rgb=PUSH_COLOR, tone_hz=PUSH_TONE)
    try:
        offer = await publisher.offer()
        worker = await Worker.start(tmp_path, job(livekit, room, InputKind.WHIP, None, whip_offer=offer),
                                    env={"COMPOSITOR_WHIP_ICE_ADDRESSES": ",".join(LOOPBACK)})
        answer = await worker.wait_for("whip_answer", timeout=20)
        await publisher.accept(answer["sdp"])
        await worker.wait_for(IngressState.PUBLISHING, timeout=20)
        await asyncio.sleep(3)
        assert_color(viewer.color(), PUSH_COLOR)
        assert abs(viewer.pitch() - PUSH_TONE) < 10
    finally:
        await publisher.close()
    left = time.monotonic()
    code, stderr = await worker.finish(timeout=10)
    assert code == 0, stderr[-3000:]
    assert worker.states() == [IngressState.BUFFERING, IngressState.PUBLISHING, IngressState.INACTIVE]
    assert worker.at(IngressState.INACTIVE) - left < 5
    await wait_left(viewer, f"ingress-{room}")


async def test_a_stop_leaves_the_room_inactive(livekit, http_server, viewer_factory, tmp_path):
    room = "ingress-stop"
    viewer = await viewer_factory(livekit, room)
    worker = await Worker.start(tmp_path, job(livekit, room, InputKind.URL, f"{http_server}/clip.mp4"))
    await worker.wait_for(IngressState.PUBLISHING, timeout=20)
    await asyncio.sleep(1)
    worker.proc.send_signal(signal.SIGINT)
    code, stderr = await worker.finish(timeout=10)
    assert code == 0, stderr[-3000:]
    assert worker.states() == [IngressState.BUFFERING, IngressState.PUBLISHING, IngressState.INACTIVE]
    await wait_left(viewer, f"ingress-{room}")


async def test_an_unreachable_input_is_an_error_at_once(livekit, tmp_path):
    worker = await Worker.start(tmp_path, job(livekit, "ingress-gone", InputKind.URL,
                                              f"http://127.0.0.1:{free_port()}/x.mp4"))
    code, stderr = await worker.finish(timeout=15)
    assert code == 1, stderr[-3000:]
    [(_, event)] = worker.events
    assert event["state"] == IngressState.ERROR and event["code"] == "INPUT_UNREACHABLE", event
    assert time.monotonic() - worker.started < 8  # the worker's start (imports) is most of it


async def test_an_untrusted_url_reaches_only_allowed_hosts(livekit, http_server, tmp_path):
    """--untrusted: a private address only with --allow-host, and every connection through the outbound gate,
    so a redirect to a host not allowed is refused too."""
    port = int(http_server.rsplit(":", 1)[1])
    refused = await Worker.start(tmp_path, job(livekit, "ingress-refused", InputKind.URL,
                                               f"{http_server}/clip.mp4"), "--untrusted")
    code, stderr = await refused.finish(timeout=15)
    assert code == 1, stderr[-3000:]
    [(_, event)] = refused.events
    assert event["state"] == IngressState.ERROR and event["code"] == "ADDRESS_NOT_ALLOWED", event

    allowed = await Worker.start(tmp_path, job(livekit, "ingress-allowed", InputKind.URL, f"{http_server}/clip.mp4"),
                                 "--untrusted", "--allow-host", f"127.0.0.1:{port}")
    code, stderr = await allowed.finish(timeout=30)
    assert code == 0, stderr[-3000:]
    assert allowed.states()[-1] == IngressState.COMPLETE


async def test_an_untrusted_url_cannot_redirect_past_the_gate(livekit, redirecting_server, tmp_path):
    allowed_url, elsewhere = redirecting_server
    port = int(allowed_url.split(":")[2].split("/")[0])
    worker = await Worker.start(tmp_path, job(livekit, "ingress-redirect", InputKind.URL, allowed_url),
                                "--untrusted", "--allow-host", f"127.0.0.1:{port}")
    code, stderr = await worker.finish(timeout=20)
    assert code == 1, stderr[-3000:]
    assert worker.states() == [IngressState.ERROR]
    assert elsewhere == [], "the redirect's target was reached"


@pytest.fixture
def redirecting_server(media):
    """An allowed server whose clip.mp4 redirects to another one (on a port not allowed), and the requests
    that other one got."""
    from aiohttp import web

    reached: list[str] = []

    async def target(request):
        reached.append(request.path)
        return web.FileResponse(media / "clip.mp4")

    other = web.Application()
    other.router.add_get("/clip.mp4", target)
    other_server = BackgroundApp(other)

    async def redirect(request):
        raise web.HTTPFound(f"http://127.0.0.1:{other_server.port}/clip.mp4")

    app = web.Application()
    app.router.add_get("/clip.mp4", redirect)
    server = BackgroundApp(app)
    yield f"http://127.0.0.1:{server.port}/clip.mp4", reached
    server.close()
    other_server.close()


@pytest.mark.parametrize("name, segment", [
    # Served under a file's name, a playlist cannot lead ffmpeg elsewhere: only demuxers that open no further
    # URL read an untrusted pull.
    ("show.mp4", "httpproxy://127.0.0.1:{port}/seg0.ts"),
    # As a playlist, each URL it names is the worker's own GET under the policy: no httpproxy:// (which would
    # connect past the gate), no host the policy does not allow.
    ("show.m3u8", "httpproxy://127.0.0.1:{port}/seg0.ts"),
    ("show.m3u8", "http://127.0.0.1:{port}/seg0.ts"),
])
async def test_an_untrusted_url_cannot_be_a_playlist_naming_urls_past_the_gate(livekit, tmp_path, name, segment):
    import socket
    import threading

    from aiohttp import web

    elsewhere = socket.create_server(("127.0.0.1", 0))
    reached: list[str] = []

    def accept() -> None:
        try:
            conn, _ = elsewhere.accept()
            reached.append("connected")
            conn.close()
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    port = elsewhere.getsockname()[1]
    playlist = (f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n"
                f"{segment.format(port=port)}\n#EXT-X-ENDLIST\n")

    async def show(_):
        return web.Response(text=playlist, content_type="application/vnd.apple.mpegurl")

    app = web.Application()
    app.router.add_get(f"/{name}", show)
    server = BackgroundApp(app)
    try:
        worker = await Worker.start(tmp_path, job(livekit, "ingress-playlist", InputKind.URL,
                                                  f"http://127.0.0.1:{server.port}/{name}"),
                                    "--untrusted", "--allow-host", f"127.0.0.1:{server.port}")
        code, stderr = await worker.finish(timeout=20)
        assert code == 1, stderr[-3000:]
        assert worker.states() == [IngressState.ERROR]
        assert reached == [], "the playlist's segment host was connected to"
    finally:
        server.close()
        elsewhere.close()
