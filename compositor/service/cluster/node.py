"""A node's membership of the cluster: its lease, its epoch, and finding the nodes that were lost.

Each node renews a lease in Redis every few seconds (Redis's clock, so the nodes' clocks do not matter). A node
whose lease lapsed is lost: the first node to see it takes it out of the cluster in one script, raising its
epoch (which fences its writes, see store.Fence) and moving the egresses placed on it into the `lost` set,
which any node then settles (service.Service._settle_lost). A node that finds its own epoch raised was
declared lost: it stops its workers and joins again as new.

Keys, under the prefix: `nodes` (node ids by lease expiry), `node:<id>` (capacity, held, memory, mem_held, url,
draining), `node:<id>:held` / `node:<id>:held_mb` (egress id → cores / MB), `node:<id>:inbox`, `epoch:<id>`,
`owner` (egress id → node id), `urls` (node id → advertised URL, kept after the node leaves), `lost` (egress ids
to settle).
"""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as aioredis

from ..seams import Need
from ..settings import ClusterSettings
from .store import REDIS_DOWN, Fence

log = logging.getLogger(__name__)

#: a blocking read (a node's inbox, its control list) waits at most this: under the client's socket timeout
BLOCK_S = 4.0

_NOW = """
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# ARGV: prefix, node id, cores, url, lease, memory MB. Returns the new epoch.
_JOIN = _NOW + """
local p, n = ARGV[1], ARGV[2]
local epoch = redis.call('INCR', p..'epoch:'..n)
-- What a previous life of this node held is lost with it.
for _, id in ipairs(redis.call('HKEYS', p..'node:'..n..':held')) do redis.call('SADD', p..'lost', id) end
for _, id in ipairs(redis.call('LRANGE', p..'node:'..n..':inbox', 0, -1)) do redis.call('SADD', p..'lost', id) end
redis.call('DEL', p..'node:'..n..':held', p..'node:'..n..':held_mb', p..'node:'..n..':inbox')
redis.call('HSET', p..'node:'..n, 'capacity', ARGV[3], 'held', 0, 'memory', ARGV[6], 'mem_held', 0, 'url', ARGV[4],
           'draining', 0, 'epoch', epoch)
redis.call('HSET', p..'urls', n, ARGV[4])
redis.call('ZADD', p..'nodes', now() + tonumber(ARGV[5]), n)
return epoch
"""

# ARGV: prefix, node id, epoch, lease. 1: renewed; 0: this node was declared lost.
_RENEW = _NOW + """
local p, n = ARGV[1], ARGV[2]
if redis.call('GET', p..'epoch:'..n) ~= ARGV[3] or not redis.call('ZSCORE', p..'nodes', n) then return 0 end
redis.call('ZADD', p..'nodes', now() + tonumber(ARGV[4]), n)
return 1
"""

# ARGV: prefix. Takes every node whose lease lapsed out of the cluster; returns their ids.
_CLAIM_LOST = _NOW + """
local p = ARGV[1]
local lost = redis.call('ZRANGEBYSCORE', p..'nodes', '-inf', now())
for _, n in ipairs(lost) do
  redis.call('ZREM', p..'nodes', n)
  redis.call('INCR', p..'epoch:'..n)
  for _, id in ipairs(redis.call('HKEYS', p..'node:'..n..':held')) do redis.call('SADD', p..'lost', id) end
  for _, id in ipairs(redis.call('LRANGE', p..'node:'..n..':inbox', 0, -1)) do redis.call('SADD', p..'lost', id) end
  redis.call('DEL', p..'node:'..n, p..'node:'..n..':held', p..'node:'..n..':held_mb', p..'node:'..n..':inbox')
end
return lost
"""

# ARGV: prefix, node id, ms. 1 while this node is the cluster's sweeper (the first to ask, until it stops asking).
_SWEEPER = """
local key = ARGV[1]..'sweeper'
if redis.call('SET', key, ARGV[2], 'NX', 'PX', ARGV[3]) or redis.call('GET', key) == ARGV[2] then
  redis.call('PEXPIRE', key, ARGV[3])
  return 1
end
return 0
"""

# ARGV: prefix, node id, epoch. A node leaves (after a drain): nothing of it stays to be settled.
_LEAVE = """
local p, n = ARGV[1], ARGV[2]
if redis.call('GET', p..'epoch:'..n) ~= ARGV[3] then return 0 end
redis.call('ZREM', p..'nodes', n)
redis.call('DEL', p..'node:'..n)
redis.call('INCR', p..'epoch:'..n)
return 1
"""


class ClusterNode:
    """This node's lease and epoch; `ready` while it holds its lease."""

    def __init__(self, client: aioredis.Redis, settings: ClusterSettings, capacity: Need,
                 prefix: str = "compositor:"):
        self.id = settings.node_id
        self.url = settings.advertise_url.rstrip("/")
        self.lease_s = settings.lease_s
        self.capacity = capacity
        self.prefix = prefix
        self._r = client
        self._join = client.register_script(_JOIN)
        self._renew = client.register_script(_RENEW)
        self._claim_lost = client.register_script(_CLAIM_LOST)
        self._leave = client.register_script(_LEAVE)
        self._sweeper = client.register_script(_SWEEPER)
        #: the writes of this node go through only while it holds this epoch
        self.fence = Fence(f"{prefix}epoch:{self.id}", "")
        self._renewed_at = 0.0
        self.joined = False
        #: set when the service shuts down: the node's loops end at their next turn
        self.closing = False

    @property
    def ready(self) -> bool:
        """Holds its lease: takes work. False once Redis has not answered for a lease, or the cluster lost it."""
        return self.joined and time.monotonic() - self._renewed_at < self.lease_s

    @property
    def every_s(self) -> float:
        """How often the lease is renewed and lost nodes looked for."""
        return self.lease_s / 5

    async def join(self) -> None:
        """Join (again) under a new epoch; what a previous life of this node held goes to the lost set."""
        epoch = await self._join(args=[self.prefix, self.id, self.capacity.cores, self.url, self.lease_s,
                                       self.capacity.memory_mb])
        self.fence = Fence(self.fence.key, str(epoch))
        self._renewed_at = time.monotonic()
        self.joined = True
        log.info("node %s joined the cluster (epoch %s, %g cores, %.0f MB)", self.id, epoch, self.capacity.cores,
                 self.capacity.memory_mb)

    async def renew(self) -> bool:
        """Renew the lease; False when the cluster declared this node lost (its epoch moved on). Raises
        REDIS_DOWN errors when Redis does not answer."""
        if not await self._renew(args=[self.prefix, self.id, self.fence.value, self.lease_s]):
            self.joined = False
            return False
        self._renewed_at = time.monotonic()
        return True

    async def is_sweeper(self) -> bool:
        """Whether this node is the one that looks for lost nodes and settles their egresses now (one node at
        a time, so 200 nodes do not all settle the same egresses; another takes over within a few turns
        when it is lost itself)."""
        return bool(await self._sweeper(args=[self.prefix, self.id, int(3 * self.every_s * 1000)]))

    async def claim_lost(self) -> list[str]:
        """Take the nodes whose lease lapsed out of the cluster (each seen by one node only); their ids."""
        return await self._claim_lost(args=[self.prefix])

    async def lost_egresses(self) -> list[str]:
        """Egresses of lost nodes still to settle."""
        return sorted(await self._r.smembers(f"{self.prefix}lost"))

    async def settled_lost(self, egress_id: str) -> None:
        await self._r.srem(f"{self.prefix}lost", egress_id)

    async def url_of(self, node_id: str) -> str | None:
        """Where a node (present or gone) said it is reached."""
        return await self._r.hget(f"{self.prefix}urls", node_id)

    async def drain(self) -> None:
        """Take no more placements (running egresses go on)."""
        await self._r.hset(f"{self.prefix}node:{self.id}", "draining", 1)

    async def leave(self) -> None:
        """Leave the cluster for good (after a drain)."""
        if self.joined:
            await self._leave(args=[self.prefix, self.id, self.fence.value])
            self.joined = False

    async def every(self, step, what: str) -> None:
        """Run `step` every `every_s` until the node closes; a failure is logged and the next turn tries again."""
        while not self.closing:
            try:
                await step()
            except REDIS_DOWN as exc:
                log.warning("%s: Redis did not answer (%s)", what, exc)
            except Exception:
                log.exception("%s failed", what)
            await asyncio.sleep(self.every_s)
