"""An HLS pull read by the ingress worker itself, not by ffmpeg.

ffmpeg's HLS demuxer opens every URL a playlist names with whatever protocol
it names (`httpproxy://HOST/` connects to HOST directly), out of the
outbound policy's reach. Here each playlist and segment is one HTTP GET this
worker makes: its URL must be http(s), is checked under the policy as the
request's own URL is, and goes through the outbound gate; redirects are not
followed. The segments (MPEG-TS) go in order to PyAV on a pipe, which
decodes them as one stream.

A live playlist (no EXT-X-ENDLIST) is joined three segments from its live
edge and reloaded every half target duration; a finished one is read from
its start and ends the input after its last segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from urllib.parse import urljoin, urlsplit

import aiohttp
import m3u8

from ..errors import Unsupported
from ..outbound import AddressRefused, OutboundPolicy
from .errors import IngressError, InputInvalid, InputUnreachable
from .inputs import AvInput, Frame, InputInfo

log = logging.getLogger(__name__)

#: A live playlist is joined this many segments before its live edge (as players do).
LIVE_EDGE_SEGMENTS = 3
#: Bigger than this is not a playlist, or not a segment, a worker should hold.
MAX_PLAYLIST_BYTES = 1 << 20
MAX_SEGMENT_BYTES = 64 << 20
CONNECT_TIMEOUT_S = 10.0


class HlsInput:
    """One HLS playlist (master or media) as a MediaInput: fetched here, decoded by PyAV."""

    def __init__(self, url: str, *, policy: OutboundPolicy, proxy: str | None, what: str, read_timeout: float,
                 height: int | None, video: bool = True, audio: bool = True):
        """`proxy`: the outbound gate every request goes through (None: straight, for a trusted job);
        `height`: the published top layer's, which picks a master playlist's variant."""
        self.what = what
        self._url = url
        self._policy = policy
        self._proxy = proxy
        self._read_timeout = read_timeout
        self._height = height
        self._want = {"video": video, "audio": audio}
        self._feeder: asyncio.Task | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._av: AvInput | None = None
        self._pipe = None

    async def open(self) -> InputInfo:
        """Start fetching and decoding; returns once the streams are known (or what failed first)."""
        read_fd, write_fd = os.pipe()
        self._pipe = os.fdopen(read_fd, "rb", buffering=0)
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                            os.fdopen(write_fd, "wb", buffering=0))
        self._writer = asyncio.StreamWriter(transport, protocol, None, loop)
        self._feeder = asyncio.create_task(self._feed())
        self._av = AvInput(self._pipe, live=False, what=self.what, fmt="mpegts", read_timeout=self._read_timeout,
                           **self._want)
        opening = asyncio.create_task(self._av.open())
        await asyncio.wait([opening, self._feeder], return_when=asyncio.FIRST_COMPLETED)
        if self._feeder.done() and self._feeder.exception() is not None and not opening.done():
            opening.cancel()
            raise self._feeder.exception()
        try:
            return await opening
        except IngressError:
            # PyAV saw the pipe end: the reason is the fetch's, if it failed.
            if self._feeder.done() and self._feeder.exception() is not None:
                raise self._feeder.exception() from None
            raise

    async def frames(self) -> AsyncIterator[Frame]:
        """The segments' frames, in order; then what ended the fetching, if it failed."""
        async for frame in self._av.frames():
            yield frame
        if self._feeder.done() and self._feeder.exception() is not None:
            raise self._feeder.exception()

    async def close(self) -> None:
        """Stop fetching and decoding."""
        if self._feeder is not None:
            self._feeder.cancel()
            with contextlib.suppress(BaseException):
                await self._feeder
        if self._av is not None:
            await self._av.close()
        if self._pipe is not None:
            self._pipe.close()

    # --- fetching ---

    async def _feed(self) -> None:
        timeout = aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT_S, sock_read=self._read_timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as http:
                await self._follow(http)
        finally:
            # The end of the stream for PyAV (after a failure too: frames() then says why).
            self._writer.close()

    async def _follow(self, http: aiohttp.ClientSession) -> None:
        url = self._url
        playlist = await self._playlist(http, url)
        if playlist.is_variant:
            url = self._variant(playlist)
            playlist = await self._playlist(http, url)
        sent: set[int] = set()
        first = True
        while True:
            if playlist.segment_map or any(k is not None and k.method not in (None, "NONE") for k in playlist.keys):
                raise Unsupported(f"{self.what}: encrypted or fMP4 HLS is not pulled here (MPEG-TS segments are)",
                                  details={"field": "url"})
            base = playlist.media_sequence or 0
            start = max(0, len(playlist.segments) - LIVE_EDGE_SEGMENTS) if first and not playlist.is_endlist \
                else 0
            first = False
            for index, segment in enumerate(playlist.segments[start:], start):
                if base + index in sent:
                    continue
                self._writer.write(await self._get(http, urljoin(url, segment.uri), MAX_SEGMENT_BYTES, "segment"))
                await self._writer.drain()
                sent.add(base + index)
            if playlist.is_endlist:
                return
            await asyncio.sleep(max(0.5, (playlist.target_duration or 2) / 2))
            playlist = await self._playlist(http, url)

    async def _playlist(self, http: aiohttp.ClientSession, url: str) -> m3u8.M3U8:
        text = (await self._get(http, url, MAX_PLAYLIST_BYTES, "playlist")).decode("utf-8", errors="replace")
        if not text.lstrip().startswith("#EXTM3U"):
            raise InputInvalid(f"{self.what}: not an HLS playlist")
        return m3u8.loads(text, uri=url)

    def _variant(self, master: m3u8.M3U8) -> str:
        """The variant a publisher of the top layer's height wants: the tallest that fits, else the smallest."""
        def height(p) -> int:
            resolution = p.stream_info.resolution
            return resolution[1] if resolution else 0

        variants = sorted(master.playlists, key=lambda p: (height(p), p.stream_info.bandwidth or 0))
        if not variants:
            raise InputInvalid(f"{self.what}: a master playlist without variants")
        fitting = [p for p in variants if not self._height or height(p) <= self._height]
        return urljoin(master.base_uri or self._url, (fitting[-1] if fitting else variants[0]).uri)

    async def _get(self, http: aiohttp.ClientSession, url: str, limit: int, kind: str) -> bytes:
        """One GET of a URL the playlist (or the request) named, held to the policy."""
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            raise AddressRefused(f"url: the HLS {kind} names a URL that is not http(s)", details={"field": "url"})
        if not self._policy.trusted:
            await self._policy.check_url(url, "url")
        try:
            async with http.get(url, proxy=self._proxy, allow_redirects=False) as resp:
                if resp.status != 200:
                    why = "a redirect (not followed: give the final URL)" if 300 <= resp.status < 400 \
                        else f"HTTP {resp.status}"
                    raise InputUnreachable(f"{self.what}: its {kind} answered {why}")
                chunks, size = [], 0
                async for chunk in resp.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > limit:
                        raise InputInvalid(f"{self.what}: its {kind} is over {limit >> 20 or 1} MB")
                    chunks.append(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise InputUnreachable(f"{self.what}: cannot fetch its {kind} ({type(exc).__name__})") from None
        return b"".join(chunks)
