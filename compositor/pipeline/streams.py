"""Live destinations: the encode's FLV fanned out, one pusher process per destination.

ffmpeg encodes once and writes the stream as FLV into a pipe. The worker
reads it and gives each tag to every destination's own queue; each
destination's pusher (`ffmpeg -c copy`, its own connection) sends it on. A
destination that refuses, drops or stops reading only ever fills its own
queue, so the file, the HLS and the other destinations never wait for it.
A destination that starts (or starts again) is given the stream's header and
codec configuration and everything since the last keyframe, so it begins at
once, on a keyframe.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ..destinations import StreamTarget
from ..errors import InvalidRequest, StreamFailed
from ..outbound import AddressRefused, HostNotFound, OutboundPolicy
from ..plan import ImageSettings, StreamSettings, VideoSettings
from ..process import ManagedProcess
from ..protocol import StreamStatus
from .encoder import Progress, progress_updates
from .pipes import EncoderPipe

log = logging.getLogger(__name__)

# A destination whose oldest queued tag waited this long has stopped reading.
STALL_S = 5.0
# A destination that has not accepted the stream this long after its pusher started.
CONNECT_TIMEOUT_S = 10.0
# Reconnect delays grow from the first to the last, then stay there.
BACKOFF_S = (1.0, 2.0, 4.0, 8.0)
# At the end, a pusher gets this long to send what it holds and close.
FINISH_S = 5.0
# ~1 s of a 4 Mbit/s stream; enough for a 100 ms path at 20 Mbit/s.
SEND_BUFFER_BYTES = 512 * 1024
PIPE_BYTES = 1 << 20

# A thumbnailer that dies (it should not) is started again for this long.
THUMBNAILER_RETRY_S = 60.0

FLV_AUDIO, FLV_VIDEO, FLV_SCRIPT = 8, 9, 18
# How every process fed by the fan-out runs: progress on stdout, and the FLV on stdin, read at once.
_FFMPEG = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-progress", "pipe:1", "-stats_period", "0.5"]
_FLV_PIPE = ["-probesize", "32", "-analyzeduration", "0", "-f", "flv", "-i", "pipe:0"]


@dataclass(frozen=True)
class FlvTag:
    """One FLV tag as read: its whole bytes (header, body, trailing size)."""

    kind: int
    timestamp: int
    raw: bytes

    @property
    def body(self) -> bytes:
        return self.raw[11:-4]

    @property
    def is_config(self) -> bool:
        """Metadata or codec configuration: every destination needs it before any frame."""
        body = self.body
        if self.kind == FLV_SCRIPT:
            return True
        if len(body) < 2:
            return False
        if self.kind == FLV_VIDEO:
            return body[1] == 0  # AVC sequence header
        return self.kind == FLV_AUDIO and body[0] >> 4 == 10 and body[1] == 0  # AAC sequence header

    @property
    def keyframe(self) -> bool:
        body = self.body
        return self.kind == FLV_VIDEO and len(body) > 1 and body[0] >> 4 == 1 and body[1] == 1

    def retimed(self, base: int) -> bytes:
        """The tag with its timestamp counted from `base` (each destination's stream starts at 0)."""
        ts = max(0, self.timestamp - base)
        return self.raw[:4] + (ts & 0xFFFFFF).to_bytes(3, "big") + bytes([(ts >> 24) & 0xFF]) + self.raw[8:]


async def read_flv(reader: asyncio.StreamReader) -> AsyncIterator[bytes | FlvTag]:
    """The FLV file header (bytes) first, then each tag until the stream ends."""
    try:
        yield await reader.readexactly(9)
        await reader.readexactly(4)  # PreviousTagSize0
        while True:
            head = await reader.readexactly(11)
            rest = await reader.readexactly(int.from_bytes(head[1:4], "big") + 4)
            yield FlvTag(kind=head[0] & 0x1F, timestamp=int.from_bytes(head[4:7], "big") | head[7] << 24,
                         raw=head + rest)
    except asyncio.IncompleteReadError:
        return


def classify(target: StreamTarget, stderr_tail: list[str], reached: bool) -> tuple[str, str]:
    """A pusher's end as (error code, message), from how far it got and what ffmpeg said."""
    proto = target.protocol
    said = stderr_tail[-1] if stderr_tail else "no message"
    text = " ".join(stderr_tail).lower()
    if reached:
        return f"{proto}_DISCONNECTED", f"the destination closed the connection ({said})"
    rules = [
        (("connection refused",), "CONNECTION_REFUSED", f"{proto} connection refused by destination"),
        (("certificate", "tls", "ssl", "handshake"), "TLS_ERROR", "the TLS connection failed"),
        (("name or service not known", "name resolution", "failed to resolve", "no address associated"),
         "HOST_NOT_FOUND", "the destination's host name does not resolve"),
        (("timed out", "timeout"), "TIMEOUT", "the destination did not answer in time"),
    ]
    for needles, code, message in rules:
        if any(n in text for n in needles):
            return f"{proto}_{code}", f"{message} ({said})"
    if proto == "RTMP":
        return "RTMP_PUBLISH_REJECTED", f"the destination refused the stream; check the stream key ({said})"
    return "SRT_CONNECTION_FAILED", f"the SRT destination did not accept the connection ({said})"


class Destination:
    """One live destination: its queue, its pusher, its retries and its status."""

    def __init__(self, target: StreamTarget, settings: StreamSettings,
                 backlog: Callable[[], tuple[bytes, list[FlvTag]]], on_change: Callable[[Destination], None],
                 policy: OutboundPolicy = OutboundPolicy()):
        self.target = target
        self.settings = settings
        self.policy = policy
        self.status = StreamStatus.STARTING
        self.retries = 0
        self.last_retry_at: float | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.error: str | None = None
        self.error_code: str | None = None
        self._backlog = backlog
        self._on_change = on_change
        self._queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self._ready = asyncio.Event()
        self._closed = asyncio.Event()
        self._pusher: ManagedProcess | None = None
        self._base: int | None = None  # the timestamp this session's stream counts from
        self._task: asyncio.Task | None = None

    @property
    def live(self) -> bool:
        return self.status in (StreamStatus.STARTING, StreamStatus.ACTIVE, StreamStatus.RECONNECTING)

    def info(self) -> dict:
        """This destination as events, the API and webhooks show it (the URL redacted)."""
        return {"url": self.target.redacted, "status": self.status, "retries": self.retries,
                "last_retry_at": self.last_retry_at, "started_at": self.started_at, "ended_at": self.ended_at,
                "error": self.error, "error_code": self.error_code}

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def offer(self, tag: FlvTag) -> None:
        """Queue a tag for this destination (once its pusher runs and has been given a start)."""
        if self._pusher is None or self._closed.is_set():
            return
        if self._base is None:
            self._prime()  # the tag is already the last of the fanout's backlog
        else:
            self._push(tag.retimed(self._base))

    def _prime(self) -> None:
        """Give a new pusher the stream's header and everything since the last keyframe, if there is one yet."""
        preamble, backlog = self._backlog()
        if not backlog:
            return
        self._base = backlog[0].timestamp
        self._push(preamble + b"".join(t.retimed(self._base) for t in backlog))

    def _push(self, data: bytes) -> None:
        self._queue.append((time.monotonic(), data))
        self._ready.set()

    async def close(self) -> None:
        """Send what is queued, end the stream, and stop (bounded: a stalled peer is cut off)."""
        self._closed.set()
        self._ready.set()
        if self._task:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _set(self, status: StreamStatus) -> None:
        self.status = status
        self._on_change(self)

    async def _run(self) -> None:
        outage_since: float | None = None
        attempt = 0
        try:
            while not self._closed.is_set():
                (code, message), reached = await self._session()
                if self._closed.is_set():
                    break
                now = time.time()
                if reached or outage_since is None:
                    outage_since, attempt = now, 0
                self.error_code, self.error = code, message
                log.info("stream %s: %s", self.target.redacted, message)
                if now - outage_since >= self.settings.retry_window:
                    self.ended_at = now
                    self._set(StreamStatus.FAILED)
                    return
                self._set(StreamStatus.RECONNECTING)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
                attempt += 1
                if not self._closed.is_set():
                    self.retries += 1
                    self.last_retry_at = time.time()
        finally:
            if self.status != StreamStatus.FAILED:
                self.ended_at = time.time()
                self._set(StreamStatus.FINISHED)

    async def _argv(self) -> list[str]:
        """The pusher's command, to the destination checked under the policy just now (AddressRefused if not
        allowed)."""
        url, keep = await self.policy.pinned_stream_url(self.target.url)
        tls = []
        if self.target.scheme == "rtmps" and self.settings.tls_verify:
            tls = ["-tls_verify", "1", "-ca_file", self.settings.ca_file or "/etc/ssl/certs/ca-certificates.crt"]
        # RTMP over TCP: a send buffer of about a second of stream, not the megabytes Linux grows it to, so a
        # destination that stops reading is noticed in seconds and a slow one does not pile up latency.
        sndbuf = ["-send_buffer_size", str(SEND_BUFFER_BYTES)] if self.target.protocol == "RTMP" else []
        return [*_FFMPEG, *_FLV_PIPE, "-map", "0", "-c", "copy", *tls, *sndbuf, *keep, "-f", self.target.muxer,
                url]

    async def _session(self) -> tuple[tuple[str, str], bool]:
        """Push until the pusher ends, stalls or the destination closes; returns (error, reached ACTIVE)."""
        self._queue.clear()
        try:
            argv = await self._argv()
        except HostNotFound as exc:
            return (f"{self.target.protocol}_HOST_NOT_FOUND", exc.message), False
        except AddressRefused as exc:
            return (f"{self.target.protocol}_ADDRESS_NOT_ALLOWED", exc.message), False
        pusher = ManagedProcess(f"stream {self.target.redacted}", argv, stop_timeout=2.0,
                                stdout_pipe=True, stdin_pipe=True, redact=self.target.redact)
        await pusher.start()
        self._pusher, self._base = pusher, None
        self._prime()
        reached = asyncio.Event()

        async def accepted() -> None:
            assert pusher.proc and pusher.proc.stdout
            async for p in progress_updates(pusher.proc.stdout):
                self._progressed(p)
                if not reached.is_set() and (p.total_size > 0 or p.out_time > 0):
                    reached.set()
                    self.started_at = self.started_at or time.time()
                    self.error = self.error_code = None
                    self._set(StreamStatus.ACTIVE)

        watcher = asyncio.create_task(accepted())
        writer = asyncio.create_task(self._write(pusher))
        stalled = asyncio.create_task(self._until_stalled(reached))
        exited = asyncio.create_task(pusher.wait())
        failure: tuple[str, str] | None = None
        try:
            done, _ = await asyncio.wait({writer, stalled, exited}, return_when=asyncio.FIRST_COMPLETED)
            if stalled in done:
                failure = stalled.result()
            elif writer in done and self._closed.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(exited), FINISH_S)
        finally:
            self._pusher = None
            for task in (writer, stalled):
                task.cancel()
            await pusher.stop()
            # Its last progress (written as it exits) is read to the end: a thumbnailer counts its captures there.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watcher, FINISH_S)
            exited.cancel()
        return failure or classify(self.target, list(pusher.stderr_tail), reached.is_set()), reached.is_set()

    def _progressed(self, progress: Progress) -> None:
        """The pusher's latest progress block (a thumbnailer counts its images here)."""

    async def _write(self, pusher: ManagedProcess) -> None:
        assert pusher.proc and pusher.proc.stdin
        stdin = pusher.proc.stdin
        try:
            while True:
                while self._queue:
                    stdin.write(self._queue.popleft()[1])
                    await stdin.drain()
                if self._closed.is_set():
                    stdin.close()
                    return
                self._ready.clear()
                await self._ready.wait()
        except (BrokenPipeError, ConnectionResetError):
            return

    async def _until_stalled(self, reached: asyncio.Event) -> tuple[str, str]:
        proto = self.target.protocol
        started = time.monotonic()
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            if not reached.is_set() and now - started > CONNECT_TIMEOUT_S:
                return f"{proto}_TIMEOUT", f"the destination did not accept the stream within {CONNECT_TIMEOUT_S:g} s"
            if reached.is_set() and self._queue and now - self._queue[0][0] > STALL_S:
                return f"{proto}_STALLED", f"the destination stopped reading for {STALL_S:g} s"


class Thumbnailer(Destination):
    """Thumbnails from the encoded stream, in a process of their own.

    Inside the encoder, a JPEG output held every other output back until its
    next image was due (the FLV came out in bursts a capture interval apart),
    so thumbnails are decoded from the stream like any other destination.
    Only keyframes are decoded when the interval is a whole number of them.
    """

    def __init__(self, images: ImageSettings, video: VideoSettings,
                 backlog: Callable[[], tuple[bytes, list[FlvTag]]], on_change: Callable[[Destination], None]):
        where = str(images.directory / images.pattern)
        super().__init__(StreamTarget(url=where, redacted=where),
                         StreamSettings(targets=(), retry_window=THUMBNAILER_RETRY_S, tls_verify=False, ca_file=None),
                         backlog, on_change)
        self.images = images
        self.video = video
        #: JPEGs written, over every run of its process
        self.captures = 0
        self._counted = 0

    async def _session(self) -> tuple[tuple[str, str], bool]:
        self._counted = self.captures  # a restarted process counts its frames from 0 again
        return await super()._session()

    def _progressed(self, progress: Progress) -> None:
        self.captures = self._counted + progress.frame

    async def _argv(self) -> list[str]:
        img = self.images
        w, h = img.width or (-2 if img.height else self.video.width), img.height or -2
        keys_only = (img.interval / self.video.keyframe_interval).is_integer()
        naming = ["-strftime", "1"] if img.timestamp else ["-start_number", "0"]
        if img.overwrite:
            # One file, replaced whole (written aside, then renamed): a reader or an upload never sees half of it.
            naming = ["-update", "1", "-atomic_writing", "1"]
        # select, not fps: it decides on each frame as it comes (fps waits for the next one, and at the end
        # for none), so the last image is not lost. Half a frame of slack absorbs timestamp rounding.
        every = img.interval - 0.5 / self.video.fps
        pick = f"select='isnan(prev_selected_t)+gte(t-prev_selected_t\\,{every:.4f})',scale={w}:{h}"
        return [*_FFMPEG, "-y", *(["-skip_frame", "nokey"] if keys_only else []), "-threads", "1", *_FLV_PIPE,
                "-map", "0:v", "-vf", pick, "-fps_mode", "passthrough", "-c:v", "mjpeg", "-q:v", "3",
                "-f", "image2", *naming, self.target.url]


class StreamFanout:
    """Reads the encode's FLV from a pipe and feeds every destination (and the thumbnailer)."""

    def __init__(self, settings: StreamSettings | None, images: ImageSettings | None, video: VideoSettings | None,
                 policy: OutboundPolicy, on_change: Callable[[Destination], None]):
        self.settings = settings or StreamSettings(targets=(), retry_window=0, tls_verify=True, ca_file=None)
        self.policy = policy
        self.destinations: list[Destination] = []
        self._images = images
        self._video = video
        self._thumbnailer: Thumbnailer | None = None
        self._has_video = video is not None
        self._on_change = on_change
        self._pipe = EncoderPipe(PIPE_BYTES)
        self.write_fd = self._pipe.write_fd
        self._header = b""
        self._config: dict[int, FlvTag] = {}
        # Tags since the last keyframe: a destination that starts begins with these, at once.
        self._gop: list[FlvTag] = []
        self._pump: asyncio.Task | None = None
        #: "all_failed" or "all_removed" once no destination is left streaming
        self.outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def start(self) -> None:
        """Call once the encoder runs (it holds the pipe's write end now)."""
        self._pump = asyncio.create_task(self._run(await self._pipe.open(PIPE_BYTES)))
        for target in self.settings.targets:
            self.add(target)
        if self._images and self._video:
            self._thumbnailer = Thumbnailer(self._images, self._video, self._backlog, lambda _: None)
            self._thumbnailer.start()

    def _backlog(self) -> tuple[bytes, list[FlvTag]]:
        """The stream's header and codec configuration, and the tags since the last keyframe."""
        config = [self._config[k] for k in (FLV_SCRIPT, FLV_VIDEO, FLV_AUDIO) if k in self._config]
        tags = [t.retimed(t.timestamp) for t in config]  # at time 0
        return self._header + b"\0\0\0\0" + b"".join(tags), self._gop

    async def _run(self, reader: asyncio.StreamReader) -> None:
        async for item in read_flv(reader):
            if isinstance(item, bytes):
                self._header = item
            elif item.is_config:
                self._config[item.kind] = item
            else:
                if item.keyframe or (not self._has_video and item.kind == FLV_AUDIO):
                    self._gop = [item]
                elif self._gop:
                    self._gop.append(item)
                for dest in self.destinations:
                    dest.offer(item)
                if self._thumbnailer:
                    self._thumbnailer.offer(item)

    def add(self, target: StreamTarget) -> Destination:
        if any(d.target.url == target.url and d.live for d in self.destinations):
            raise InvalidRequest(f"already streaming to {target.redacted}", details={"field": "add"})
        dest = Destination(target, self.settings, self._backlog, self._changed, self.policy)
        self.destinations.append(dest)
        dest.start()
        self._on_change(dest)
        return dest

    async def remove(self, url: str) -> Destination:
        dest = next((d for d in self.destinations if d.target.url == url and d.live), None)
        if dest is None:
            raise InvalidRequest("no live destination has that URL", details={"field": "remove"})
        await dest.close()
        if not any(d.live for d in self.destinations) and not self.outcome.done():
            self.outcome.set_result("all_removed")
        return dest

    def _changed(self, dest: Destination) -> None:
        self._on_change(dest)
        all_failed = dest.status == StreamStatus.FAILED and not any(d.live for d in self.destinations)
        if all_failed and not self.outcome.done():
            self.outcome.set_result("all_failed")

    def failure(self) -> StreamFailed:
        """Why the stream failed, when every destination has."""
        failed = [d for d in self.destinations if d.status == StreamStatus.FAILED]
        return StreamFailed(
            "every stream destination failed: " + "; ".join(f"{d.target.redacted}: {d.error}" for d in failed),
            code=failed[0].error_code if failed else None, details={"streams": [d.info() for d in failed]})

    @property
    def captures(self) -> int:
        """Thumbnails taken so far (0 without thumbnails)."""
        return self._thumbnailer.captures if self._thumbnailer else 0

    async def close(self) -> None:
        """After the encoder ended: let the pipe drain, then finish every destination. Idempotent."""
        await self._pipe.close(self._pump, 2.0)
        await asyncio.gather(*(d.close() for d in (*self.destinations, *filter(None, [self._thumbnailer]))))
