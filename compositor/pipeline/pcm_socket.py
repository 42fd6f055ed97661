"""A track egress's WebSocket output: the sound as raw PCM, as LiveKit's track egress sends it.

ffmpeg writes 16-bit little-endian interleaved PCM (48 kHz stereo unless
the request says otherwise) into a pipe; this sends it on in binary frames
of 20 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

from ..destinations import redact_ws
from ..errors import StreamFailed
from ..protocol import StreamStatus
from .pipes import EncoderPipe

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
FRAME_MS = 20
# At the end, what the pipe still holds is sent within this; then the socket closes.
DRAIN_S = 2.0


class PcmSocket:
    """Owns the pipe ffmpeg writes PCM into and the WebSocket it is sent to."""

    def __init__(self, url: str, sample_rate: int, proxy: str, channels: int = 2):
        """`proxy`: the worker's outbound gate, which the connection goes through."""
        self.url = url
        self.proxy = proxy
        self.frame_bytes = sample_rate * channels * 2 * FRAME_MS // 1000
        self._pipe = EncoderPipe()
        self.write_fd = self._pipe.write_fd
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pump: asyncio.Task | None = None
        self._listener: asyncio.Task | None = None
        self.bytes_sent = 0
        self._closing = False
        #: set with the error when the receiver goes away while recording
        self.failure: asyncio.Future[StreamFailed] = asyncio.get_running_loop().create_future()

    async def connect(self) -> None:
        """Open the WebSocket before recording starts, so a wrong URL fails the egress at once."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S))
        try:
            self._ws = await self._session.ws_connect(self.url, heartbeat=20, proxy=self.proxy)
        except (aiohttp.ClientError, TimeoutError, OSError):
            await self.close()
            # Refused, reset or silent: one message, so the answer tells nothing of which ports are open.
            raise StreamFailed(f"could not open the WebSocket {redact_ws(self.url)} (no connection, or no "
                               f"WebSocket answer within {CONNECT_TIMEOUT_S:g} s)", code="WEBSOCKET_FAILED") from None
        self._listener = asyncio.create_task(self._until_closed())

    async def start(self) -> None:
        """Call once the encoder runs (it holds the pipe's write end now)."""
        self._pump = asyncio.create_task(self._send(await self._pipe.open(self.frame_bytes * 64)))

    async def _send(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    chunk = await reader.readexactly(self.frame_bytes)
                except asyncio.IncompleteReadError as end:
                    chunk = end.partial
                if chunk:
                    await self._ws.send_bytes(chunk)
                    self.bytes_sent += len(chunk)
                if len(chunk) < self.frame_bytes:
                    return
        except (aiohttp.ClientError, ConnectionError) as exc:
            self._failed(f"the WebSocket {redact_ws(self.url)} failed: {exc}")

    async def _until_closed(self) -> None:
        # Receivers send nothing we need; a close or error from them ends the output.
        async for msg in self._ws:
            if msg.type == aiohttp.WSMsgType.ERROR:
                break
        if not self.failure.done() and not self._closing:
            self._failed(f"the WebSocket {redact_ws(self.url)} was closed by the receiver "
                         f"(code {self._ws.close_code})")

    def _failed(self, message: str) -> None:
        if not self.failure.done():
            log.warning("%s", message)
            self.failure.set_result(StreamFailed(message, code="WEBSOCKET_CLOSED"))

    def info(self) -> dict:
        """What the output did, for the egress's result."""
        return {"url": redact_ws(self.url), "bytes_sent": self.bytes_sent,
                "status": StreamStatus.FAILED if self.failure.done() else StreamStatus.FINISHED}

    async def close(self) -> None:
        """After the encoder ended: send what the pipe holds, then close the socket. Idempotent."""
        await self._pipe.close(self._pump, DRAIN_S)
        self._closing = True
        if self._ws is not None:
            with contextlib.suppress(aiohttp.ClientError, ConnectionError, TimeoutError):
                await asyncio.wait_for(self._ws.close(), DRAIN_S)
        if self._listener:
            self._listener.cancel()
        if self._session is not None:
            await self._session.close()
