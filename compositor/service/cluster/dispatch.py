"""`seams.Dispatcher` across the cluster: a job is placed on the live node whose free CPU fits it, packing the
busiest first (as LiveKit scores), in one script, so no node ever holds more than its capacity; what fits
nowhere waits in one cluster-wide queue, first come first served.

A job placed on another node reaches it through that node's inbox (a list it blocks on); the job itself
(its request, with the secrets its worker needs) waits in `job:<id>` until its egress ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from ...errors import CapacityExceeded, Conflict
from ...request import RecordRequest
from ...storage.config import REVEAL
from ..dispatch import refuse_too_big
from ..seams import EPSILON, Job, Need, Placed
from .node import _NOW, BLOCK_S, ClusterNode
from .store import REDIS_DOWN, outage_is_unavailable

log = logging.getLogger(__name__)

_PICK = _NOW + """
local p, self_id = ARGV[1], ARGV[2]
-- A node's capacity, held and draining flag; a node without a memory figure has no memory bound.
local function facts(n)
  local h = redis.call('HMGET', p..'node:'..n, 'capacity', 'held', 'draining', 'memory', 'mem_held')
  return tonumber(h[1]), tonumber(h[2] or 0), h[3] == '1', tonumber(h[4]) or math.huge, tonumber(h[5] or 0)
end
-- The live node that fits `cost` cores and `mem` MB and is the most loaded (this node on a tie); nil when none.
local function pick(cost, mem)
  local best, best_load = nil, -1
  for _, n in ipairs(redis.call('ZRANGEBYSCORE', p..'nodes', now(), '+inf')) do
    local cap, held, draining, memory, mem_held = facts(n)
    if cap and not draining and cap - held + %(eps)s >= cost and memory - mem_held + %(eps)s >= mem then
      local load = held / cap
      if load > best_load + %(eps)s or (math.abs(load - best_load) <= %(eps)s and n == self_id) then
        best, best_load = n, load
      end
    end
  end
  return best
end
local function hold(n, id, cost, mem)
  redis.call('HINCRBYFLOAT', p..'node:'..n, 'held', cost)
  redis.call('HINCRBYFLOAT', p..'node:'..n, 'mem_held', mem)
  redis.call('HSET', p..'node:'..n..':held', id, cost)
  redis.call('HSET', p..'node:'..n..':held_mb', id, mem)
  redis.call('HSET', p..'owner', id, n)
  if n ~= self_id then redis.call('RPUSH', p..'node:'..n..':inbox', id) end
end
-- Place the queue's heads while they fit somewhere; the ids placed on this node.
local function pump()
  local here = {}
  while true do
    local head = redis.call('LINDEX', p..'queue', 0)
    if not head then break end
    local cost = tonumber(redis.call('HGET', p..'cost', head))
    local mem = tonumber(redis.call('HGET', p..'memory', head) or 0)
    local n = cost and pick(cost, mem)
    if not n then break end
    redis.call('LPOP', p..'queue')
    hold(n, head, cost, mem)
    if n == self_id then table.insert(here, head) end
  end
  return here
end
""" % {"eps": repr(EPSILON)}

# ARGV: prefix, self, egress id, cores, memory MB, job JSON, queue (1/0), max queue.
# Returns {placed node or ''}, or {false, queued count} when it neither fits nor may wait.
_ADMIT = _PICK + """
local id, cost, mem = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('SET', p..'job:'..id, ARGV[6])
redis.call('HSET', p..'cost', id, cost)
redis.call('HSET', p..'memory', id, mem)
local qlen = redis.call('LLEN', p..'queue')
if qlen == 0 then
  local n = pick(cost, mem)
  if n then hold(n, id, cost, mem) return {n} end
end
if ARGV[7] == '1' and qlen < tonumber(ARGV[8]) then
  redis.call('RPUSH', p..'queue', id)
  return {''}
end
redis.call('DEL', p..'job:'..id)
redis.call('HDEL', p..'cost', id)
redis.call('HDEL', p..'memory', id)
return {false, qlen}
"""

# ARGV: prefix, self, id, cores, memory MB. Holds them on this node if it is live, not draining, has them free
# and no egress waits (the queue goes first); 1 when held, -1 when some node holds that id already.
_HOLD_HERE = _PICK + """
local id, cost, mem = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
if redis.call('HEXISTS', p..'owner', id) == 1 then return -1 end
local lease = tonumber(redis.call('ZSCORE', p..'nodes', self_id))
if redis.call('LLEN', p..'queue') > 0 or not lease or lease < now() then return 0 end
local cap, held, draining, memory, mem_held = facts(self_id)
if not cap or draining or cap - held + %(eps)s < cost or memory - mem_held + %(eps)s < mem then return 0 end
hold(self_id, id, cost, mem)
return 1
""" % {"eps": repr(EPSILON)}

# ARGV: prefix, self, cores, memory MB. Returns {largest cores, largest memory (of any live node), free cores,
# free memory (on the live node that fits the most of it, by cores first), could it run now (1/0), queued}.
_FACTS = _PICK + """
local cost, mem = tonumber(ARGV[3]), tonumber(ARGV[4])
local big_cores, big_mem, free_cores, free_mem = 0, 0, -1, 0
for _, n in ipairs(redis.call('ZRANGEBYSCORE', p..'nodes', now(), '+inf')) do
  local cap, held, draining, memory, mem_held = facts(n)
  if cap and not draining then
    big_cores = math.max(big_cores, cap)
    big_mem = math.max(big_mem, memory)
    if cap - held > free_cores then free_cores, free_mem = cap - held, memory - mem_held end
  end
end
local fits = pick(cost, mem) and 1 or 0
return {tostring(big_cores), tostring(big_mem), tostring(math.max(free_cores, 0)), tostring(free_mem), fits,
        redis.call('LLEN', p..'queue')}
"""

# ARGV: prefix, self, egress id. Frees its cost, then places what the queue can; returns the ids placed here.
_RELEASE = _PICK + """
local id = ARGV[3]
local n = redis.call('HGET', p..'owner', id)
if n then
  local cost = redis.call('HGET', p..'node:'..n..':held', id)
  local mem = redis.call('HGET', p..'node:'..n..':held_mb', id)
  if cost and redis.call('EXISTS', p..'node:'..n) == 1 then
    redis.call('HINCRBYFLOAT', p..'node:'..n, 'held', -tonumber(cost))
    redis.call('HINCRBYFLOAT', p..'node:'..n, 'mem_held', -tonumber(mem or 0))
  end
  redis.call('HDEL', p..'node:'..n..':held', id)
  redis.call('HDEL', p..'node:'..n..':held_mb', id)
  redis.call('HDEL', p..'owner', id)
end
redis.call('LREM', p..'queue', 0, id)
redis.call('DEL', p..'job:'..id)
redis.call('HDEL', p..'cost', id)
redis.call('HDEL', p..'memory', id)
return pump()
"""

# ARGV: prefix, self. Places what the queue can (a node joined, or one was lost); the ids placed here.
_PUMP = _PICK + "return pump()"

# ARGV: prefix, self, egress id. A lost node's job that never started goes back to the queue's head.
_REQUEUE = _PICK + """
local id = ARGV[3]
redis.call('HDEL', p..'owner', id)
if redis.call('EXISTS', p..'job:'..id) == 0 then return -1 end
if not redis.call('LPOS', p..'queue', id) then redis.call('LPUSH', p..'queue', id) end
return pump()
"""

_WITHDRAW = """
local p, id = ARGV[1], ARGV[2]
if redis.call('LREM', p..'queue', 0, id) == 0 then return 0 end
redis.call('DEL', p..'job:'..id)
redis.call('HDEL', p..'cost', id)
redis.call('HDEL', p..'memory', id)
return 1
"""


def _job_json(job: Job) -> str:
    return json.dumps({"request": job.request.model_dump(mode="json", exclude_none=True, context=REVEAL),
                       "cost": job.cost.cores, "memoryMb": job.cost.memory_mb, "frame": list(job.frame)})


@outage_is_unavailable
class RedisDispatcher:
    """`seams.Dispatcher` of one node in a cluster: places on any node, runs what is placed on this one."""

    def __init__(self, client: aioredis.Redis, node: ClusterNode, max_queue: int):
        self._r = client
        self._p = node.prefix
        self.node = node
        self.max_queue = max_queue
        self._admit = client.register_script(_ADMIT)
        self._facts = client.register_script(_FACTS)
        self._release = client.register_script(_RELEASE)
        self._pump = client.register_script(_PUMP)
        self._requeue = client.register_script(_REQUEUE)
        self._withdraw = client.register_script(_WITHDRAW)
        self._hold_here = client.register_script(_HOLD_HERE)

    @property
    def capacity(self) -> Need:
        return self.node.capacity

    async def free(self) -> Need:
        held, mem_held = await self._r.hmget(f"{self._p}node:{self.node.id}", ["held", "mem_held"])
        return self.node.capacity - Need(float(held or 0), float(mem_held or 0))

    async def _cluster_facts(self, cost: Need) -> tuple[Need, Need, bool, int]:
        """(the most any live node has, what the freest has free, whether `cost` fits a node now, queued)."""
        big_cores, big_mem, free_cores, free_mem, fits, queued = await self._facts(
            args=[self._p, self.node.id, cost.cores, cost.memory_mb])
        return (Need(float(big_cores), float(big_mem)), Need(float(free_cores), float(free_mem)), bool(fits),
                int(queued))

    async def check(self, cost: Need, queue: bool) -> None:
        largest, freest, fits, queued = await self._cluster_facts(cost)
        refuse_too_big(cost, largest, "no node of this cluster has more than")
        if (not queued and fits) or (queue and queued < self.max_queue):
            return
        self._full(cost, freest, queued, queue)

    @staticmethod
    def _full(cost: Need, freest: Need, queued: int, queue: bool):
        full = " and the wait queue is full" if queue else ""
        raise CapacityExceeded(
            f"no capacity for this egress in the cluster (needs {cost.lacking(freest)} on the freest node){full}",
            details={**cost.details(freest), "queued": queued})

    async def admit(self, job: Job, queue: bool) -> Placed:
        placed = await self._admit(args=[self._p, self.node.id, job.egress_id, job.cost.cores, job.cost.memory_mb,
                                         _job_json(job), int(queue), self.max_queue])
        if placed[0] is None:
            self._full(job.cost, (await self._cluster_facts(job.cost))[1], placed[1], queue)
        if placed[0] == "":
            return Placed.QUEUED
        return Placed.HERE if placed[0] == self.node.id else Placed.ELSEWHERE

    async def admit_here(self, job: Job) -> None:
        held = await self._hold_here(args=[self._p, self.node.id, job.egress_id, job.cost.cores, job.cost.memory_mb])
        if held == -1:
            raise Conflict("INGRESS_ACTIVE", f"{job.egress_id} has a session already (one at a time)")
        if held:
            return
        free = await self.free()
        raise CapacityExceeded(f"no capacity on this node (needs {job.cost.lacking(free)})",
                               details={**job.cost.details(free), "queued": await self._r.llen(f"{self._p}queue")})

    async def _jobs(self, ids: list[str]) -> list[Job]:
        raws = await self._r.mget([f"{self._p}job:{i}" for i in ids]) if ids else []
        return [_job(i, raw) for i, raw in zip(ids, raws) if raw]

    async def release(self, egress_id: str) -> list[Job]:
        return await self._jobs(await self._release(args=[self._p, self.node.id, egress_id]))

    async def pump(self) -> list[Job]:
        """Place what the queue can (capacity came or went); the jobs placed on this node."""
        return await self._jobs(await self._pump(args=[self._p, self.node.id]))

    async def requeue(self, egress_id: str) -> list[Job] | None:
        """A lost node's job that never started waits again, at the queue's head; None when its job is gone.
        Returns the jobs that placed on this node."""
        here = await self._requeue(args=[self._p, self.node.id, egress_id])
        return None if here == -1 else await self._jobs(here)

    async def withdraw(self, egress_id: str) -> bool:
        return bool(await self._withdraw(args=[self._p, egress_id]))

    async def position(self, egress_id: str) -> int | None:
        index = await self._r.lpos(f"{self._p}queue", egress_id)
        return None if index is None else index + 1

    async def drain(self) -> list[Job]:
        """The cluster's queue outlives this node: nothing of it ends with the node, which only stops taking
        placements."""
        await self.node.drain()
        return []

    async def placed(self) -> AsyncIterator[Job]:
        """Jobs placed on this node by the others, from its inbox."""
        inbox = f"{self._p}node:{self.node.id}:inbox"
        while not self.node.closing:
            try:
                popped = await self._r.blpop([inbox], timeout=BLOCK_S)
            except REDIS_DOWN as exc:
                log.warning("the inbox of node %s: Redis did not answer (%s)", self.node.id, exc)
                await asyncio.sleep(self.node.every_s)
                continue
            if popped:
                for job in await self._jobs([popped[1]]):
                    yield job


def _job(egress_id: str, raw: str) -> Job:
    data = json.loads(raw)
    return Job(egress_id, RecordRequest.model_validate(data["request"]), Need(data["cost"], data["memoryMb"]),
               tuple(data["frame"]))
