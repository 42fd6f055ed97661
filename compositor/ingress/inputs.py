"""Where an ingress's media comes from: its input, as a stream of decoded frames.

Every input has one small shape (`MediaInput`), so a transport plugs in beside the others:

    info = await source.open()        # until media can be read; what the input carries (`InputInfo`)
    async for frame in source.frames():
        ...                           # decoded av.VideoFrame / av.AudioFrame, in arrival order
    await source.close()              # stop reading, free everything; idempotent, safe at any time

- `open()` raises an IngressError (INPUT_UNREACHABLE, INPUT_INVALID) or AddressRefused;
- `frames()` yields each frame once, its `.time` in seconds on ONE timeline for audio and video (the
  publisher keeps them in sync by it); it ends when the input ends (end of a file, a publisher that
  leaves) and raises an IngressError when the input breaks;
- inputs do not pace: a live one (RTMP, WHIP, SRT: `InputInfo.live`) yields frames as they come, a file as
  fast as it decodes; the publisher paces every frame by its time.

PyAV opens RTMP and http(s) URLs (MP4, HLS, audio files) itself; SRT comes through Debian's ffmpeg
(`SrtInput`); WHIP's peer connection (compositor/ingress/whip.py) is wrapped by `WhipSource`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlsplit, urlunsplit

import av

from ..errors import InvalidRequest
from ..outbound import AddressRefused, OutboundPolicy, refuse_playlist
from ..process import ManagedProcess
from ..protocol import IngressJob, InputKind
from .errors import IngressError, InputInvalid, InputStalled, InputUnreachable

log = logging.getLogger(__name__)

#: RTP's video clock
VIDEO_CLOCK = Fraction(1, 90000)


@dataclass
class PassedVideo:
    """One video frame of a publisher as it came (WHIP's bypass): a whole encoded picture, VP8 or H.264 (Annex
    B), with the time of a decoded frame (`pts` in `time_base`) and the size its last key frame said."""

    data: bytes
    mime_type: str
    keyframe: bool
    width: int
    height: int
    pts: int
    time_base: Fraction = VIDEO_CLOCK

    @property
    def time(self) -> float:
        """Seconds, as av.VideoFrame.time."""
        return float(self.pts * self.time_base)


Frame = av.VideoFrame | av.AudioFrame | PassedVideo

#: Opening a URL or pulling SRT: the time to connect and read the first of it.
OPEN_TIMEOUT_S = 10.0
#: Opening RTMP also waits for the stream's next key frame (the server starts a new player there), so a
#: publisher's long GOP fits in it.
RTMP_OPEN_TIMEOUT_S = 15.0
# A live stream's demuxer only learns what it carries from its packets: probe until both streams showed up
# (it stops as soon as they have), but skip the frame-rate guess, which would hold ~40 frames back.
LIVE_OPTIONS = {"analyzeduration": "10000000", "fpsprobesize": "0"}
# SRT comes as MPEG-TS, whose streams its tables name up front: half a second of probing finds their codecs.
RELAY_PROBE = ["-analyzeduration", "500000", "-fpsprobesize", "0"]
RELAY_OPTIONS = {"analyzeduration": "500000", "fpsprobesize": "0"}
# The relay has no file to finish: a moment to exit, then it is killed.
RELAY_STOP_S = 0.5
# Asking the RTMP server again for a stream not yet published.
PUBLISHER_RETRY_S = 0.1
# Decoded frames handed from the decoding thread to the event loop ahead of use (a fraction of a second).
QUEUE_FRAMES = 16
# How long close() waits for the decoding thread; one blocked on the network ends at its read timeout.
CLOSE_WAIT_S = 1.0
# An untrusted URL reaches the network only through the outbound gate (http_proxy: https tunnels through it,
# which takes tls, tcp and httpproxy), and nothing local.
UNTRUSTED_PROTOCOLS = "http,https,tls,tcp,httpproxy,crypto"
# ... and it is read only by demuxers that open no other URL: not HLS (or DASH, concat), whose playlists name
# further URLs that ffmpeg opens itself, with any http* protocol (httpproxy://HOST/ connects to HOST directly,
# past the gate). An untrusted HLS pull is fetched by the worker itself (hls.py); an operator's own request
# (trusted) has ffmpeg's.
UNTRUSTED_FORMATS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,mp3,ogg,wav,flac,aac,flv,mpegts"


@dataclass(frozen=True)
class InputInfo:
    """What an input carries, as the BUFFERING event says it (None: no such stream), and whether it is live
    (paced by its source) or a file to pace."""

    video: dict[str, Any] | None
    audio: dict[str, Any] | None
    live: bool


class MediaInput(Protocol):
    """An ingress's input (see the module's docstring)."""

    async def open(self) -> InputInfo: ...

    def frames(self) -> AsyncIterator[Frame]: ...

    async def close(self) -> None: ...


def redact_url(url: str) -> str:
    """`url` fit for a log: no password, no query (a token or passphrase), and for RTMP no stream key (the
    last path component)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    path = parts.path
    if parts.scheme.lower().startswith("rtmp") and "/" in path.strip("/"):
        path = path.rstrip("/").rsplit("/", 1)[0] + "/***"
    return urlunsplit((parts.scheme, netloc, path, "***" if parts.query else "", ""))


def is_hls(url: str) -> bool:
    """Whether `url` names an HLS playlist (by its path, as players decide)."""
    return urlsplit(url).path.lower().endswith((".m3u8", ".m3u"))


async def input_for(job: IngressJob, policy: OutboundPolicy, proxy: str | None) -> MediaInput:
    """The input `job` reads (not yet open). RTMP is the node's own server; a URL (the request's own) is held
    to `policy`, and with an untrusted one every connection goes through the outbound gate at `proxy`."""
    url = job.source_url
    if not url:
        raise InvalidRequest(f"an ingress of input {job.input} needs its source_url")
    want = {"video": job.video is not None, "audio": job.audio is not None}
    read_timeout = job.stall_s + 1
    if job.input == InputKind.RTMP:
        return AvInput(url, live=True, what=f"RTMP stream {redact_url(url)}", options=LIVE_OPTIONS,
                       open_timeout=RTMP_OPEN_TIMEOUT_S, read_timeout=read_timeout, await_publisher=True, **want)
    scheme = urlsplit(url).scheme.lower()
    if scheme == "srt":
        pinned, _ = await policy.pinned_stream_url(url)
        return SrtInput(pinned, what=f"SRT stream {redact_url(url)}", read_timeout=read_timeout, **want)
    what = f"URL {redact_url(url)}"
    if policy.trusted:
        return AvInput(url, live=False, what=what, read_timeout=read_timeout, **want)
    if scheme in ("", "file"):
        policy.local_file(url, "url")
    if scheme not in ("http", "https"):
        raise AddressRefused("url: only http(s) and srt URLs can be pulled", details={"field": "url"})
    refuse_playlist(url, "url")
    if is_hls(url):
        from .hls import HlsInput  # (imports this module)

        return HlsInput(url, policy=policy, proxy=proxy, what=what, read_timeout=read_timeout,
                        height=job.video.layers[0].height if job.video else None, **want)
    await policy.check_url(url, "url")
    # ffmpeg connects straight to a host named in `no_proxy`: nothing may get around the gate.
    os.environ.pop("no_proxy", None)
    options = {"http_proxy": proxy, "protocol_whitelist": UNTRUSTED_PROTOCOLS, "format_whitelist": UNTRUSTED_FORMATS}
    return AvInput(url, live=False, what=what, options=options, read_timeout=read_timeout, **want)


@dataclass(frozen=True)
class _End:
    """The decoding thread's last word: the input ended (error None) or broke."""

    error: BaseException | None = None


class AvInput:
    """An input PyAV demuxes and decodes. PyAV blocks, so a thread of its own does it, handing frames to the
    event loop (which must stay free for WebRTC) through a short queue."""

    def __init__(self, source: str | BinaryIO, *, live: bool, what: str, options: dict[str, str] | None = None,
                 fmt: str | None = None, video: bool = True, audio: bool = True,
                 open_timeout: float = OPEN_TIMEOUT_S, read_timeout: float = 10.0, await_publisher: bool = False):
        self._source = source
        self._live = live
        #: the input as logs and errors name it (redacted)
        self.what = what
        self._options = options or {}
        self._format = fmt
        self._want = {"video": video, "audio": audio}
        self._open_timeout = open_timeout
        self._read_timeout = read_timeout
        self._await_publisher = await_publisher
        self._queue: asyncio.Queue[Frame | _End] = asyncio.Queue()
        self._slots = threading.Semaphore(QUEUE_FRAMES)
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opened: asyncio.Future[InputInfo] | None = None
        self._done = asyncio.Event()
        self._thread: threading.Thread | None = None

    async def open(self) -> InputInfo:
        """Start reading; returns once the streams are known."""
        self._loop = asyncio.get_running_loop()
        self._opened = self._loop.create_future()
        # A daemon: a thread blocked on a dead network read never holds up the worker's exit.
        self._thread = threading.Thread(target=self._run, name="ingress-input", daemon=True)
        self._thread.start()
        try:
            return await asyncio.wait_for(asyncio.shield(self._opened), self._open_timeout + 1)
        except TimeoutError:
            raise InputUnreachable(f"{self.what}: nothing readable within {self._open_timeout:g} s") from None

    async def frames(self) -> AsyncIterator[Frame]:
        """The decoded frames, until the input ends (or raises what broke it)."""
        while True:
            item = await self._queue.get()
            self._slots.release()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item

    async def close(self) -> None:
        """Stop the decoding thread (it closes the container) and wait a moment for it."""
        self._stopping.set()
        if self._thread is not None and self._thread.is_alive():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), CLOSE_WAIT_S)

    # --- the decoding thread ---

    def _run(self) -> None:
        try:
            self._decode()
        except Exception as exc:  # whatever it was, the loop learns the input is over
            log.exception("%s: decoding failed", self.what)
            self._finish(exc)
        finally:
            self._call(self._done.set)

    def _decode(self) -> None:
        try:
            container = self._open()
        except av.error.InvalidDataError as exc:
            self._finish(InputInvalid(f"{self.what} is not media this worker can read ({exc.strerror})"))
            return
        except (av.error.FFmpegError, OSError) as exc:
            self._finish(InputUnreachable(f"cannot open {self.what}: {_why(exc)}"))
            return
        with container:
            if self._stopping.is_set():
                return
            video = self._best(container, "video")
            audio = self._best(container, "audio")
            if video is None and audio is None:
                self._finish(InputInvalid(f"{self.what} has no audio or video this ingress publishes"))
                return
            info = InputInfo(_describe_video(video), _describe_audio(audio), self._live)
            self._call(self._set_opened, info)
            self._finish(self._demux(container, [s for s in (video, audio) if s is not None]))

    def _open(self):
        deadline = time.monotonic() + self._open_timeout
        while True:
            try:
                return av.open(self._source, format=self._format, container_options=self._options,
                               timeout=(self._open_timeout, self._read_timeout))
            except av.error.PermissionError:
                # The RTMP server refuses to play a stream nobody publishes yet: the worker may start as its
                # publisher connects, a moment before the server has the stream.
                if not self._await_publisher or time.monotonic() > deadline or self._stopping.is_set():
                    raise
                time.sleep(PUBLISHER_RETRY_S)

    def _best(self, container, kind: str):
        if not self._want[kind]:
            return None
        streams = [s for s in getattr(container.streams, kind) if s.codec_context is not None]
        return streams[0] if streams else None

    def _demux(self, container, streams) -> BaseException | None:
        """Decode until the input ends; what broke it, if anything."""
        decoded = 0
        try:
            for packet in container.demux(streams):
                if self._stopping.is_set():
                    return None
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as exc:
                    # A damaged packet (a live stream joined mid-GOP, a glitch) costs its frames, not the input.
                    log.debug("%s: undecodable packet: %s", self.what, exc.strerror)
                    continue
                for frame in frames:
                    if not self._put(frame):
                        return None
                    decoded += 1
        except av.error.ExitError:
            return InputStalled(f"{self.what}: no data for {self._read_timeout:g} s")
        except (av.error.FFmpegError, OSError) as exc:
            if self._live:
                # A live stream's connection closing is its publisher leaving: the end of the input.
                log.info("%s ended: %s", self.what, _why(exc))
                return None
            return InputUnreachable(f"lost {self.what}: {_why(exc)}")
        if not decoded:
            return InputInvalid(f"nothing in {self.what} could be decoded")
        return None

    def _put(self, item: Frame | _End) -> bool:
        """Hand `item` to the loop, waiting for room; False once the input is closing."""
        while not self._slots.acquire(timeout=0.1):
            if self._stopping.is_set():
                return False
        return self._call(self._queue.put_nowait, item)

    def _finish(self, error: BaseException | None) -> None:
        """The input is over: fail open() if it is still waiting, else end frames()."""
        if not self._call(self._end, error):
            log.debug("%s: the event loop is gone", self.what)

    def _end(self, error: BaseException | None) -> None:
        if not self._opened.done():
            self._opened.set_exception(error or InputInvalid(f"{self.what} ended before any media"))
        else:
            self._queue.put_nowait(_End(error))

    def _set_opened(self, info: InputInfo) -> None:
        if not self._opened.done():
            self._opened.set_result(info)

    def _call(self, fn, *args) -> bool:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            return False
        return True


def _why(exc: BaseException) -> str:
    """An FFmpeg error in words, without the URL it names (which may hold a key)."""
    if isinstance(exc, av.error.ExitError):
        return "timed out"
    return getattr(exc, "strerror", None) or type(exc).__name__


def _describe_video(stream) -> dict[str, Any] | None:
    if stream is None:
        return None
    cc = stream.codec_context
    # Only a rate the input states: a guessed one (MPEG-TS's) may be its field rate, twice the frame rate.
    rate = stream.average_rate
    return _present({"mime_type": f"video/{cc.name}", "width": cc.width, "height": cc.height,
                     "framerate": round(float(rate), 3) if rate else None,
                     "average_bitrate": stream.bit_rate or cc.bit_rate})


def _describe_audio(stream) -> dict[str, Any] | None:
    if stream is None:
        return None
    cc = stream.codec_context
    return _present({"mime_type": f"audio/{cc.name}", "sample_rate": cc.sample_rate,
                     "channels": cc.layout.nb_channels, "average_bitrate": stream.bit_rate or cc.bit_rate})


def _present(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v}


class SrtInput:
    """An SRT source. PyAV cannot open srt://, so Debian's ffmpeg pulls it (a child the worker owns) and hands
    PyAV the stream, unchanged, as MPEG-TS on a pipe."""

    def __init__(self, url: str, *, what: str, read_timeout: float, video: bool = True, audio: bool = True):
        self.what = what
        self._url = url
        self._read_timeout = read_timeout
        self._want = {"video": video, "audio": audio}
        self._process: ManagedProcess | None = None
        self._pipe: BinaryIO | None = None
        self._av: AvInput | None = None

    async def open(self) -> InputInfo:
        """Start ffmpeg and read what it relays."""
        read_fd, write_fd = os.pipe()
        # ManagedProcess places a child's descriptors from numbers of 10 and up.
        child_fd = fcntl.fcntl(write_fd, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(write_fd)
        self._pipe = os.fdopen(read_fd, "rb", buffering=0)
        url = self._url
        # Each side probes briefly and ffmpeg hands on every packet at once: the relay adds no latency of its own.
        self._process = ManagedProcess(
            "ffmpeg-srt", ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", *RELAY_PROBE, "-i", url,
                           "-map", "0:v:0?", "-map", "0:a:0?", "-c", "copy", "-flush_packets", "1", "-muxdelay", "0",
                           "-f", "mpegts", "pipe:1"],
            fds={1: child_fd}, stop_timeout=RELAY_STOP_S, redact=lambda text: text.replace(url, self.what))
        try:
            await self._process.start()
        finally:
            os.close(child_fd)
        self._av = AvInput(self._pipe, live=True, what=self.what, fmt="mpegts", options=RELAY_OPTIONS,
                           read_timeout=self._read_timeout, **self._want)
        try:
            return await self._av.open()
        except IngressError as exc:
            if not self._process.running:
                raise InputUnreachable(f"{exc.message} ({self._process.describe_exit()})") from None
            raise

    def frames(self) -> AsyncIterator[Frame]:
        """The relayed stream's frames."""
        return self._av.frames()

    async def close(self) -> None:
        """Stop ffmpeg (its pipe ends, so the reader does) and the reader."""
        if self._process is not None:
            await self._process.stop()
        if self._av is not None:
            await self._av.close()
        if self._pipe is not None:
            self._pipe.close()


class WhipSource:
    """A WHIP publisher's peer connection (compositor.ingress.whip.WhipInput) as a MediaInput. What it carries
    is what the offer holds (the details come with its media, once the peer connects)."""

    def __init__(self, whip):
        self.whip = whip

    async def open(self) -> InputInfo:
        """The offer's streams (the video's codec; the rest comes with the media)."""
        kinds = self.whip.kinds
        video = {"mime_type": self.whip.video_mime_type} if "video" in kinds else None
        return InputInfo(video=video, audio={} if "audio" in kinds else None, live=True)

    def frames(self) -> AsyncIterator[Frame]:
        """The peer connection's frames (decoded, or the video as it came), on one clock."""
        return self.whip.frames()

    def request_keyframe(self) -> None:
        """Ask the publisher for a key frame."""
        self.whip.request_keyframe()

    async def close(self) -> None:
        """Close the peer connection."""
        await self.whip.close()
