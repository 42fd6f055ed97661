"""Egress changes pushed to whoever watches (the dashboard's event stream): one follower of the store's
changes per node, fanned out to every watcher.

The store says which egress changed once the change is committed (SQLite: in this process; Redis: on a
channel every node's changes are published on, by the same script that commits them), so a watcher sees the
changes the webhooks report, from any node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from .seams import Store

log = logging.getLogger(__name__)

#: what a watcher gets instead of an id when it may have missed changes: read everything again
RESYNC = None
# A watcher this far behind (a stalled browser) is told to read everything again instead of queuing more.
WATCHER_BACKLOG = 1000
# After the store's changes could not be followed, they are followed again this much later.
FOLLOW_AGAIN_S = 1.0


class ChangeFeed:
    """Fans the store's changed egress ids out to watchers, each through its own bounded queue."""

    def __init__(self) -> None:
        self._watchers: set[asyncio.Queue[str | None]] = set()

    async def follow(self, store: Store) -> None:
        """Pass on the store's changes until cancelled (the service's own task)."""
        while True:
            try:
                async for egress_id in store.changes():
                    self.publish(egress_id)
            except Exception:  # the push must outlive a bad moment of the store's
                log.exception("following the store's changes failed; following them again")
            # Whatever changed meanwhile was missed.
            self.publish(RESYNC)
            await asyncio.sleep(FOLLOW_AGAIN_S)

    def publish(self, egress_id: str | None) -> None:
        """Tell every watcher that `egress_id` changed (RESYNC: that anything may have)."""
        for queue in self._watchers:
            if queue.full():
                # One RESYNC supersedes the whole backlog.
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(RESYNC)
            else:
                queue.put_nowait(egress_id)

    @contextlib.contextmanager
    def watch(self) -> Iterator[asyncio.Queue[str | None]]:
        """A queue of the ids of egresses that change from now on, until the block ends."""
        queue: asyncio.Queue[str | None] = asyncio.Queue(WATCHER_BACKLOG)
        self._watchers.add(queue)
        try:
            yield queue
        finally:
            self._watchers.discard(queue)


async def next_batch(queue: asyncio.Queue[str | None]) -> list[str] | None:
    """The queue's next changes: the distinct ids waiting once one is there (a burst of changes to one egress is
    read once), or RESYNC. Safe to cancel: nothing is taken until one is there."""
    ids = [await queue.get()]
    while not queue.empty():
        ids.append(queue.get_nowait())
    return RESYNC if RESYNC in ids else list(dict.fromkeys(ids))
