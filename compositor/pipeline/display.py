"""The virtual display: one Xvfb per egress, on a display number Xvfb picks itself."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from ..errors import DisplayFailed
from ..process import ManagedProcess

# Chromium's kiosk window comes out a pixel short of an exactly-sized screen;
# a slightly larger screen with the window at 0,0 keeps every edge pixel.
SCREEN_MARGIN = 8


class Display:
    """Owns an Xvfb server sized for a width x height capture."""

    def __init__(self, width: int, height: int):
        self.width = width
        self.height = height
        self.number: int | None = None
        self._proc: ManagedProcess | None = None

    @property
    def name(self) -> str:
        assert self.number is not None, "display not started"
        return f":{self.number}"

    @property
    def process(self) -> ManagedProcess | None:
        return self._proc

    async def start(self, timeout: float = 10.0) -> None:
        # -displayfd lets Xvfb take the first free display atomically (its lock
        # file), so concurrent workers never race for a number.
        read_fd, write_fd = os.pipe()
        screen = f"{self.width + SCREEN_MARGIN}x{self.height + SCREEN_MARGIN}x24"
        self._proc = ManagedProcess(
            "Xvfb",
            ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", screen, "-nolisten", "tcp",
             "-nocursor", "-dpi", "96", "+extension", "MIT-SHM"],
            pass_fds=[write_fd],
        )
        try:
            await self._proc.start()
        finally:
            os.close(write_fd)
        try:
            self.number = await asyncio.wait_for(self._read_number(read_fd), timeout)
        except (TimeoutError, ValueError):
            await self._proc.stop()
            raise DisplayFailed(f"Xvfb did not start: {self._proc.describe_exit()}") from None
        finally:
            os.close(read_fd)

    async def _read_number(self, fd: int) -> int:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    os.fdopen(os.dup(fd), "rb"))
        try:
            line = await reader.readline()
        finally:
            transport.close()
        return int(line.decode().strip())

    async def stop(self) -> None:
        if self._proc is None:
            return
        pid = self._proc.pid
        await self._proc.stop()
        if self.number is None:
            return
        # Xvfb removes its lock and socket itself unless it was killed. Remove
        # them only while the lock still names our server: another worker may
        # already have taken the number over.
        lock = Path(f"/tmp/.X{self.number}-lock")
        try:
            owner = int(lock.read_text().strip())
        except (OSError, ValueError):
            return
        if owner == pid:
            lock.unlink(missing_ok=True)
            Path(f"/tmp/.X11-unix/X{self.number}").unlink(missing_ok=True)
