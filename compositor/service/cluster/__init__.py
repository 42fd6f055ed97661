"""The service's seams on Redis, for nodes that share one cluster: the store and its outbox, placement across
nodes, calls that reach an egress's owner, each node's lease, and the room sessions auto egress follows."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from ..seams import Control, Need
from ..settings import ClusterSettings
from .control import RedisControl
from .dispatch import RedisDispatcher
from .node import ClusterNode
from .sessions import RedisSessions
from .store import RedisStore

#: every key of a cluster starts with this
PREFIX = "compositor:"
# Redis answers within this, or counts as away (a blocking read waits less: node.BLOCK_S).
SOCKET_TIMEOUT_S = 5.0


@dataclass
class Cluster:
    """One node's view of its cluster: its membership, the shared store, the cluster-wide dispatcher and the
    calls that reach any egress's node, all on one Redis client."""

    node: ClusterNode
    store: RedisStore
    dispatcher: RedisDispatcher
    control: RedisControl
    sessions: RedisSessions

    @classmethod
    def connect(cls, settings: ClusterSettings, capacity: Need, max_queue: int, local: Control,
                prefix: str = PREFIX) -> Cluster:
        """The cluster at settings.redis_url (connections open on first use); calls for this node's egresses go
        to `local`."""
        client = aioredis.from_url(settings.redis_url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT_S,
                                   socket_connect_timeout=SOCKET_TIMEOUT_S)
        node = ClusterNode(client, settings, capacity, prefix)
        return cls(node, RedisStore(client, prefix, fence=lambda: node.fence),
                   RedisDispatcher(client, node, max_queue), RedisControl(client, node, local),
                   RedisSessions(client, prefix))
