"""`seams.Control` across the cluster: a call for an egress (or an ingress session) reaches the node that runs it.

The caller's node pushes the call to the owner's control list and waits for the answer on a reply key of
its own; the owner serves its list with its own workers. A call for an egress this node runs goes straight
to its workers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from ...errors import CompositorError, Conflict, refusal
from ...protocol import COMMAND, Command, CommandReply
from ..seams import Control
from .node import BLOCK_S, ClusterNode
from .store import REDIS_DOWN, outage_is_unavailable

log = logging.getLogger(__name__)

# The owner answers within this (a worker answers a command within workers.COMMAND_TIMEOUT_S).
REPLY_TIMEOUT_S = 25.0
# An answer nobody waited for is dropped after this.
REPLY_KEEP_S = 60


@outage_is_unavailable
class RedisControl:
    """Calls to the egresses of the whole cluster, from this node; `serve()` answers those for its own."""

    def __init__(self, client: aioredis.Redis, node: ClusterNode, local: Control):
        self._r = client
        self._p = node.prefix
        self.node = node
        self.local = local

    async def _owner(self, egress_id: str) -> str | None:
        return await self._r.hget(f"{self._p}owner", egress_id)

    async def stop(self, egress_id: str) -> bool:
        owner = await self._owner(egress_id)
        if owner in (None, self.node.id):
            return await self.local.stop(egress_id)
        return (await self._call(owner, {"op": "stop", "egress_id": egress_id}))["stopped"]

    async def command(self, egress_id: str, command: Command) -> CommandReply:
        owner = await self._owner(egress_id)
        if owner in (None, self.node.id):
            return await self.local.command(egress_id, command)
        answer = await self._call(owner, {"op": "command", "egress_id": egress_id,
                                          "command": json.loads(command.wire())})
        return CommandReply.model_validate(answer["reply"])

    async def stop_ingress(self, node_id: str, ingress_id: str) -> bool:
        """Ask node `node_id` to stop its session of an ingress (it runs where its publisher connected)."""
        return (await self._call(node_id, {"op": "stop_ingress", "egress_id": ingress_id}))["stopped"]

    async def _call(self, owner: str, call: dict) -> dict:
        reply_to = f"{self._p}reply:{secrets.token_hex(8)}"
        await self._r.rpush(f"{self._p}node:{owner}:control", json.dumps({**call, "reply_to": reply_to}))
        popped = await self._r.blpop([reply_to], timeout=REPLY_TIMEOUT_S)
        if popped is None:
            raise Conflict("EGRESS_NOT_ACTIVE", f"egress {call['egress_id']}: its node {owner} did not answer")
        answer = json.loads(popped[1])
        if "error" in answer:
            raise refusal(answer["error"]["code"], answer["error"]["message"], answer["error"].get("details"))
        return answer

    async def serve(self, stop_ingress: Callable[[str], Awaitable[bool]] | None = None) -> None:
        """Answer the calls other nodes send for this node's egresses (and, with `stop_ingress`, its ingress
        sessions), until cancelled."""
        inbox = f"{self._p}node:{self.node.id}:control"
        while not self.node.closing:
            try:
                popped = await self._r.blpop([inbox], timeout=BLOCK_S)
                if popped:
                    call = json.loads(popped[1])
                    answer = await self._answer(call, stop_ingress)
                    await self._r.rpush(call["reply_to"], json.dumps(answer))
                    await self._r.expire(call["reply_to"], REPLY_KEEP_S)
            except REDIS_DOWN as exc:
                log.warning("the control list of node %s: Redis did not answer (%s)", self.node.id, exc)
                await asyncio.sleep(self.node.every_s)

    async def _answer(self, call: dict, stop_ingress: Callable[[str], Awaitable[bool]] | None) -> dict:
        try:
            if call["op"] == "stop_ingress":
                return {"stopped": bool(stop_ingress) and await stop_ingress(call["egress_id"])}
            if call["op"] == "stop":
                return {"stopped": await self.local.stop(call["egress_id"])}
            reply = await self.local.command(call["egress_id"], COMMAND.validate_python(call["command"]))
            return {"reply": json.loads(reply.wire())}
        except CompositorError as err:
            return {"error": {"code": err.code, "message": err.message, "details": err.details}}
