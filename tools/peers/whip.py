"""A WHIP publisher for tests and benchmarks: an aiortc client sending a solid-colour picture and a sine tone.

It gathers ICE candidates on 127.0.0.1 only and uses no STUN/TURN server, so it reaches nothing off this host;
the WhipInput it talks to must be told the same (`ice_addresses=["127.0.0.1"]` or COMPOSITOR_WHIP_ICE_ADDRESSES).
"""

from __future__ import annotations

import asyncio
import fractions
import time
from urllib.parse import urljoin

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from compositor.ingress.whip import ice_host_addresses

LOOPBACK = ["127.0.0.1"]


class _Paced:
    """Frame n of a track is due n / rate seconds after its first; recv() waits for it, as a live source would."""

    def __init__(self, rate: float):
        self._rate = rate
        self._start: float | None = None
        self._n = 0

    async def next(self) -> int:
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._n += 1
            await asyncio.sleep(self._start + self._n / self._rate - time.monotonic())
        return self._n


class ColourTrack(MediaStreamTrack):
    """Video of one RGB colour."""

    kind = "video"

    def __init__(self, rgb: tuple[int, int, int], width: int = 320, height: int = 240, fps: int = 15):
        super().__init__()
        self._picture = np.empty((height, width, 3), dtype=np.uint8)
        self._picture[:] = rgb
        self._fps = fps
        self._pace = _Paced(fps)

    async def recv(self) -> av.VideoFrame:
        """The next frame, when it is due."""
        if self.readyState != "live":
            raise MediaStreamError
        n = await self._pace.next()
        frame = av.VideoFrame.from_ndarray(self._picture, format="rgb24")
        frame.pts, frame.time_base = n, fractions.Fraction(1, self._fps)
        return frame


class ToneTrack(MediaStreamTrack):
    """A sine tone: mono s16 at 48 kHz in 20 ms frames."""

    kind = "audio"
    RATE = 48_000
    SAMPLES = 960

    def __init__(self, frequency: float, amplitude: float = 0.3):
        super().__init__()
        self._frequency = frequency
        self._amplitude = amplitude
        self._pace = _Paced(self.RATE / self.SAMPLES)

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms, when they are due."""
        if self.readyState != "live":
            raise MediaStreamError
        n = await self._pace.next()
        t = (n * self.SAMPLES + np.arange(self.SAMPLES)) / self.RATE
        samples = (self._amplitude * 32767 * np.sin(2 * np.pi * self._frequency * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.RATE
        frame.pts, frame.time_base = n * self.SAMPLES, fractions.Fraction(1, self.RATE)
        return frame


class WhipRejected(Exception):
    """The WHIP endpoint did not answer as RFC 9725 says a successful one does."""

    def __init__(self, status: int, body: str, why: str):
        super().__init__(f"{why}: HTTP {status} {body[:200]!r}")
        self.status = status
        self.body = body


class WhipPublisher:
    """A WHIP client publishing `rgb` video (VP8 or H264) and a `tone_hz` sine, over 127.0.0.1 only."""

    def __init__(self, *, rgb: tuple[int, int, int] = (200, 60, 120), tone_hz: float = 440.0, video: bool = True,
                 audio: bool = True, video_codec: str = "video/VP8", width: int = 320, height: int = 240,
                 fps: int = 15):
        self.rgb = rgb
        self.tone_hz = tone_hz
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        if audio:
            self._pc.addTransceiver(ToneTrack(tone_hz), direction="sendonly")
        if video:
            transceiver = self._pc.addTransceiver(ColourTrack(rgb, width, height, fps), direction="sendonly")
            transceiver.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                             if c.mimeType in (video_codec, "video/rtx")])

    async def offer(self) -> str:
        """The SDP offer, its (127.0.0.1) candidates gathered."""
        with ice_host_addresses(LOOPBACK):
            await self._pc.setLocalDescription(await self._pc.createOffer())
        return self._pc.localDescription.sdp

    async def accept(self, answer_sdp: str) -> None:
        """Take the endpoint's answer; the media starts once ICE and DTLS connect."""
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))

    async def close(self) -> None:
        """Stop sending and close the peer connection."""
        await self._pc.close()

    async def publish(self, url: str, token: str) -> str:
        """The WHIP exchange: POST the offer to the endpoint `url`, accept the answer; returns the session URL (the
        Location, made absolute). Raises WhipRejected unless the endpoint answers 201 with a Location and an SDP."""
        offer = await self.offer()
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as http, http.post(url, data=offer, headers=headers) as resp:
            body = await resp.text()
            if resp.status != 201:
                raise WhipRejected(resp.status, body, "the offer was not accepted")
            if "Location" not in resp.headers:
                raise WhipRejected(resp.status, body, "the 201 has no Location header")
            if resp.content_type != "application/sdp":
                raise WhipRejected(resp.status, body, f"the answer is {resp.content_type}, not application/sdp")
            location = urljoin(url, resp.headers["Location"])
        await self.accept(body)
        return location

    async def stop(self, location_url: str, token: str) -> None:
        """End the WHIP session: DELETE its URL (the endpoint answers 200), then close the peer connection."""
        headers = {"Authorization": f"Bearer {token}"}
        try:
            async with aiohttp.ClientSession() as http, http.delete(location_url, headers=headers) as resp:
                body = await resp.text()
                if resp.status != 200:
                    raise WhipRejected(resp.status, body, "the session was not deleted")
        finally:
            await self.close()
