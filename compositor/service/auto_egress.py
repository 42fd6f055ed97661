"""Auto egress: one egress per LiveKit room that qualifies, driven by the LiveKit server's webhooks.

livekit-server posts room and participant events to POST /v1/livekit/webhook (its `webhook.urls`); the API
checks their signature and hands them to `AutoEgress.handle`. Under the stored AutoEgressConfig (PUT
/v1/egress/auto-egress) a room qualifies when auto egress is enabled, its name matches roomNamePattern, and
it has had minParticipants continuously for delaySeconds. It then gets one egress for that session of the
room (its sid: a room re-created under the same name is a new session), stopped when the room finishes.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from livekit.protocol.models import ParticipantInfo
from livekit.protocol.webhook import WebhookEvent

from ..errors import CompositorError
from ..protocol import Status
from ..request import RoomSpec
from .requests import AutoEgressConfig, StartEgressRequest, StreamSpec
from .seams import EgressRecord, Store

#: What starts an egress (the service's start) and what stops one.
Start = Callable[[StartEgressRequest], Awaitable[EgressRecord]]
Stop = Callable[[str], Awaitable[EgressRecord]]

log = logging.getLogger(__name__)

#: the setting the AutoEgressConfig is stored under
AUTO_EGRESS = "auto_egress"

STARTED, FINISHED, JOINED = "room_started", "room_finished", "participant_joined"
# A participant that never got connected leaves with participant_connection_aborted instead.
LEFT = ("participant_left", "participant_connection_aborted")


@dataclass
class RoomSession:
    """One life of a LiveKit room as this node follows it (what every node shares is in `RoomSessions`)."""

    sid: str
    name: str
    #: runs out after delaySeconds with enough participants; None when not waiting
    timer: asyncio.TimerHandle | None = None
    starting: asyncio.Task | None = None


class RoomSessions(Protocol):
    """What is known of each room session, shared by every node that gets the room's webhooks: who is in it,
    and its one auto egress."""

    async def participants(self, sid: str, joined: str | None = None, left: str | None = None) -> int:
        """Count a participant in (or out); how many count now."""
    async def claim(self, sid: str) -> bool:
        """True for the one caller that is to start the session's egress."""
    async def unclaim(self, sid: str) -> None:
        """The start failed: the session's next event may try again."""
    async def started(self, sid: str, egress_id: str) -> None: ...
    async def finish(self, sid: str) -> tuple[bool, str | None]:
        """The room finished: (whether a start was claimed, its egress id once started)."""
    async def finished(self, sid: str) -> bool: ...


@dataclass
class _Known:
    participants: set[str] = field(default_factory=set)
    claimed: bool = False
    egress_id: str | None = None


class LocalSessions:
    """`RoomSessions` of a single node, in memory."""

    def __init__(self):
        self._known: dict[str, _Known] = {}

    async def participants(self, sid: str, joined: str | None = None, left: str | None = None) -> int:
        known = self._known.setdefault(sid, _Known())
        if joined:
            known.participants.add(joined)
        if left:
            known.participants.discard(left)
        return len(known.participants)

    async def claim(self, sid: str) -> bool:
        known = self._known.setdefault(sid, _Known())
        claimed, known.claimed = known.claimed, True
        return not claimed

    async def unclaim(self, sid: str) -> None:
        self._known.setdefault(sid, _Known()).claimed = False

    async def started(self, sid: str, egress_id: str) -> None:
        self._known.setdefault(sid, _Known()).egress_id = egress_id

    async def finish(self, sid: str) -> tuple[bool, str | None]:
        known = self._known.pop(sid, _Known())
        return known.claimed, known.egress_id

    async def finished(self, sid: str) -> bool:
        return sid not in self._known


def counts(participant: ParticipantInfo) -> bool:
    """Whether a participant counts towards minParticipants: not a recorder (ours join hidden, with the
    recorder permission; LiveKit's own egress joins as kind EGRESS) nor any other hidden participant."""
    perm = participant.permission
    return not (participant.kind == ParticipantInfo.Kind.EGRESS or perm.recorder or perm.hidden)


class AutoEgress:
    """Follows the rooms of the LiveKit server from its webhooks and starts and stops their auto egresses.
    In a cluster every node may get a room's events: the sessions are shared, and one node starts each
    session's egress."""

    def __init__(self, store: Store, sessions: RoomSessions, start: Start, stop: Stop):
        self._store = store
        self._sessions = sessions
        self._start_egress = start
        self._stop_egress = stop
        self._rooms: dict[str, RoomSession] = {}
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    async def _config(self) -> AutoEgressConfig:
        # Read afresh at every event, so a PUT applies from the next one on.
        return AutoEgressConfig.model_validate(await self._store.get_setting(AUTO_EGRESS) or {})

    async def handle(self, event: WebhookEvent) -> None:
        """Apply one verified LiveKit webhook event; other events than the room's and its participants' are
        ignored. Never raises for a start or stop that fails: that is logged."""
        sid, name = event.room.sid, event.room.name
        if self._closed or not sid or event.event not in (STARTED, FINISHED, JOINED, *LEFT):
            return
        if event.event == FINISHED:
            await self._finish(self._rooms.pop(sid, None) or RoomSession(sid, name))
            return
        session = self._rooms.setdefault(sid, RoomSession(sid, name))
        who = event.participant
        if who.sid:
            log.debug("room %s (%s): %s %s (%s, kind %s, hidden %s, recorder %s)", name, sid, event.event,
                      who.identity, who.sid, ParticipantInfo.Kind.Name(who.kind), who.permission.hidden,
                      who.permission.recorder)
        count = await self._sessions.participants(
            sid, joined=who.sid if event.event == JOINED and counts(who) else None,
            left=who.sid if event.event in LEFT else None)
        await self._review(session, count)

    async def _review(self, session: RoomSession, count: int) -> None:
        """Arm the delay when the room qualifies, call it off when it no longer does."""
        if session.starting:
            return
        config = await self._config()
        room = f"{session.name} ({session.sid})"
        if not config.enabled:
            why = "auto egress is disabled"
        elif not fnmatch.fnmatchcase(session.name, config.room_name_pattern):
            why = f"the name does not match {config.room_name_pattern!r}"
        elif count < config.min_participants:
            why = f"{count} of {config.min_participants} participants"
        else:
            if session.timer is None:
                log.info("room %s: %d participants, auto egress in %gs", room, count, config.delay_seconds)
                session.timer = asyncio.get_running_loop().call_later(config.delay_seconds, self._fire, session,
                                                                      config)
            return
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None
            log.info("room %s: auto egress called off: %s", room, why)
        else:
            log.info("room %s: no auto egress: %s", room, why)

    def _fire(self, session: RoomSession, config: AutoEgressConfig) -> None:
        session.timer = None
        session.starting = asyncio.get_running_loop().create_task(self._start(session, config))
        self._tasks.add(session.starting)
        session.starting.add_done_callback(self._task_done)

    async def _start(self, session: RoomSession, config: AutoEgressConfig) -> None:
        room = f"{session.name} ({session.sid})"
        try:
            # Another node may have seen participants leave meanwhile, or started the session's egress.
            count = await self._sessions.participants(session.sid)
            if count < config.min_participants or not await self._sessions.claim(session.sid):
                return
            # Across a restart of this service the sessions are forgotten: the store still knows what runs.
            running = next((r for r in await self._store.unfinished()
                            if r.room_name == session.name and r.status != Status.ENDING), None)
            if running:
                await self._sessions.unclaim(session.sid)
                log.info("room %s: no auto egress: egress %s already records it", room, running.id)
                return
            stream = StreamSpec() if config.mode in ("stream", "both") else None
            req = StartEgressRequest(room_name=session.name, room=RoomSpec(kind="livekit"), mode=config.mode,
                                     layout=config.layout, quality=config.quality, stream=stream)
            try:
                rec = await self._start_egress(req)
            except CompositorError as err:
                # Not started: the room's next event (a join, say) tries again.
                await self._sessions.unclaim(session.sid)
                log.warning("room %s: auto egress not started: %s: %s", room, err.code, err.message)
                return
            await self._sessions.started(session.sid, rec.id)
            log.info("room %s: auto egress %s started (%s, %s, %s) after %d participants for %gs", room, rec.id,
                     config.mode, config.layout, config.quality, count, config.delay_seconds)
            if await self._sessions.finished(session.sid):
                await self._stop(session, rec.id)  # the room finished while its egress started
        finally:
            session.starting = None

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception():
            log.error("auto egress failed", exc_info=task.exception())

    async def _finish(self, session: RoomSession) -> None:
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None
        claimed, egress_id = await self._sessions.finish(session.sid)
        if egress_id:
            await self._stop(session, egress_id)
        elif not claimed and not session.starting:
            log.info("room %s (%s) finished without an auto egress", session.name, session.sid)

    async def _stop(self, session: RoomSession, egress_id: str) -> None:
        """Stop the session's egress; one that already ended (the room's end ends it too) stays as it is."""
        rec = await self._store.get(egress_id)
        if rec is None or rec.ended:
            log.info("room %s (%s) finished; auto egress %s already ended", session.name, session.sid, egress_id)
            return
        try:
            await self._stop_egress(rec.id)
        except CompositorError as err:
            log.info("room %s (%s) finished; auto egress %s: %s", session.name, session.sid, rec.id, err.message)
            return
        log.info("room %s (%s) finished; auto egress %s stopped", session.name, session.sid, rec.id)

    async def close(self) -> None:
        """Take no more events, call off the waiting starts, and wait for those under way."""
        self._closed = True
        for session in self._rooms.values():
            if session.timer is not None:
                session.timer.cancel()
        # Awaited, not cancelled: a start cut off half-way could leave a worker no one follows.
        await asyncio.gather(*self._tasks, return_exceptions=True)
