"""The WHIP input of an ingress (RFC 9725): a publisher's WebRTC media, received with aiortc and decoded.

The service takes the publisher's HTTP POST; the worker hands its SDP offer to `WhipInput`, returns `answer()`
and reads `frames()`. aiortc gathers its ICE candidates before it returns the answer, so no trickle ICE is
needed (nor supported), and it is given no STUN or TURN server: the answer offers host candidates only.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import logging
import os
import queue
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

import aioice.ice
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription, sdp
from aiortc.codecs import CODECS
from aiortc.exceptions import OperationError
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcpeerconnection import find_common_codecs

from .inputs import Frame, PassedVideo

#: The codecs an ingress takes, per kind, as LiveKit's WHIP ingress does.
ACCEPTED_CODECS = {"video": ("video/VP8", "video/H264"), "audio": ("audio/opus",)}
#: A passed video's asks for a key frame go to the publisher at most this often.
PLI_EVERY_S = 0.5
#: Comma-separated local addresses to offer as ICE host candidates when WhipInput is not told (default: every
#: interface's); a test or a host whose publishers reach it on one address only sets it.
ICE_ADDRESSES_ENV = "COMPOSITOR_WHIP_ICE_ADDRESSES"

log = logging.getLogger(__name__)



class WhipOfferInvalid(ValueError):
    """The publisher's SDP offer cannot be answered (the WHIP endpoint answers 400 Bad Request)."""


# aioice picks the addresses of its host candidates in one module-level function and takes no option to narrow
# them, so it is wrapped once here: a peer connection that gathers in a context with addresses set (see
# `ice_host_addresses`) gets those, every other one what aioice would give it.
_host_addresses: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "whip_ice_host_addresses", default=None)
_aioice_host_addresses = aioice.ice.get_host_addresses


def _chosen_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    chosen = _host_addresses.get()
    if chosen is None:
        return _aioice_host_addresses(use_ipv4, use_ipv6)
    versions = {4} if use_ipv4 else set()
    versions |= {6} if use_ipv6 else set()
    return [address for address in chosen if ipaddress.ip_address(address).version in versions]


aioice.ice.get_host_addresses = _chosen_host_addresses


@contextlib.contextmanager
def ice_host_addresses(addresses: Sequence[str]) -> Iterator[None]:
    """Within the block, aiortc peer connections gather host candidates on `addresses` only (for example
    ["127.0.0.1"], which aioice otherwise leaves out). Tasks started in the block keep the setting."""
    for address in addresses:
        ipaddress.ip_address(address)  # a typo fails here, not as a connection that never comes up
    token = _host_addresses.set(tuple(addresses))
    try:
        yield
    finally:
        _host_addresses.reset(token)


def _parse_offer(offer_sdp: str) -> dict[str, str]:
    """Check the offer; returns {kind: the mime type of the codec to receive} in the offer's order."""
    if not isinstance(offer_sdp, str) or not offer_sdp.lstrip().startswith("v=0"):
        raise WhipOfferInvalid("the offer is not an SDP session description (it must start with v=0)")
    try:
        description = sdp.SessionDescription.parse(offer_sdp)
    except Exception as exc:  # aiortc's parser fails with whatever the bad line makes it trip on
        raise WhipOfferInvalid(f"the offer is not valid SDP: {exc or type(exc).__name__}") from exc
    chosen: dict[str, str] = {}
    for media in description.media:
        if media.kind not in ACCEPTED_CODECS:
            continue
        if media.kind in chosen:
            raise WhipOfferInvalid(f"the offer has more than one {media.kind} section; WHIP takes one of each")
        if media.direction not in (None, "sendonly", "sendrecv"):
            raise WhipOfferInvalid(f"the offer's {media.kind} is {media.direction}: a WHIP publisher sends")
        if not (media.ice and media.ice.usernameFragment and media.ice.password):
            raise WhipOfferInvalid(f"the offer's {media.kind} has no ICE credentials (a=ice-ufrag, a=ice-pwd)")
        if not (media.dtls and media.dtls.fingerprints):
            raise WhipOfferInvalid(f"the offer's {media.kind} has no DTLS fingerprint (a=fingerprint)")
        # The first codec aiortc can decode (for H264: packetization-mode 1, constrained baseline) in the
        # publisher's order of preference, so the answer names exactly one and the state can say which.
        common = [c.mimeType for c in find_common_codecs(CODECS[media.kind], media.rtp.codecs)]
        mime = next((m for m in common if m in ACCEPTED_CODECS[media.kind]), None)
        if mime is None:
            offered = sorted({c.mimeType for c in media.rtp.codecs}) or ["none"]
            raise WhipOfferInvalid(f"the offer's {media.kind} codecs ({', '.join(offered)}) include none of "
                                   f"{', '.join(ACCEPTED_CODECS[media.kind])}")
        chosen[media.kind] = mime
    if not chosen:
        raise WhipOfferInvalid("the offer has no audio or video to receive")
    return chosen


class _TrackEnded:
    """Queued by a track's reader when the publisher's track ends."""


class _PassThrough:
    """Stands in for the decoder queue of an aiortc receiver (aiortc has no option to skip decoding): each whole
    encoded picture goes to `deliver` instead, and the receiver's decoder thread only ever gets the end (None),
    which ends the receiver's track as usual."""

    def __init__(self, deliver: Callable[[object, object], None]):
        self._deliver = deliver
        self._end: queue.Queue = queue.Queue()

    def put(self, item) -> None:
        """From the receiver (on the event loop): (codec, JitterFrame), or None at its end."""
        if item is None:
            self._end.put(None)
        else:
            self._deliver(*item)

    def get(self):
        """From the decoder thread: the end."""
        return self._end.get()


def _pass_through(receiver: RTCRtpReceiver, deliver: Callable[[object, object], None]) -> None:
    """Have `receiver` hand its reassembled pictures to `deliver` rather than decode them. Set before it starts
    receiving (its decoder thread takes the queue then)."""
    attribute = "_RTCRtpReceiver__decoder_queue"
    if not isinstance(getattr(receiver, attribute, None), queue.Queue):
        raise RuntimeError("this aiortc keeps its decoder queue elsewhere (WHIP bypass is made for aiortc 1.16)")
    setattr(receiver, attribute, _PassThrough(deliver))


class _PictureFacts:
    """Whether a publisher's encoded picture is a key frame and, from key frames, the picture's size."""

    def __init__(self, mime_type: str):
        self.mime_type = mime_type
        self.size: tuple[int, int] | None = None
        self._h264 = av.CodecContext.create("h264", "r") if mime_type == "video/H264" else None

    def keyframe(self, data: bytes) -> bool:
        """Whether `data` starts a picture that needs none before it (and note its size)."""
        if self._h264 is None:
            # VP8 (RFC 6386 9.1): bit 0 of the frame tag is 0 on a key frame, whose header has the size.
            key = len(data) >= 10 and not data[0] & 1 and data[3:6] == b"\x9d\x01\x2a"
            if key:
                self.size = (int.from_bytes(data[6:8], "little") & 0x3FFF,
                             int.from_bytes(data[8:10], "little") & 0x3FFF)
            return key
        # H.264: an IDR picture (NAL type 5); its size is what decoding it gives (one picture a GOP).
        if not any(nal and nal[0] & 0x1F == 5 for nal in data.split(b"\x00\x00\x00\x01")):
            return False
        try:
            pictures = self._h264.decode(av.Packet(data))
        except av.FFmpegError:
            return False
        if pictures:
            self.size = (pictures[0].width, pictures[0].height)
        return self.size is not None


class WhipInput:
    """A WHIP publisher's media: answers its SDP offer with an aiortc peer connection and yields the decoded frames.

    The offer is checked on construction and by `answer()` (WhipOfferInvalid). `frames()` ends when the
    connection fails or closes, when every track ends, on `close()`, or when the publisher has not connected
    `stall_s` seconds after the answer (a publisher that took the answer and went away). Whether media stalls
    once connected is for the consumer to judge.
    """

    def __init__(self, offer_sdp: str, *, stall_s: float = 3.0, ice_addresses: Sequence[str] | None = None,
                 pass_video: bool = False):
        """`pass_video`: the video comes out as it came (PassedVideo, from its first key frame on), not decoded."""
        if stall_s <= 0:
            raise ValueError("stall_s must be positive")
        self._offer = offer_sdp
        self._codecs = _parse_offer(offer_sdp)
        self._pass_video = pass_video and "video" in self._codecs
        self._passed: asyncio.Queue[PassedVideo] = asyncio.Queue()
        self._facts = _PictureFacts(self._codecs["video"]) if self._pass_video else None
        self._video_receiver: RTCRtpReceiver | None = None
        self._pli_at = float("-inf")
        self._stall_s = stall_s
        if ice_addresses is None and (env := os.environ.get(ICE_ADDRESSES_ENV, "").strip()):
            ice_addresses = [a.strip() for a in env.split(",") if a.strip()]
        self._ice_addresses = ice_addresses
        self._pc: RTCPeerConnection | None = None
        self._tracks: list[MediaStreamTrack] = []
        self._answered_at = 0.0
        self._connected = asyncio.Event()
        self._over = asyncio.Event()
        self._reading = False
        self._end_reason: str | None = None
        self._closed = False
        # Timing: the input's clock starts at the first frame of any track (time.monotonic() then).
        self._epoch: float | None = None
        self._first: dict[str, tuple[float, int]] = {}
        self._video: dict | None = None
        self._audio: dict | None = None
        self._video_times: deque[float] = deque(maxlen=31)

    @property
    def kinds(self) -> tuple[str, ...]:
        """What the publisher sends: "video" and/or "audio", in the offer's order."""
        return tuple(self._codecs)

    @property
    def end_reason(self) -> str | None:
        """Why frames() ended (or is ending), in words; None while it runs."""
        return self._end_reason

    async def answer(self) -> str:
        """The SDP answer to the offer, its ICE candidates gathered. Raises WhipOfferInvalid when aiortc cannot
        take the offer."""
        if self._pc is not None:
            raise RuntimeError("the offer is already answered")
        pc = self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.on("connectionstatechange", self._on_connection_state)
        for kind, mime in self._codecs.items():
            transceiver = pc.addTransceiver(kind, direction="recvonly")
            transceiver.setCodecPreferences([c for c in RTCRtpReceiver.getCapabilities(kind).codecs
                                             if c.mimeType in (mime, "video/rtx")])
            if kind == "video":
                self._video_receiver = transceiver.receiver
                if self._pass_video:
                    _pass_through(transceiver.receiver, self._on_picture)
        gathering = ice_host_addresses(self._ice_addresses) if self._ice_addresses else contextlib.nullcontext()
        try:
            with gathering:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=self._offer, type="offer"))
                await pc.setLocalDescription(await pc.createAnswer())
        except (ValueError, OperationError) as exc:
            await self.close()
            raise WhipOfferInvalid(f"the offer cannot be answered: {exc}") from exc
        self._tracks = [t.receiver.track for t in pc.getTransceivers() if t.receiver.track is not None]
        self._answered_at = time.monotonic()
        return pc.localDescription.sdp

    @property
    def video_mime_type(self) -> str | None:
        """The video codec the answer takes ("video/VP8", "video/H264"); None without video."""
        return self._codecs.get("video")

    def request_keyframe(self) -> None:
        """Ask the publisher for a key frame (an RTCP PLI), as a decoder that lost its pictures would; at most
        one ask per PLI_EVERY_S."""
        receiver = self._video_receiver
        now = time.monotonic()
        if receiver is None or now - self._pli_at < PLI_EVERY_S:
            return
        # The picture's own stream, not its retransmissions' (aiortc keeps no public map of those).
        rtx = getattr(receiver, "_RTCRtpReceiver__rtx_ssrc", {})
        ssrcs = [s.source for s in receiver.getSynchronizationSources() if s.source not in rtx]
        if ssrcs:
            self._pli_at = now
            asyncio.ensure_future(receiver._send_rtcp_pli(ssrcs[0]))

    def _on_picture(self, _codec, encoded) -> None:
        """A whole encoded picture from the video receiver (pass_video); pictures before the first key frame,
        which nothing could decode, go (and a key frame is asked for)."""
        key = self._facts.keyframe(encoded.data)
        if self._facts.size is None:
            self.request_keyframe()
            return
        width, height = self._facts.size
        self._passed.put_nowait(PassedVideo(encoded.data, self._facts.mime_type, key, width, height,
                                            encoded.timestamp))

    def video_info(self) -> dict | None:
        """What video comes in: {"mime_type", "width", "height", "framerate"}; None before its first frame."""
        return None if self._video is None else dict(self._video)

    def audio_info(self) -> dict | None:
        """What audio comes in: {"mime_type", "channels", "sample_rate"} (as decoded); None before its first frame."""
        return None if self._audio is None else dict(self._audio)

    async def frames(self) -> AsyncIterator[Frame]:
        """The decoded frames of both tracks as they come, on one clock: `frame.time` is seconds since the first
        frame of either track. Call once, after answer(); close it (contextlib.aclosing) if you stop early."""
        if self._pc is None:
            raise RuntimeError("answer() the offer before reading its frames")
        if self._reading:
            raise RuntimeError("frames() is already being read")
        self._reading = True
        queue: asyncio.Queue[Frame | _TrackEnded | None] = asyncio.Queue()
        tasks = [asyncio.create_task(self._read(track, queue)) for track in self._tracks]
        tasks.append(asyncio.create_task(self._watch(queue)))
        if self._pass_video:
            tasks.append(asyncio.create_task(self._forward(queue)))
        live = len(self._tracks)
        try:
            while live:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, _TrackEnded):
                    live -= 1
                    continue
                yield self._place(item)
            self._end("the publisher's tracks ended")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """Close the peer connection (frames() ends). Idempotent."""
        self._end("closed")
        if self._closed:
            return
        self._closed = True
        if self._pc is not None:
            await self._pc.close()

    # --- internals -------------------------------------------------------------------------------------------

    def _end(self, reason: str) -> None:
        if self._end_reason is None:
            self._end_reason = reason
        self._over.set()

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        if state == "connected":
            self._connected.set()
        elif state in ("failed", "closed"):
            self._end(f"the peer connection {state}")

    async def _read(self, track: MediaStreamTrack, queue: asyncio.Queue) -> None:
        try:
            while True:
                queue.put_nowait(await track.recv())
        except MediaStreamError:
            queue.put_nowait(_TrackEnded())

    async def _forward(self, queue: asyncio.Queue) -> None:
        """The passed pictures into the frames' queue (the video track itself only ever ends)."""
        while True:
            queue.put_nowait(await self._passed.get())

    async def _watch(self, queue: asyncio.Queue) -> None:
        """Queue the end (None) when the input is over, or when the publisher has not connected in time."""
        remaining = self._answered_at + self._stall_s - time.monotonic()
        try:
            await asyncio.wait_for(self._connected.wait(), max(remaining, 0))
        except TimeoutError:
            self._end(f"the publisher did not connect within {self._stall_s:g} s of the answer")
        await self._over.wait()
        queue.put_nowait(None)

    def _place(self, frame: Frame) -> Frame:
        """Put the frame on the input's clock and note what it says about its track."""
        now = time.monotonic()
        if self._epoch is None:
            self._epoch = now
        kind = "audio" if isinstance(frame, av.AudioFrame) else "video"
        # aiortc gives each track's frames RTP timestamps counted from its first packet; each track is anchored
        # where its first frame arrived, so the two share a clock (to within their network and jitter delays).
        start, first_pts = self._first.setdefault(kind, (now - self._epoch, frame.pts))
        frame.pts = round(start / frame.time_base) + frame.pts - first_pts
        if kind == "video":
            self._video_times.append(frame.time)
            span = self._video_times[-1] - self._video_times[0]
            framerate = round((len(self._video_times) - 1) / span, 2) if span > 0 else 0.0
            self._video = {"mime_type": self._codecs["video"], "width": frame.width, "height": frame.height,
                           "framerate": framerate}
        else:
            self._audio = {"mime_type": self._codecs["audio"], "channels": len(frame.layout.channels),
                           "sample_rate": frame.sample_rate}
        return frame
