"""Admission on one node: egresses run while their summed CPU cost fits the node's capacity; the rest wait in
a bounded queue, first come first served, or are refused."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..errors import CapacityExceeded, InvalidRequest
from ..plan import EgressConfig
from .seams import Job, Placed

# CPU cores one egress uses, by output height (bench/record.py, 4 tiles, x264
# superfast + zerolatency): 720p30 ~0.6, 1080p30 ~1.2. Rounded up a little.
COST_BY_HEIGHT = [(480, 0.4), (720, 0.7), (1080, 1.3), (2160, 4.0)]
# Costs are sums of decimals: compared with this much slack.
EPSILON = 1e-9


def egress_cost(config: EgressConfig) -> float:
    """Cores an egress needs, by its frame's short side (so portrait costs as landscape)."""
    side = min(config.width, config.height)
    return next((cost for h, cost in COST_BY_HEIGHT if side <= h), COST_BY_HEIGHT[-1][1])


class LocalDispatcher:
    """The `seams.Dispatcher` of one node, in memory: never oversubscribes, never reorders the queue."""

    def __init__(self, capacity: float, max_queue: int):
        self._capacity = capacity
        self.max_queue = max_queue
        self._held: dict[str, float] = {}
        self._queue: list[Job] = []

    @property
    def capacity(self) -> float:
        return self._capacity

    async def free(self) -> float:
        return self._free()

    def _free(self) -> float:
        return self._capacity - sum(self._held.values())

    def hold(self, egress_id: str, cost: float) -> bool:
        """Hold `cost` for `egress_id` if it fits now."""
        if cost > self._free() + EPSILON:
            return False
        self._held[egress_id] = cost
        return True

    async def check(self, cost: float, queue: bool) -> None:
        if cost > self._capacity + EPSILON:
            raise InvalidRequest(f"this egress needs {cost} cores and this server has {self._capacity:g} in all: "
                                 "ask for a smaller frame", details={"field": "quality", "needed": cost})
        if (not self._queue and cost <= self._free() + EPSILON) or (queue and len(self._queue) < self.max_queue):
            return
        full = " and the wait queue is full" if queue else ""
        raise CapacityExceeded(
            f"no capacity for this egress (needs {cost} cores, {max(self._free(), 0):.2f} free){full}",
            details={"needed": cost, "free": round(self._free(), 3), "queued": len(self._queue)})

    async def admit(self, job: Job, queue: bool) -> Placed:
        if not self._queue and self.hold(job.egress_id, job.cost):
            return Placed.HERE
        await self.check(job.cost, queue)
        self._queue.append(job)
        return Placed.QUEUED

    async def release(self, egress_id: str) -> list[Job]:
        self._held.pop(egress_id, None)
        admitted = []
        while self._queue and self.hold(self._queue[0].egress_id, self._queue[0].cost):
            admitted.append(self._queue.pop(0))
        return admitted

    async def withdraw(self, egress_id: str) -> bool:
        kept = [j for j in self._queue if j.egress_id != egress_id]
        withdrawn, self._queue = len(kept) != len(self._queue), kept
        return withdrawn

    async def position(self, egress_id: str) -> int | None:
        return next((i + 1 for i, j in enumerate(self._queue) if j.egress_id == egress_id), None)

    async def drain(self) -> list[Job]:
        return list(self._queue)

    async def placed(self) -> AsyncIterator[Job]:
        """One node: no other node places jobs on it, so this ends at once."""
        for job in ():
            yield job
