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

from ...errors import CapacityExceeded, InvalidRequest
from ...request import RecordRequest
from ...storage.config import REVEAL
from ..dispatch import EPSILON
from ..seams import Job, Placed
from .node import _NOW, BLOCK_S, ClusterNode
from .store import REDIS_DOWN, outage_is_unavailable

log = logging.getLogger(__name__)

_PICK = _NOW + """
local p, self_id = ARGV[1], ARGV[2]
-- The live node that fits `cost` and is the most loaded (this node on a tie); nil when none fits.
local function pick(cost)
  local best, best_load = nil, -1
  for _, n in ipairs(redis.call('ZRANGEBYSCORE', p..'nodes', now(), '+inf')) do
    local h = redis.call('HMGET', p..'node:'..n, 'capacity', 'held', 'draining')
    local cap, held = tonumber(h[1]), tonumber(h[2] or 0)
    if cap and h[3] ~= '1' and cap - held + %(eps)s >= cost then
      local load = held / cap
      if load > best_load + %(eps)s or (math.abs(load - best_load) <= %(eps)s and n == self_id) then
        best, best_load = n, load
      end
    end
  end
  return best
end
local function hold(n, id, cost)
  redis.call('HINCRBYFLOAT', p..'node:'..n, 'held', cost)
  redis.call('HSET', p..'node:'..n..':held', id, cost)
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
    local n = cost and pick(cost)
    if not n then break end
    redis.call('LPOP', p..'queue')
    hold(n, head, cost)
    if n == self_id then table.insert(here, head) end
  end
  return here
end
""" % {"eps": repr(EPSILON)}

# ARGV: prefix, self, egress id, cost, job JSON, queue (1/0), max queue.
# Returns {placed node or '', free on the freest node, queued count} or an error reply.
_ADMIT = _PICK + """
local id, cost = ARGV[3], tonumber(ARGV[4])
redis.call('SET', p..'job:'..id, ARGV[5])
redis.call('HSET', p..'cost', id, cost)
local qlen = redis.call('LLEN', p..'queue')
if qlen == 0 then
  local n = pick(cost)
  if n then hold(n, id, cost) return {n} end
end
if ARGV[6] == '1' and qlen < tonumber(ARGV[7]) then
  redis.call('RPUSH', p..'queue', id)
  return {''}
end
redis.call('DEL', p..'job:'..id)
redis.call('HDEL', p..'cost', id)
return {false, qlen}
"""

# ARGV: prefix, self. Fits = could a job of `cost` run now, or, with queue, wait? Returns
# {largest capacity, free on the freest live node, queued}.
_FACTS = _PICK + """
local largest, freest = 0, 0
for _, n in ipairs(redis.call('ZRANGEBYSCORE', p..'nodes', now(), '+inf')) do
  local h = redis.call('HMGET', p..'node:'..n, 'capacity', 'held', 'draining')
  local cap, held = tonumber(h[1]) or 0, tonumber(h[2]) or 0
  if h[3] ~= '1' then
    if cap > largest then largest = cap end
    if cap - held > freest then freest = cap - held end
  end
end
return {tostring(largest), tostring(freest), redis.call('LLEN', p..'queue')}
"""

# ARGV: prefix, self, egress id. Frees its cost, then places what the queue can; returns the ids placed here.
_RELEASE = _PICK + """
local id = ARGV[3]
local n = redis.call('HGET', p..'owner', id)
if n then
  local cost = redis.call('HGET', p..'node:'..n..':held', id)
  if cost and redis.call('EXISTS', p..'node:'..n) == 1 then
    redis.call('HINCRBYFLOAT', p..'node:'..n, 'held', -tonumber(cost))
  end
  redis.call('HDEL', p..'node:'..n..':held', id)
  redis.call('HDEL', p..'owner', id)
end
redis.call('LREM', p..'queue', 0, id)
redis.call('DEL', p..'job:'..id)
redis.call('HDEL', p..'cost', id)
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
return 1
"""


def _job_json(job: Job) -> str:
    return json.dumps({"request": job.request.model_dump(mode="json", exclude_none=True, context=REVEAL),
                       "cost": job.cost, "frame": list(job.frame)})


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

    @property
    def capacity(self) -> float:
        return self.node.capacity

    async def free(self) -> float:
        held = await self._r.hget(f"{self._p}node:{self.node.id}", "held")
        return self.node.capacity - float(held or 0)

    async def check(self, cost: float, queue: bool) -> None:
        largest, freest, queued = await self._facts(args=[self._p, self.node.id])
        largest, freest = float(largest), float(freest)
        if cost > largest + EPSILON:
            raise InvalidRequest(f"this egress needs {cost} cores and no node of this cluster has more than "
                                 f"{largest:g}: ask for a smaller frame", details={"field": "quality", "needed": cost})
        if (not queued and cost <= freest + EPSILON) or (queue and queued < self.max_queue):
            return
        self._full(cost, freest, queued, queue)

    @staticmethod
    def _full(cost: float, freest: float, queued: int, queue: bool):
        full = " and the wait queue is full" if queue else ""
        raise CapacityExceeded(
            f"no capacity for this egress in the cluster (needs {cost} cores, {max(freest, 0):.2f} free on the "
            f"freest node){full}", details={"needed": cost, "free": round(max(freest, 0), 3), "queued": queued})

    async def admit(self, job: Job, queue: bool) -> Placed:
        placed = await self._admit(args=[self._p, self.node.id, job.egress_id, job.cost, _job_json(job),
                                         int(queue), self.max_queue])
        if placed[0] is None:
            self._full(job.cost, float((await self._facts(args=[self._p, self.node.id]))[1]), placed[1], queue)
        if placed[0] == "":
            return Placed.QUEUED
        return Placed.HERE if placed[0] == self.node.id else Placed.ELSEWHERE

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
    return Job(egress_id, RecordRequest.model_validate(data["request"]), data["cost"], tuple(data["frame"]))
