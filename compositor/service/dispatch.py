"""Admission on one node: egresses run while their summed CPU and memory fit the node's capacity; the rest wait
in a bounded queue, first come first served, or are refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from ..errors import CapacityExceeded, Conflict, InvalidRequest
from ..plan import EgressConfig
from .seams import EPSILON, Job, Need, Placed

# What one egress holds, by output height. Cores: bench/record.py, 4 tiles, x264 superfast + zerolatency
# (720p30 ~0.6, 1080p30 ~1.2), rounded up a little. Memory: the peak PSS of a recording's whole process tree
# (worker, Xvfb, PulseAudio, Chromium, ffmpeg) of a four-person synthetic room, 12 s (480p 719 MB, 720p 746,
# 1080p 831), plus a fifth for camera clips and long runs (a 10-minute 720p job of four clips held 870–895 MB).
COST_BY_HEIGHT = [(480, Need(0.4, 850)), (720, Need(0.7, 950)), (1080, Need(1.3, 1050)), (2160, Need(4.0, 1700))]
# Kept for the service itself (its Python, SQLite, webhooks) out of what the machine's limit leaves to jobs.
SERVICE_RESERVE_MB = 300
# No limit of its own is written as a huge number (cgroup v1) or "max" (v2): past this, the machine's RAM rules.
_UNLIMITED = 1 << 60


def cost_by_height(table, width: int, height: int) -> Need:
    """A job's Need from `table` ((height, need) rows, ascending) by its frame's short side (so portrait costs
    as landscape); past the last row, the last."""
    side = min(width, height)
    return next((cost for h, cost in table if side <= h), table[-1][1])


def egress_cost(config: EgressConfig) -> Need:
    """Cores and memory an egress holds."""
    return cost_by_height(COST_BY_HEIGHT, config.width, config.height)


def memory_limit_mb(root: Path = Path("/")) -> float:
    """The memory this process's jobs may use in all, in MB: the machine's RAM, or a container's cgroup limit
    when lower (v2 `memory.max` of this process's group, v1 `memory.limit_in_bytes`), as LiveKit's egress counts
    since v1.13. `root` is the filesystem root to read (tests give a fake one)."""
    limits = [_meminfo_total(root / "proc/meminfo")]
    for path in _cgroup_limit_files(root):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < _UNLIMITED:
            limits.append(int(text))
    return min(limits) / 2 ** 20


def _meminfo_total(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"{path} has no MemTotal")


def _cgroup_limit_files(root: Path) -> list[Path]:
    """The limit files that bind this process: its own group's and every parent's (v2), and v1's."""
    fs = root / "sys/fs/cgroup"
    files = [fs / "memory/memory.limit_in_bytes", fs / "memory.max"]
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return files
    for line in lines:
        if line.startswith("0::/"):  # v2: a limit anywhere up the tree binds
            group = fs / line[4:].strip()
            while group != fs and fs in group.parents:
                files.append(group / "memory.max")
                group = group.parent
    return files


def default_memory_mb() -> float:
    """What jobs may hold on this node unless configured: the limit less the service's own reserve."""
    return max(memory_limit_mb() - SERVICE_RESERVE_MB, 0.0)


class LocalDispatcher:
    """The `seams.Dispatcher` of one node, in memory: never oversubscribes, never reorders the queue."""

    def __init__(self, capacity: Need, max_queue: int):
        self._capacity = capacity
        self.max_queue = max_queue
        self._held: dict[str, Need] = {}
        self._queue: list[Job] = []

    @property
    def capacity(self) -> Need:
        return self._capacity

    async def free(self) -> Need:
        return self._free()

    def _free(self) -> Need:
        free = self._capacity
        for need in self._held.values():
            free = free - need
        return free

    def hold(self, egress_id: str, cost: Need) -> bool:
        """Hold `cost` for `egress_id` if it fits now."""
        if not cost.fits(self._free()):
            return False
        self._held[egress_id] = cost
        return True

    async def check(self, cost: Need, queue: bool) -> None:
        refuse_too_big(cost, self._capacity, "this server has in all")
        if (not self._queue and cost.fits(self._free())) or (queue and len(self._queue) < self.max_queue):
            return
        full = " and the wait queue is full" if queue else ""
        raise CapacityExceeded(f"no capacity for this egress (needs {cost.lacking(self._free())}){full}",
                               details={**cost.details(self._free()), "queued": len(self._queue)})

    async def admit(self, job: Job, queue: bool) -> Placed:
        if not self._queue and self.hold(job.egress_id, job.cost):
            return Placed.HERE
        await self.check(job.cost, queue)
        self._queue.append(job)
        return Placed.QUEUED

    async def admit_here(self, job: Job) -> None:
        if job.egress_id in self._held:
            raise Conflict("INGRESS_ACTIVE", f"{job.egress_id} has a session already (one at a time)")
        # One node: without a queue, a job is placed here or refused.
        await self.admit(job, False)

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


def refuse_too_big(cost: Need, largest: Need, whose: str = "this server has", what: str = "this egress",
                   field: str = "quality", advice: str = "ask for a smaller frame") -> None:
    """InvalidRequest when `cost` could never run, even alone, where `largest` is the most there is (`whose`
    says where: 'this server has', 'no node of this cluster has more than')."""
    if cost.cores > largest.cores + EPSILON:
        said = f"{cost.cores} cores and {whose} {largest.cores:g}"
    elif cost.memory_mb > largest.memory_mb + EPSILON:
        said = f"{cost.memory_mb:.0f} MB of memory and {whose} {largest.memory_mb:.0f} MB"
    else:
        return
    raise InvalidRequest(f"{what} needs {said}: {advice}",
                         details={"field": field, "needed": cost.cores, "neededMemoryMb": round(cost.memory_mb)})
