"""Chromium's DevTools without a port anyone can open.

Chromium speaks DevTools on a pair of pipes (`--remote-debugging-pipe`: it
reads fd 3, writes fd 4, messages ending in NUL). Playwright connects to a
WebSocket, so this offers those pipes as one, on 127.0.0.1 at a path with a
random token, to one connection: no other process (nor any page) can drive
the browser, and nothing listens once the browser is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hmac
import os
import secrets

from aiohttp import WSMsgType, web

# The DevTools pipe numbers Chromium uses.
CHROMIUM_READS, CHROMIUM_WRITES = 3, 4
# One DevTools message (a screenshot, a large page evaluation) may run to megabytes.
MAX_MESSAGE = 256 * 1024 * 1024


def _high(fd: int) -> int:
    """`fd` moved to 10 or above (close-on-exec), clear of the numbers the child gets."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class DevToolsPipe:
    """Owns the pipes to one Chromium and the token-guarded WebSocket that carries them to Playwright."""

    def __init__(self) -> None:
        to_chromium_r, to_chromium_w = (_high(fd) for fd in os.pipe())
        from_chromium_r, from_chromium_w = (_high(fd) for fd in os.pipe())
        self._child_fds = {CHROMIUM_READS: to_chromium_r, CHROMIUM_WRITES: from_chromium_w}
        self._read_fd, self._write_fd = from_chromium_r, to_chromium_w
        self._token = secrets.token_urlsafe(32)
        self._runner: web.AppRunner | None = None
        self._taken = False
        self.url = ""

    @property
    def child_fds(self) -> dict[int, int]:
        """What Chromium gets: its fd number -> our descriptor (for ManagedProcess's `fds`)."""
        return dict(self._child_fds)

    async def start(self) -> str:
        """Listen for Playwright; returns the WebSocket URL to connect to."""
        app = web.Application()
        app.router.add_get("/devtools/browser/{token}", self._connect)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/devtools/browser/{self._token}"
        return self.url

    def child_started(self) -> None:
        """Chromium holds its ends now: ours of them go, so its exit reads as the end of the pipe."""
        for fd in self._child_fds.values():
            os.close(fd)
        self._child_fds = {}

    async def _connect(self, request: web.Request) -> web.StreamResponse:
        if self._taken or not hmac.compare_digest(request.match_info["token"].encode(), self._token.encode()):
            raise web.HTTPNotFound()
        self._taken = True
        ws = web.WebSocketResponse(max_msg_size=0, compress=False)
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_MESSAGE)
        read_transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                         os.fdopen(self._read_fd, "rb", buffering=0))
        write_transport, _ = await loop.connect_write_pipe(asyncio.Protocol,
                                                           os.fdopen(self._write_fd, "wb", buffering=0))
        self._read_fd = self._write_fd = -1  # the transports own them now

        async def from_chromium() -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    message = await reader.readuntil(b"\0")
                    await ws.send_str(message[:-1].decode())
            await ws.close()  # Chromium is gone: so is the connection, and Playwright says so

        relay = asyncio.create_task(from_chromium())
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    write_transport.write(msg.data.encode() + b"\0")
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
            read_transport.close()
            write_transport.close()
            await ws.close()
        return ws

    async def stop(self) -> None:
        """Close the WebSocket server and whatever pipe ends are still ours. Idempotent."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for fd in (*self._child_fds.values(), self._read_fd, self._write_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._child_fds, self._read_fd, self._write_fd = {}, -1, -1
