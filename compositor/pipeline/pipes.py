"""Pipes between the worker and its encoder: one the encoder writes an output into, read back by the worker
(stream fan-out, WebSocket PCM); one that holds the encoder back until the recording starts."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os


class EncoderPipe:
    """Owns both ends of an os.pipe: the write end goes to ffmpeg (pass `write_fd`), the read end to a reader."""

    def __init__(self, size: int | None = None):
        self._read_fd, self.write_fd = os.pipe()
        self._owned = True  # both ends, until open() hands the write end to the encoder
        self._transport: asyncio.BaseTransport | None = None
        if size:
            with contextlib.suppress(OSError):
                # Slack for the moment the loop is busy: the encoder must never wait on this pipe.
                fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, size)

    async def open(self, limit: int) -> asyncio.StreamReader:
        """Call once the encoder runs (it holds the write end now): a reader of what it writes."""
        self._owned = False
        os.close(self.write_fd)
        reader = asyncio.StreamReader(limit=limit)
        self._transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(self._read_fd, "rb", buffering=0))
        return reader

    async def close(self, pump: asyncio.Task | None, drain_s: float) -> None:
        """After the encoder ended: give `pump` (the reader's task) `drain_s` to finish, then close. Idempotent."""
        if self._owned:
            self._owned = False
            for fd in (self._read_fd, self.write_fd):
                os.close(fd)
        if pump:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pump), drain_s)
            pump.cancel()
        if self._transport:
            self._transport.close()
            self._transport = None


class StartGate:
    """A pipe the encoder reads before anything else, as an input it leaves unused. Started while the page still
    loads, ffmpeg does its own start-up (60-70 ms: it loads ~200 libraries) and then waits on this pipe; `open`
    lets it go on to the captures, which it then opens within a millisecond."""

    def __init__(self) -> None:
        #: ffmpeg's end (pass it on; `spawned` closes our copy)
        self.read_fd, self._write_fd = os.pipe()
        self._ends = [self.read_fd, self._write_fd]

    def spawned(self) -> None:
        """The encoder holds the read end now."""
        self._close(self.read_fd)

    @property
    def opened(self) -> bool:
        return self._write_fd not in self._ends

    def open(self) -> None:
        """Let the encoder go on: it reads the end of the pipe. (If this process dies, the kernel does the same.)"""
        self._close(self._write_fd)

    def close(self) -> None:
        """Close what is still ours. Idempotent."""
        for fd in list(self._ends):
            self._close(fd)

    def _close(self, fd: int) -> None:
        if fd in self._ends:
            self._ends.remove(fd)
            os.close(fd)
