"""Admission: egresses run while their summed CPU cost fits the node's capacity; the rest wait in a bounded
queue or are refused."""

from __future__ import annotations

from dataclasses import dataclass

from ..plan import EgressConfig
from ..request import RecordRequest

# CPU cores one egress uses, by output height (bench/record.py, 4 tiles, x264
# superfast + zerolatency): 720p30 ~0.6, 1080p30 ~1.2. Rounded up a little.
COST_BY_HEIGHT = [(480, 0.4), (720, 0.7), (1080, 1.3), (2160, 4.0)]


def egress_cost(config: EgressConfig) -> float:
    """Cores an egress needs, by its frame's short side (so portrait costs as landscape)."""
    side = min(config.width, config.height)
    return next((cost for h, cost in COST_BY_HEIGHT if side <= h), COST_BY_HEIGHT[-1][1])


class Admission:
    """Admits egresses while their summed CPU cost fits the capacity; never oversubscribes."""

    def __init__(self, capacity: float):
        self.capacity = capacity
        self._held: dict[str, float] = {}

    @property
    def free(self) -> float:
        return self.capacity - sum(self._held.values())

    def try_hold(self, egress_id: str, cost: float) -> bool:
        if cost > self.free + 1e-9:
            return False
        self._held[egress_id] = cost
        return True

    def release(self, egress_id: str) -> None:
        self._held.pop(egress_id, None)


@dataclass
class Queued:
    """An admitted-later egress, waiting for capacity."""

    egress_id: str
    request: RecordRequest
    cost: float
    frame: tuple[int, int, int]
