"""The worker's outbound gate: an HTTP proxy on 127.0.0.1 that Chromium and the storage SDKs connect through.

It takes `CONNECT host:port` (HTTPS, secure WebSockets, anything tunnelled)
and plain `GET http://host/...` requests, resolves the host under the
OutboundPolicy and connects to the very address it checked, so a name cannot
pass the check and then resolve somewhere else. A refused host gets `403` and
is never connected to. Plain HTTP is one request per connection (the upstream
is told to close; an Upgrade, a ws:// WebSocket, becomes a tunnel), which keeps
the gate a byte pump rather than an HTTP implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from urllib.parse import urlsplit

from ..outbound import AddressRefused, OutboundPolicy

log = logging.getLogger(__name__)

#: On the gate's own answers (refused, no connection), so its clients tell them from the destination's.
GATE_HEADER = "X-Compositor-Gate"
HEAD_LIMIT = 64 * 1024
HEAD_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
CHUNK = 64 * 1024
# After the client half-closes, the destination gets this long to finish its answer.
HALF_CLOSED_S = 60.0
# Headers meant for the proxy hop only, not the destination.
_PROXY_ONLY = {b"proxy-connection", b"proxy-authorization"}
_HOP = _PROXY_ONLY | {b"connection", b"keep-alive"}


class OutboundGate:
    """Owns one proxy server under a policy; `url` is what clients are given as their proxy."""

    def __init__(self, policy: OutboundPolicy):
        self.policy = policy
        # Bound now, so clients can be given the URL before the gate serves (connections wait in the backlog).
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, sock=self._socket, limit=HEAD_LIMIT)

    async def stop(self) -> None:
        """Stop listening and cut every connection still open. Idempotent."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self._socket.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)

    async def __aenter__(self) -> OutboundGate:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._clients.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        line, _, headers = head.partition(b"\r\n")
        try:
            method, target, version = line.decode("latin-1").split(" ")
            if method == "CONNECT":
                host, port = _authority(target)
            else:
                parts = urlsplit(target)
                # aiohttp asks for a plain WebSocket as `GET ws://…`: the same request as `GET http://…`.
                if parts.scheme not in ("http", "ws") or not parts.hostname:
                    raise ValueError("only http:// (and ws://) requests and CONNECT go through this proxy")
                host, port = parts.hostname, parts.port or 80
        except ValueError:
            await _answer(writer, 400, "bad proxy request")
            return
        try:
            upstream_reader, upstream = await self._open(host, port)
        except AddressRefused as exc:
            await _answer(writer, 403, exc.message)
            return
        except (OSError, TimeoutError):
            # The same answer for a closed port and one that does not answer: the page learns nothing more.
            await _answer(writer, 502, "could not connect")
            return
        answers = upstream_reader
        try:
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                origin = urlsplit(target)._replace(scheme="", netloc="").geturl() or "/"
                upgrade = any(h.split(b":", 1)[0].strip().lower() == b"upgrade" for h in headers.split(b"\r\n"))
                upstream.write(f"{method} {origin} {version}\r\n".encode("latin-1") + _hop_free(headers, upgrade))
                if not upgrade:
                    answers = _ClosingAnswers(upstream_reader)
            await _pump(reader, upstream, answers, writer)
        finally:
            upstream.close()

    async def _open(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        addresses = await self.policy.resolve(host, port, "connection")
        error: Exception = OSError("no address")
        for address in addresses:
            try:
                return await asyncio.wait_for(asyncio.open_connection(address, port), CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                error = exc
        raise error


def _authority(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(target)
    return host.strip("[]"), int(port)


def _hop_free(headers: bytes, upgrade: bool = False) -> bytes:
    """The request's headers without the proxy's own, asking the destination to close after answering (or, for
    an Upgrade, keeping its Connection header: the connection becomes the client's)."""
    hop = _PROXY_ONLY if upgrade else _HOP
    kept = [h for h in headers.split(b"\r\n") if h and h.split(b":", 1)[0].strip().lower() not in hop]
    return b"\r\n".join([*kept, *([] if upgrade else [b"Connection: close"]), b"", b""])


class _ClosingAnswers:
    """Reads the destination's answer for the client: final response heads get `Connection: close` (the
    gate serves one request per connection); interim 1xx heads and the body pass unchanged."""

    def __init__(self, reader: asyncio.StreamReader):
        self._reader = reader
        self._in_body = False

    async def read(self, n: int) -> bytes:
        if self._in_body:
            return await self._reader.read(n)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1:2]
        if status and status[0].startswith(b"1"):
            return head
        self._in_body = True
        line, _, headers = head.partition(b"\r\n")
        return line + b"\r\n" + _hop_free(headers)


async def _pump(client: asyncio.StreamReader, upstream: asyncio.StreamWriter, answers,
                writer: asyncio.StreamWriter) -> None:
    """Copy both ways until either side ends."""

    async def copy(source, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(CHUNK):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            with contextlib.suppress(OSError):
                sink.write_eof()

    up = asyncio.create_task(copy(client, upstream))
    down = asyncio.create_task(copy(answers, writer))
    try:
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if down not in done and up.exception() is None:
            # The client has said all it will (EOF) and may still be reading the answer.
            await asyncio.wait({down}, timeout=HALF_CLOSED_S)
    finally:
        for task in (up, down):
            task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)


async def _answer(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
    body = message.encode()
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                 f"{GATE_HEADER}: {reason.lower()}\r\nConnection: close\r\n\r\n".encode() + body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()

