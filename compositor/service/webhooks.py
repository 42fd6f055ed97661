"""Webhooks: composed with the change that causes them (the store commits both at once), signed, retried
with backoff, in order per egress.

Delivery runs in the service's own task, apart from the workers, so a slow or
dead receiver never slows a recording.

Each POST carries `X-Compositor-Event-Id` (for de-duplication) and
`X-Compositor-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
In LiveKit's format (`egress_started|updated|ended`) they carry LiveKit's
own signature instead (see livekit_info).

Besides the server's receivers, an egress request may name its own (LiveKit's
`webhooks`): they get that egress's events only, filtered by name, through the
same outbox. A request is untrusted, so they are reached under the outbound
policy at every delivery, redirects not followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import socket
import time
from typing import TYPE_CHECKING

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from ..destinations import redact_ws
from ..errors import InvalidRequest, Unavailable
from ..outbound import AddressRefused, OutboundPolicy
from ..protocol import IngressState, Status, StreamStatus
from . import livekit_info
from .results import iso, recording_id
from .seams import EgressRecord, EventsOf, IngressRecord, OutboxEvent, Store

if TYPE_CHECKING:
    from .requests import WebhookSpec

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Compositor-Signature"
EVENT_ID_HEADER = "X-Compositor-Event-Id"
GIVE_UP_AFTER_S = 24 * 3600
# A delivery gives up after this long.
DELIVERY_TIMEOUT_S = 10.0
# An event being sent is held this long (a delivery and then some): past it (its sender died), it is due again.
CLAIM_S = DELIVERY_TIMEOUT_S + 5.0
MAX_BACKOFF_S = 3600


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value for a body sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, tolerance_s: int = 300) -> bool:
    """Check a received signature (what a receiver does; see README)."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


def _pause_state(rec: EgressRecord) -> dict:
    """What every event of an egress that paused says of it: paused now, and its paused spans."""
    return {"paused": rec.paused,
            "pausedSpans": [{"start": iso(s["start"]), "end": iso(s.get("end"))} for s in rec.pauses or []]}


def events_for(rec: EgressRecord, previous: str | None, previous_pauses: list | None = None
               ) -> list[tuple[str, dict]]:
    """The seed's webhook events a status change (or a pause or resume) produces: (event name, data).

    A record egress reports as `recording.*`, a stream egress as `stream.*`, and one that does both, as both.
    A pause or resume is `recording.paused` / `recording.resumed` and `stream.updated`.
    """
    paused_changed = (rec.pauses or []) != (previous_pauses or [])
    if rec.status == previous and not (paused_changed and rec.status == Status.ACTIVE):
        return []
    kinds = {"record": ["recording"], "stream": ["stream"], "both": ["recording", "stream"]}[rec.mode]
    out = []
    for kind in kinds:
        base = {"egressId": rec.id, "roomName": rec.room_name, "type": rec.mode}
        if kind == "recording":
            base = {"recordingId": recording_id(rec.id), **base}
        if rec.pauses:
            base.update(_pause_state(rec))
        if rec.status == previous:
            name = ("recording.paused" if rec.paused else "recording.resumed") if kind == "recording" \
                else "stream.updated"
            extra = {"destinations": [s["url"] for s in rec.streams or []]} if kind == "stream" else {}
            out.append((name, {**base, "status": rec.status, **extra}))
        elif rec.status == Status.ACTIVE:
            extra = {"destinations": [s["url"] for s in rec.streams or []]} if kind == "stream" else {}
            out.append((f"{kind}.started", {**base, "quality": rec.quality, "layout": rec.layout, **extra}))
        elif rec.status in (Status.COMPLETE, Status.LIMIT_REACHED):
            f = rec.file or {}
            done = {"status": "COMPLETED", "durationSec": f.get("duration") or _duration(rec)}
            if rec.stopped_by:
                done.update(stoppedBy=rec.stopped_by, **({"endReason": rec.end_reason} if rec.end_reason else {}))
            if kind == "recording":
                done.update(fileUrl=f.get("location"), fileSize=f.get("size"))
                if f.get("sidecars"):
                    # Where its participants and speakers files are: {participants: url, speakers: url}.
                    done["sidecars"] = f["sidecars"]
            else:
                done["destinations"] = [{"url": s["url"], "status": s["status"]} for s in rec.streams or []]
            out.append((f"{kind}.completed", {**base, **done}))
        elif rec.status in (Status.FAILED, Status.ABORTED):
            failed = {"status": rec.status, "errorMessage": rec.error, "errorCode": rec.error_code}
            if kind == "recording" and rec.file:
                # What was recorded is kept: say where, as a completed one does.
                f = rec.file
                failed.update(fileUrl=f.get("location"), fileSize=f.get("size"),
                              durationSec=f.get("duration") or _duration(rec))
            out.append((f"{kind}.failed", {**base, **failed}))
    return out


def stream_events_for(rec: EgressRecord, dest: dict, previous: str | None) -> list[tuple[str, dict]]:
    """A live destination's change: `stream.updated`, or `stream.failed` when it failed for good."""
    if dest["status"] == previous or dest["status"] == StreamStatus.STARTING:
        return []
    data = {"egressId": rec.id, "roomName": rec.room_name, "type": rec.mode, "destination": dest["url"],
            "status": dest["status"], "retries": dest.get("retries", 0)}
    if dest.get("error_code"):
        data.update(errorMessage=dest.get("error"), errorCode=dest["error_code"])
    return [("stream.failed" if dest["status"] == StreamStatus.FAILED else "stream.updated", data)]


def ingress_events_for(rec: IngressRecord, previous: IngressState) -> list[tuple[str, dict]]:
    """Stream In events of an ingress's state change: `live.started` once its tracks are in the room,
    `live.ended` when its publisher left (or its URL ran out), `live.failed` when it failed."""
    if rec.state == previous:
        return []
    base = {"ingressId": rec.id, "roomName": rec.room_name, "participantIdentity": rec.participant_identity,
            "inputType": rec.input_type, "name": rec.name, "state": rec.state.name}
    if rec.state == IngressState.PUBLISHING:
        return [("live.started", base)]
    ended = {"durationSec": _duration(rec)}
    if rec.state in (IngressState.INACTIVE, IngressState.COMPLETE) and previous in (IngressState.BUFFERING,
                                                                                     IngressState.PUBLISHING):
        return [("live.ended", {**base, **ended})]
    if rec.state == IngressState.ERROR:
        return [("live.failed", {**base, **ended, "errorMessage": rec.error, "errorCode": rec.error_code})]
    return []


def _duration(rec: EgressRecord | IngressRecord) -> float | None:
    return round(rec.ended_at - rec.started_at, 3) if rec.ended_at and rec.started_at else None


FORMATS = ("baxcloud", "livekit")
#: An egress's event names in each format: what a request's receiver may filter on.
EGRESS_EVENTS = {
    "baxcloud": ("recording.started", "recording.paused", "recording.resumed", "recording.completed",
                 "recording.failed", "stream.started", "stream.updated", "stream.completed", "stream.failed"),
    "livekit": ("egress_started", "egress_updated", "egress_ended"),
}


def receives(receiver: dict, name: str) -> bool:
    """Whether a request's receiver takes the event `name`, by LiveKit's filter rule: a name it includes goes
    (includes win over excludes); with includes given, nothing else does; without, all but the excluded."""
    if name in receiver["include_events"]:
        return True
    return not receiver["include_events"] and name not in receiver["exclude_events"]


class PolicyResolver(AbstractResolver):
    """Names resolved under the outbound policy, so a request's receiver is connected to at the very address that
    was checked (a name cannot resolve to a public address for a check and a private one for the connection)."""

    def __init__(self, policy: OutboundPolicy):
        self.policy = policy

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        addresses = await self.policy.resolve(host, port, "webhooks.url")
        return [ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST) for a in addresses]

    async def close(self) -> None:
        pass


class Webhooks:
    """Which events a change causes (for the store's outbox), and the loop that delivers them from there."""

    def __init__(self, store: Store, urls: list[str], secret: str, retry_base_s: float = 2.0,
                 formats: tuple[str, ...] = ("baxcloud",), livekit_key: str = "", livekit_secret: str = "",
                 idle_s: float = 3600.0, policy: OutboundPolicy | None = None):
        self.store = store
        #: what a request's own receivers may be (the operator's are reached as configured)
        self.policy = policy or OutboundPolicy(trusted=False)
        #: how long the loop sleeps with nothing due: events queued by other nodes of a cluster wake no one here
        self.idle_s = idle_s
        self.urls = urls
        self.secret = secret
        self.retry_base_s = retry_base_s
        self.formats = formats
        self._livekit = (livekit_key, livekit_secret)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False

    def requested(self, specs: list[WebhookSpec]) -> list[dict]:
        """A request's own receivers, as its egress's record keeps them; InvalidRequest naming the field for one
        this server cannot sign for. (Their URLs are checked against the outbound policy by the caller, with the
        request's other URLs.)"""
        out = []
        for i, spec in enumerate(specs):
            if spec.format == "livekit" and not all(self._livekit):
                raise InvalidRequest(f"webhooks.{i}.format: LiveKit's format is signed with an API key, and this "
                                     "server has none (livekit_api_key)", details={"field": f"webhooks.{i}.format"})
            if spec.signing_key and (spec.format != "livekit" or spec.signing_key != self._livekit[0]):
                # As in LiveKit, signing_key names an API key whose secret the server holds; it is not repeated
                # here, in case a caller put a secret there.
                raise InvalidRequest(f"webhooks.{i}.signingKey: not an API key of this server (LiveKit's format "
                                     "is signed with its livekit_api_key, ours with its webhook_secret)",
                                     details={"field": f"webhooks.{i}.signingKey"})
            out.append({"url": spec.url, "format": spec.format, "include_events": spec.include_events,
                        "exclude_events": spec.exclude_events})
        return out

    def for_change(self, before: EgressRecord, after: EgressRecord) -> list[OutboxEvent]:
        """The events of an egress's status change, for the server's receivers and its request's own."""
        return (self._baxcloud(after.id, events_for(after, before.status, before.pauses), after.webhooks)
                + self._livekit_events(after, livekit_info.events_for(after, before.status, before.upload,
                                                                      before.pauses)))

    def for_ingress(self, before: IngressRecord, after: IngressRecord) -> list[OutboxEvent]:
        """The events of an ingress's state change."""
        out = self._baxcloud(after.id, ingress_events_for(after, before.state))
        for name in livekit_info.ingress_events_for(after, before.state):
            if receivers := self._receivers("livekit", name, None):
                event_id = "EV_" + secrets.token_hex(8)
                out += self._to_each(event_id, after.id, "livekit", livekit_info.ingress_webhook_event(
                    after, name, event_id), time.time(), receivers)
        return out

    def for_stream(self, index: int) -> EventsOf:
        """The events of a change of the `index`-th live destination (in order with the egress's own)."""
        def of_change(before: EgressRecord, after: EgressRecord) -> list[OutboxEvent]:
            was = before.streams or []
            named = stream_events_for(after, after.streams[index], was[index]["status"] if index < len(was) else None)
            return (self._baxcloud(after.id, named, after.webhooks)
                    + self._livekit_events(after, ["egress_updated"] if named and not after.ended else []))
        return of_change

    def _receivers(self, fmt: str, name: str, requested: list[dict] | None) -> list[tuple[str, bool]]:
        """(URL, untrusted) of each receiver of the event `name` in format `fmt`: the server's, then the request's
        own that take it."""
        ours = [(url, False) for url in self.urls] if fmt in self.formats else []
        return ours + [(r["url"], True) for r in requested or () if r["format"] == fmt and receives(r, name)]

    def _baxcloud(self, owner_id: str, events: list[tuple[str, dict]], requested: list[dict] | None = None
                  ) -> list[OutboxEvent]:
        now = time.time()
        out = []
        for name, data in events:
            if receivers := self._receivers("baxcloud", name, requested):
                event_id = "evt_" + secrets.token_hex(8)
                out += self._to_each(event_id, owner_id, "baxcloud", json.dumps(
                    {"event": name, "id": event_id, "timestamp": iso(now), "data": data}, separators=(",", ":")),
                    now, receivers)
        return out

    def _livekit_events(self, rec: EgressRecord, names: list[str]) -> list[OutboxEvent]:
        out = []
        for name in names:
            if receivers := self._receivers("livekit", name, rec.webhooks):
                event_id = "EV_" + secrets.token_hex(8)
                out += self._to_each(event_id, rec.id, "livekit", livekit_info.webhook_event(rec, name, event_id),
                                     time.time(), receivers)
        return out

    def _to_each(self, event_id: str, owner_id: str, fmt: str, body: str, now: float,
                 receivers: list[tuple[str, bool]]) -> list[OutboxEvent]:
        # The delivery loop runs once the change that queued these has committed (this runs inside it).
        self._wake.set()
        return [OutboxEvent(event_id, owner_id, url, fmt, body, created_at=now, untrusted=untrusted)
                for url, untrusted in receivers]

    async def backlog(self) -> int:
        """Events not delivered yet, nor given up."""
        return await self.store.event_backlog()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._closed = True
        self._wake.set()
        if self._task:
            # The flag ends the loop even where a cancel meets a timeout at once and is lost (asyncio.wait_for).
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT_S)
        connector = aiohttp.TCPConnector(resolver=PolicyResolver(self.policy))
        async with (aiohttp.ClientSession(timeout=timeout) as session,
                    aiohttp.ClientSession(timeout=timeout, connector=connector) as held):
            sessions = {False: session, True: held}
            while not self._closed:
                try:
                    due = await self.store.claim_events(time.time(), CLAIM_S)
                    if due:
                        await asyncio.gather(*(self._deliver(sessions[event.untrusted], event) for event in due))
                        continue
                    self._wake.clear()
                    next_at = await self.store.next_event_at()
                except Unavailable as exc:  # the cluster's store is away: its events wait there
                    log.warning("webhooks wait: %s", exc.message)
                    next_at = time.time() + min(self.idle_s, 5.0)
                try:
                    await asyncio.wait_for(self._wake.wait(),
                                           min(max(0.0, next_at - time.time()), self.idle_s) if next_at
                                           else self.idle_s)
                except TimeoutError:
                    pass

    async def _deliver(self, session: aiohttp.ClientSession, event: OutboxEvent) -> None:
        """POST one event; a failure is retried with backoff, or given up after GIVE_UP_AFTER_S. A request's own
        receiver is reached through `session`'s policy resolver, is not followed to where it redirects, and is
        logged without its query (where its credentials would be)."""
        data = event.body.encode()
        shown = redact_ws(event.url) if event.untrusted else event.url
        if event.format == "livekit":
            headers = {"Content-Type": "application/webhook+json",
                       "Authorization": livekit_info.authorization(*self._livekit, data)}
        else:
            headers = {"Content-Type": "application/json", EVENT_ID_HEADER: event.event_id,
                       SIGNATURE_HEADER: sign(self.secret, int(time.time()), data)}
        error = None
        attempts = event.attempts + 1
        try:
            if event.untrusted:
                # An address literal meets no resolver: the policy is asked here as well.
                await self.policy.check_url(event.url, "webhooks.url")
            async with session.post(event.url, data=data, headers=headers,
                                    allow_redirects=not event.untrusted) as resp:
                if 200 <= resp.status < 300:
                    await self.store.event_delivered(event.seq, attempts)
                    return
                error = f"HTTP {resp.status}"
        except AddressRefused as exc:
            error = exc.message
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # Some of aiohttp's errors quote the URL: the caller's is kept and logged without its query.
            error = (str(exc) or type(exc).__name__).replace(event.url, shown)
        if time.time() - event.created_at > GIVE_UP_AFTER_S:
            log.error("webhook %s to %s given up after %d attempts: %s", event.event_id, shown, attempts, error)
            await self.store.event_given_up(event.seq, attempts, error)
            return
        delay = min(self.retry_base_s * 2 ** (attempts - 1), MAX_BACKOFF_S)
        log.warning("webhook %s to %s failed (%s); retry in %.0f s", event.event_id, shown, error, delay)
        await self.store.event_retry(event.seq, attempts, time.time() + delay, error)
