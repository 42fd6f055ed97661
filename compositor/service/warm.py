"""Idle workers kept ready for the next job: their process up and their libraries loaded (an egress worker's
display, sink and browser too), so a job starts at once. Egress and ingress runners each keep a pool."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ..process import ManagedProcess

log = logging.getLogger(__name__)

#: A warm worker that has not said it is ready within this is dropped.
WARM_TIMEOUT_S = 30.0


class WarmPool:
    """Up to `target` idle workers, made by `make` and ready once `until_ready` (reading their stdout up to their
    ready event) says so; each is taken by one job and replaced."""

    def __init__(self, target: int, make: Callable[[], ManagedProcess],
                 until_ready: Callable[[ManagedProcess], Awaitable[bool]]):
        self.target = target
        self._make = make
        self._until_ready = until_ready
        self._ready: list[ManagedProcess] = []
        self._coming: set[asyncio.Task] = set()
        self._closing = False

    @property
    def ready(self) -> int:
        """Warm workers ready for a job."""
        return sum(1 for w in self._ready if w.running)

    def take(self) -> ManagedProcess | None:
        """A ready worker (now the caller's), or None."""
        while self._ready:
            worker = self._ready.pop(0)
            if worker.running:
                return worker
        return None

    def replenish(self) -> None:
        """Start warm workers until `target` are ready or coming up."""
        while not self._closing and len(self._ready) + len(self._coming) < self.target:
            task = asyncio.create_task(self._warm_up())
            self._coming.add(task)
            task.add_done_callback(self._coming.discard)

    async def _warm_up(self) -> None:
        worker = self._make()
        try:
            await worker.start()
            ready = await asyncio.wait_for(self._until_ready(worker), WARM_TIMEOUT_S)
        except (OSError, TimeoutError):
            ready = False
        if ready and not self._closing:
            self._ready.append(worker)
            return
        if not self._closing:
            log.warning("a warm worker did not come up: %s", worker.describe_exit() if worker.proc else "not started")
        await worker.stop()

    async def close(self, grace: float | None = None) -> None:
        """Stop every idle worker, and those still coming up."""
        self._closing = True
        await asyncio.gather(*self._coming, return_exceptions=True)
        await asyncio.gather(*(w.stop(grace) for w in self._ready), return_exceptions=True)
        self._ready.clear()
