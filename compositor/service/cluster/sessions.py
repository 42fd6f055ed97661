"""`auto_egress.RoomSessions` on Redis: every node that gets a room's LiveKit webhooks (retries, several nodes
behind a load balancer) counts the same participants, and one node starts the session's egress.

Keys, under the prefix, each kept for a day after its last change: `room:<sid>:who` (participant sids),
`room:<sid>:claim` (set by the node that starts the egress), `room:<sid>:egress`, `room:<sid>:finished`.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from .store import outage_is_unavailable

# A room session's traces outlive its last event by this long.
KEEP_S = 24 * 3600


@outage_is_unavailable
class RedisSessions:
    """The room sessions of the whole cluster."""

    def __init__(self, client: aioredis.Redis, prefix: str):
        self._r = client
        self._p = prefix

    def _key(self, sid: str, what: str) -> str:
        return f"{self._p}room:{sid}:{what}"

    async def participants(self, sid: str, joined: str | None = None, left: str | None = None) -> int:
        who = self._key(sid, "who")
        pipe = self._r.pipeline(transaction=True)
        if joined:
            pipe.sadd(who, joined)
        if left:
            pipe.srem(who, left)
        pipe.expire(who, KEEP_S)
        pipe.scard(who)
        return (await pipe.execute())[-1]

    async def claim(self, sid: str) -> bool:
        return bool(await self._r.set(self._key(sid, "claim"), "1", nx=True, ex=KEEP_S))

    async def unclaim(self, sid: str) -> None:
        await self._r.delete(self._key(sid, "claim"))

    async def started(self, sid: str, egress_id: str) -> None:
        await self._r.set(self._key(sid, "egress"), egress_id, ex=KEEP_S)

    async def finish(self, sid: str) -> tuple[bool, str | None]:
        pipe = self._r.pipeline(transaction=True)
        pipe.set(self._key(sid, "finished"), "1", ex=KEEP_S)
        pipe.exists(self._key(sid, "claim"))
        pipe.get(self._key(sid, "egress"))
        pipe.delete(self._key(sid, "who"))
        _, claimed, egress_id, _ = await pipe.execute()
        return bool(claimed), egress_id

    async def finished(self, sid: str) -> bool:
        return bool(await self._r.exists(self._key(sid, "finished")))
