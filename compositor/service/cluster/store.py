"""`seams.Store` on Redis: the egresses, ingresses, settings and webhook outbox every node of a cluster shares.

Each change is one Lua script, so it is atomic: a compare-and-set of the egress's or ingress's record (read,
changed in Python, written back only if nobody wrote it meanwhile, else read again), its indexes, and the webhook
events the change causes. A node's writes carry its fence (its epoch): once the cluster has declared the node
lost, they are refused.

Keys, under the prefix: `eg:<id>` (the record, JSON), `eg:all` / `eg:status:<s>` / `eg:room:<r>` /
`eg:mode:<m>` (sorted sets by creation time), `eg:unfinished` (a set), `in:<id>` (an ingress's record, JSON),
`in:all` / `in:room:<r>` (sorted sets by creation time), `in:key:<stream key>` (the id of the ingress a non-empty
stream key names: one each), `setting:<key>`, `seen:<id>`, the channel `eg:changed` (each changed egress's id,
published by the change's own script), and the outbox: `ob:seq`, `ob:e:<seq>` (one event, a hash),
`ob:q:<owner>|<url>` (a receiver's pending events of one egress or ingress, in order), `ob:due` (each such queue
by when its head is due), `ob:backlog`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...errors import Unavailable
from ...protocol import Status
from ..seams import (
    EgressRecord,
    EventsOf,
    IngressEventsOf,
    IngressRecord,
    OutboxEvent,
    ingress_from_json,
    ingress_to_json,
)

#: what Redis raises when it does not answer
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
MODES = ("record", "stream", "both")
_FIELDS = {f.name for f in dataclasses.fields(EgressRecord)}
# At most this many receivers' events are claimed at once.
CLAIM_BATCH = 100
# How long closing a change subscription may take.
SOCKET_CLOSE_S = 2.0

# Appends the webhook events a change causes to the outbox, within the change's own script (so both commit or
# neither). ARGV[1] is the prefix; the events are `count` groups of 6 ARGV from `first`: id, url, format, body,
# created_at, untrusted. Their owner (an egress's or an ingress's id, kept as the event's egress_id) orders them:
# one queue per owner and receiver.
_QUEUE_EVENTS = """
local function queue_events(owner, first, count)
  local p = ARGV[1]
  for i = first, first - 1 + 6 * count, 6 do
    local seq = redis.call('INCR', p..'ob:seq')
    local q = p..'ob:q:'..owner..'|'..ARGV[i+1]
    redis.call('HSET', p..'ob:e:'..seq, 'id', ARGV[i], 'egress_id', owner, 'url', ARGV[i+1], 'format', ARGV[i+2],
               'body', ARGV[i+3], 'created_at', ARGV[i+4], 'next_at', ARGV[i+4], 'attempts', 0, 'q', q,
               'untrusted', ARGV[i+5])
    redis.call('RPUSH', q, seq)
    if redis.call('LLEN', q) == 1 then redis.call('ZADD', p..'ob:due', ARGV[i+4], q) end
    redis.call('INCR', p..'ob:backlog')
  end
end
"""

# The start of a change of one record (KEYS[1]), shared by every kind. ARGV: prefix, id, the record as read (''
# when absent), as written ('' to delete), fence key ('' when unfenced), fence value, event count, then the events
# (see _QUEUE_EVENTS). Refused (FENCED) unless the fence holds; returns 0 when the record is no longer as read.
_CHANGE = _QUEUE_EVENTS + """
local p, id = ARGV[1], ARGV[2]
if ARGV[5] ~= '' and redis.call('GET', ARGV[5]) ~= ARGV[6] then return redis.error_reply('FENCED') end
local cur = redis.call('GET', KEYS[1])
if (cur or '') ~= ARGV[3] then return 0 end
"""

_PUT = _CHANGE + """
local function index(raw, add)
  if raw == nil or raw == false or raw == '' then return end
  local r = cjson.decode(raw)
  for _, k in ipairs({p..'eg:all', p..'eg:status:'..r.status, p..'eg:room:'..r.room_name, p..'eg:mode:'..r.mode}) do
    if add then redis.call('ZADD', k, r.created_at, id) else redis.call('ZREM', k, id) end
  end
  if add and (r.status == 'STARTING' or r.status == 'ACTIVE' or r.status == 'ENDING') then
    redis.call('SADD', p..'eg:unfinished', id)
  elseif not add then
    redis.call('SREM', p..'eg:unfinished', id)
  end
end
index(cur, false)
if ARGV[4] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[4])
  index(ARGV[4], true)
end
queue_events(id, 8, tonumber(ARGV[7]))
redis.call('PUBLISH', p..'eg:changed', id)
return 1
"""

# An ingress's change; -1 (and nothing written) when another ingress has its stream key.
_PUT_INGRESS = _CHANGE + """
local old = cur and cjson.decode(cur) or nil
local new = ARGV[4] ~= '' and cjson.decode(ARGV[4]) or nil
if new and new.stream_key ~= '' then
  local holder = redis.call('GET', p..'in:key:'..new.stream_key)
  if holder and holder ~= id then return -1 end
end
local function index(r, add)
  if not r then return end
  for _, k in ipairs({p..'in:all', p..'in:room:'..r.room_name}) do
    if add then redis.call('ZADD', k, r.created_at, id) else redis.call('ZREM', k, id) end
  end
  if r.stream_key ~= '' then
    if add then redis.call('SET', p..'in:key:'..r.stream_key, id) else redis.call('DEL', p..'in:key:'..r.stream_key) end
  end
end
index(old, false)
if new then
  redis.call('SET', KEYS[1], ARGV[4])
  index(new, true)
else
  redis.call('DEL', KEYS[1])
end
queue_events(id, 8, tonumber(ARGV[7]))
return 1
"""

# ARGV: prefix. The records of the ingresses in the sorted set KEYS[1], read at one instant.
_LIST_INGRESS = """
local recs = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  table.insert(recs, redis.call('GET', ARGV[1]..'in:'..id))
end
return recs
"""

_CLAIM = """
local p, now, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for _, q in ipairs(redis.call('ZRANGEBYSCORE', p..'ob:due', '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))) do
  local seq = redis.call('LINDEX', q, 0)
  redis.call('ZADD', p..'ob:due', now + lease, q)
  redis.call('HSET', p..'ob:e:'..seq, 'next_at', now + lease)
  local e = redis.call('HMGET', p..'ob:e:'..seq, 'id', 'egress_id', 'url', 'format', 'body', 'attempts',
                       'created_at', 'untrusted')
  table.insert(e, seq)
  table.insert(out, e)
end
return out
"""

# ARGV: prefix, seq, done (1: delivered or given up; 0: retry), attempts, next_at, error
_SETTLE_EVENT = """
local p, seq = ARGV[1], ARGV[2]
local e = p..'ob:e:'..seq
local q = redis.call('HGET', e, 'q')
if not q or redis.call('LINDEX', q, 0) ~= seq then return 0 end
if ARGV[3] == '0' then
  redis.call('HSET', e, 'attempts', ARGV[4], 'next_at', ARGV[5], 'last_error', ARGV[6])
  redis.call('ZADD', p..'ob:due', ARGV[5], q)
  return 1
end
redis.call('LPOP', q)
redis.call('DEL', e)
redis.call('DECR', p..'ob:backlog')
local head = redis.call('LINDEX', q, 0)
if head then
  redis.call('ZADD', p..'ob:due', redis.call('HGET', p..'ob:e:'..head, 'next_at'), q)
else
  redis.call('ZREM', p..'ob:due', q)
end
return 1
"""

_LIST = """
local p, order, n, m = ARGV[1], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local inter = {}
for i = 1, n do table.insert(inter, ARGV[6 + i]) end
if m > 0 then
  -- any of the modes: their union, then intersected with the other filters
  local union = {'ZUNIONSTORE', KEYS[2], m}
  for i = 1, m do table.insert(union, ARGV[6 + n + i]) end
  redis.call(unpack(union))
  table.insert(inter, KEYS[2])
end
local src = inter[1]
if #inter > 1 then
  local args = {'ZINTERSTORE', KEYS[1], #inter}
  for _, k in ipairs(inter) do table.insert(args, k) end
  table.insert(args, 'AGGREGATE')
  table.insert(args, 'MAX')
  redis.call(unpack(args))
  src = KEYS[1]
end
local total = redis.call('ZCARD', src)
local ids = redis.call(order, src, tonumber(ARGV[2]), tonumber(ARGV[3]))
redis.call('DEL', KEYS[1], KEYS[2])
local recs = {}
for _, id in ipairs(ids) do table.insert(recs, redis.call('GET', p..'eg:'..id)) end
return {total, recs}
"""


def outage_is_unavailable(cls: type) -> type:
    """Class decorator: a public coroutine method of `cls` raises Unavailable (503, with Retry-After) when Redis
    does not answer, as the API's callers should see it."""
    def guarded(method):
        @functools.wraps(method)
        async def call(*args, **kwargs):
            try:
                return await method(*args, **kwargs)
            except REDIS_DOWN as exc:
                raise Unavailable(f"the cluster's Redis does not answer ({exc})") from None
        return call

    for name, value in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(value):
            setattr(cls, name, guarded(value))
    return cls


class Fenced(Unavailable):
    """This node was declared lost: what it writes is refused until it joins again."""

    code = "NODE_FENCED"


@dataclass(frozen=True)
class Fence:
    """A node's writes go through only while `key` holds `value` (its epoch)."""

    key: str
    value: str


def _encode(rec: EgressRecord) -> str:
    return json.dumps(dataclasses.asdict(rec), separators=(",", ":"))


def _decode(raw: str) -> EgressRecord:
    values = {k: v for k, v in json.loads(raw).items() if k in _FIELDS}
    return EgressRecord(**values | {"status": Status(values["status"])})


@outage_is_unavailable
class RedisStore:
    """`seams.Store` on one Redis (the cluster's). `fence`: the node's epoch its writes need, as it is now."""

    def __init__(self, client: aioredis.Redis, prefix: str = "compositor:",
                 fence: Callable[[], Fence] | None = None):
        self._r = client
        self._p = prefix
        self.fence = fence
        self._put_script = client.register_script(_PUT)
        self._put_ingress_script = client.register_script(_PUT_INGRESS)
        self._list_ingress = client.register_script(_LIST_INGRESS)
        self._claim = client.register_script(_CLAIM)
        self._settle_event = client.register_script(_SETTLE_EVENT)
        self._list = client.register_script(_LIST)

    async def _change(self, script: AsyncScript, key: str, owner_id: str, expected: str, new: str,
                      events: list[OutboxEvent]) -> int:
        """Run a change's script (see _CHANGE) under this node's fence; what the script returns."""
        fence = self.fence() if self.fence else Fence("", "")
        args = [self._p, owner_id, expected, new, fence.key, fence.value, len(events)]
        for e in events:
            args += [e.event_id, e.url, e.format, e.body, repr(e.created_at), int(e.untrusted)]
        try:
            return int(await script(keys=[key], args=args))
        except ResponseError as exc:
            if "FENCED" in str(exc):
                raise Fenced("this node was declared lost by the cluster; it takes no work until it joins "
                             "again") from None
            raise

    async def _put(self, egress_id: str, expected: str, new: str, events: list[OutboxEvent] = ()) -> bool:
        return bool(await self._change(self._put_script, f"{self._p}eg:{egress_id}", egress_id, expected, new,
                                       events))

    async def _put_ingress(self, ingress_id: str, expected: str, new: str, events: list[OutboxEvent] = ()) -> bool:
        done = await self._change(self._put_ingress_script, f"{self._p}in:{ingress_id}", ingress_id, expected, new,
                                  events)
        if done < 0:
            # The key itself is the publisher's secret: never said.
            raise ValueError(f"another ingress has the stream key of ingress {ingress_id}")
        return bool(done)

    async def create(self, rec: EgressRecord) -> None:
        if not await self._put(rec.id, "", _encode(rec)):
            raise ValueError(f"egress {rec.id} exists already")

    async def get(self, egress_id: str) -> EgressRecord | None:
        raw = await self._r.get(f"{self._p}eg:{egress_id}")
        return _decode(raw) if raw else None

    async def update(self, egress_id: str, *, events: EventsOf | None = None, **fields) -> EgressRecord:
        while True:
            raw = await self._r.get(f"{self._p}eg:{egress_id}")
            assert raw, egress_id
            before = _decode(raw)
            if before.ended and "status" in fields:
                return before  # settled for good: a late report changes nothing
            after = dataclasses.replace(before, **fields, updated_at=time.time())
            if await self._put(egress_id, raw, _encode(after), events(before, after) if events else []):
                return after
            # Written by another node meanwhile: read it again and redo the change on what it is now.

    async def delete(self, egress_id: str) -> None:
        while raw := await self._r.get(f"{self._p}eg:{egress_id}"):
            if await self._put(egress_id, raw, ""):
                return

    async def create_ingress(self, rec: IngressRecord) -> None:
        """Store a new ingress; ValueError when its id exists or another ingress has its stream key."""
        if not await self._put_ingress(rec.id, "", ingress_to_json(rec)):
            raise ValueError(f"ingress {rec.id} exists already")

    async def get_ingress(self, ingress_id: str) -> IngressRecord | None:
        """The ingress of that id, if any."""
        raw = await self._r.get(f"{self._p}in:{ingress_id}")
        return ingress_from_json(raw) if raw else None

    async def ingress_of_key(self, stream_key: str) -> IngressRecord | None:
        """The ingress a publisher's stream key names; None for an unknown (or empty) key."""
        if not stream_key:
            return None
        ingress_id = await self._r.get(f"{self._p}in:key:{stream_key}")
        return await self.get_ingress(ingress_id) if ingress_id else None

    async def update_ingress(self, ingress_id: str, *, events: IngressEventsOf | None = None,
                             **fields) -> IngressRecord:
        """Change an ingress; with `events`, the webhook events the change causes go into the outbox with it."""
        while True:
            raw = await self._r.get(f"{self._p}in:{ingress_id}")
            assert raw, ingress_id
            before = ingress_from_json(raw)
            after = dataclasses.replace(before, **fields, updated_at=time.time())
            if await self._put_ingress(ingress_id, raw, ingress_to_json(after),
                                       events(before, after) if events else []):
                return after
            # Written by another node meanwhile: read it again and redo the change on what it is now.

    async def list_ingress(self, *, room_name: str | None = None) -> list[IngressRecord]:
        """Every ingress (of a room), newest first."""
        index = f"{self._p}in:room:{room_name}" if room_name else f"{self._p}in:all"
        recs = [ingress_from_json(r) for r in await self._list_ingress(keys=[index], args=[self._p])]
        # Ties (the same creation time) by id, as SQLite orders them.
        return sorted(recs, key=lambda r: (-r.created_at, r.id))

    async def delete_ingress(self, ingress_id: str) -> None:
        """Forget an ingress (and its stream key); nothing when there is none."""
        while raw := await self._r.get(f"{self._p}in:{ingress_id}"):
            if await self._put_ingress(ingress_id, raw, ""):
                return

    async def changes(self) -> AsyncIterator[str | None]:
        """The id of each egress any node changes, from the channel the change's script publishes on; None after
        each (re)subscription, since what changed while unsubscribed was missed."""
        while True:
            pubsub = self._r.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(f"{self._p}eg:changed")
                yield None
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message:
                        yield message["data"]
                    elif asyncio.current_task().cancelling():
                        # Python 3.11's timeout swallows a cancel that comes as it fires (the read then just
                        # times out): honoured here, or the service's shutdown waits on this loop for good.
                        raise asyncio.CancelledError
            except REDIS_DOWN:
                await asyncio.sleep(1.0)  # Redis is away: subscribe again once it answers
            finally:
                # Bounded: closing a subscription whose read was just cancelled can wait on that read's
                # connection for good (seen as a service shutdown that never ended).
                with contextlib.suppress(*REDIS_DOWN, TimeoutError):
                    await asyncio.wait_for(pubsub.aclose(), SOCKET_CLOSE_S)

    async def list(self, *, room_name: str | None = None, status: str | None = None, modes: tuple[str, ...] = (),
                   page: int = 1, limit: int = 20, oldest_first: bool = False) -> tuple[list[EgressRecord], int]:
        keys = [f"{self._p}eg:all"]
        keys += [f"{self._p}eg:room:{room_name}"] if room_name else []
        keys += [f"{self._p}eg:status:{status}"] if status else []
        start = (page - 1) * limit
        scratch = f"{self._p}tmp:list:{time.monotonic_ns()}"
        total, raws = await self._list(keys=[scratch, scratch + ":modes"], args=[
            self._p, start, start + limit - 1, "ZRANGE" if oldest_first else "ZREVRANGE", len(keys), len(modes),
            *keys, *(f"{self._p}eg:mode:{m}" for m in modes)])
        return [_decode(r) for r in raws if r], int(total)

    async def unfinished(self) -> list[EgressRecord]:
        ids = await self._r.smembers(f"{self._p}eg:unfinished")
        raws = await self._r.mget([f"{self._p}eg:{i}" for i in ids]) if ids else []
        return [_decode(r) for r in raws if r]

    async def get_setting(self, key: str) -> dict | None:
        raw = await self._r.get(f"{self._p}setting:{key}")
        return json.loads(raw) if raw else None

    async def put_setting(self, key: str, value: dict) -> None:
        await self._r.set(f"{self._p}setting:{key}", json.dumps(value))

    async def counts(self) -> list[tuple[str, str, int]]:
        pipe = self._r.pipeline(transaction=False)
        pairs = [(s.value, m) for s in Status for m in MODES]
        for s, m in pairs:
            pipe.zintercard(2, [f"{self._p}eg:status:{s}", f"{self._p}eg:mode:{m}"])
        return [(s, m, n) for (s, m), n in zip(pairs, await pipe.execute()) if n]

    async def first_sighting(self, event_id: str, keep_s: float) -> bool:
        return bool(await self._r.set(f"{self._p}seen:{event_id}", "1", nx=True, px=max(1, int(keep_s * 1000))))

    async def claim_events(self, now: float, lease_s: float) -> list[OutboxEvent]:
        rows = await self._claim(args=[self._p, repr(now), repr(lease_s), CLAIM_BATCH])
        return [OutboxEvent(event_id, egress_id, url, fmt, body, int(attempts), float(created), int(seq),
                            untrusted=untrusted == "1")
                for event_id, egress_id, url, fmt, body, attempts, created, untrusted, seq in rows]

    async def next_event_at(self) -> float | None:
        head = await self._r.zrange(f"{self._p}ob:due", 0, 0, withscores=True)
        return head[0][1] if head else None

    async def event_delivered(self, seq: int, attempts: int) -> None:
        await self._settle_event(args=[self._p, seq, 1, attempts, 0, ""])

    async def event_retry(self, seq: int, attempts: int, next_at: float, error: str) -> None:
        await self._settle_event(args=[self._p, seq, 0, attempts, repr(next_at), error])

    async def event_given_up(self, seq: int, attempts: int, error: str) -> None:
        await self._settle_event(args=[self._p, seq, 1, attempts, 0, error])

    async def event_backlog(self) -> int:
        return int(await self._r.get(f"{self._p}ob:backlog") or 0)

    async def close(self) -> None:
        await self._r.aclose()
