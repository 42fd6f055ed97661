"""Webhooks: signed, persisted in an outbox, retried with backoff, in order per egress.

Delivery runs in the service's own task, apart from the workers, so a slow or
dead receiver never slows a recording.

Each POST carries `X-Compositor-Event-Id` (for de-duplication) and
`X-Compositor-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
In LiveKit's format (`egress_started|updated|ended`) they carry LiveKit's
own signature instead (see livekit_info).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import time
from pathlib import Path

import aiohttp

from . import livekit_info
from .results import iso, recording_id
from .store import EgressRecord

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Compositor-Signature"
EVENT_ID_HEADER = "X-Compositor-Event-Id"
GIVE_UP_AFTER_S = 24 * 3600
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


def events_for(rec: EgressRecord, previous: str | None) -> list[tuple[str, dict]]:
    """The seed's webhook events a status change produces: (event name, data).

    A record egress reports as `recording.*`, a stream egress as `stream.*`, and one that does both, as both.
    """
    if rec.status == previous:
        return []
    kinds = {"record": ["recording"], "stream": ["stream"], "both": ["recording", "stream"]}[rec.mode]
    out = []
    for kind in kinds:
        base = {"egressId": rec.id, "roomName": rec.room_name, "type": rec.mode}
        if kind == "recording":
            base = {"recordingId": recording_id(rec.id), **base}
        if rec.status == "ACTIVE":
            extra = {"destinations": [s["url"] for s in rec.streams or []]} if kind == "stream" else {}
            out.append((f"{kind}.started", {**base, "quality": rec.quality, "layout": rec.layout, **extra}))
        elif rec.status in ("COMPLETE", "LIMIT_REACHED"):
            f = rec.file or {}
            done = {"status": "COMPLETED", "durationSec": f.get("duration") or _duration(rec)}
            if kind == "recording":
                done.update(fileUrl=f.get("location"), fileSize=f.get("size"))
            else:
                done["destinations"] = [{"url": s["url"], "status": s["status"]} for s in rec.streams or []]
            out.append((f"{kind}.completed", {**base, **done}))
        elif rec.status in ("FAILED", "ABORTED"):
            out.append((f"{kind}.failed", {**base, "status": rec.status, "errorMessage": rec.error,
                                           "errorCode": rec.error_code}))
    return out


def stream_events_for(rec: EgressRecord, dest: dict, previous: str | None) -> list[tuple[str, dict]]:
    """A live destination's change: `stream.updated`, or `stream.failed` when it failed for good."""
    if dest["status"] == previous or dest["status"] == "STARTING":
        return []
    data = {"egressId": rec.id, "roomName": rec.room_name, "type": rec.mode, "destination": dest["url"],
            "status": dest["status"], "retries": dest.get("retries", 0)}
    if dest.get("error_code"):
        data.update(errorMessage=dest.get("error"), errorCode=dest["error_code"])
    return [("stream.failed" if dest["status"] == "FAILED" else "stream.updated", data)]


def _duration(rec: EgressRecord) -> float | None:
    return round(rec.ended_at - rec.started_at, 3) if rec.ended_at and rec.started_at else None


FORMATS = ("baxcloud", "livekit")


class Webhooks:
    """The outbox (a table in the service's SQLite file) and its delivery loop."""

    def __init__(self, db_path: Path, urls: list[str], secret: str, retry_base_s: float = 2.0,
                 formats: tuple[str, ...] = ("baxcloud",), livekit_key: str = "", livekit_secret: str = ""):
        self.urls = urls
        self.secret = secret
        self.retry_base_s = retry_base_s
        self.formats = formats
        self._livekit = (livekit_key, livekit_secret)
        self._db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT, egress_id TEXT,"
            " url TEXT, body TEXT, attempts INTEGER DEFAULT 0, next_at REAL, created_at REAL,"
            " delivered_at REAL, failed_at REAL, last_error TEXT, format TEXT DEFAULT 'baxcloud')")
        if "format" not in {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}:
            self._db.execute("ALTER TABLE outbox ADD COLUMN format TEXT DEFAULT 'baxcloud'")
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def enqueue(self, rec: EgressRecord, previous: str | None) -> None:
        """The events of an egress's status change, into the outbox."""
        if "baxcloud" in self.formats:
            self._queue(rec.id, events_for(rec, previous))
        if "livekit" in self.formats:
            self._queue_livekit(rec, livekit_info.events_for(rec, previous))

    def enqueue_stream(self, rec: EgressRecord, dest: dict, previous: str | None) -> None:
        """The events of a destination's change, into the outbox (in order with the egress's own)."""
        events = stream_events_for(rec, dest, previous)
        if "baxcloud" in self.formats:
            self._queue(rec.id, events)
        if "livekit" in self.formats and events and not rec.ended:
            self._queue_livekit(rec, ["egress_updated"])

    def _queue(self, egress_id: str, events: list[tuple[str, dict]]) -> None:
        now = time.time()
        for name, data in events:
            event_id = "evt_" + secrets.token_hex(8)
            self._insert(event_id, egress_id, "baxcloud", json.dumps(
                {"event": name, "id": event_id, "timestamp": iso(now), "data": data}, separators=(",", ":")))

    def _queue_livekit(self, rec: EgressRecord, names: list[str]) -> None:
        for name in names:
            event_id = "EV_" + secrets.token_hex(8)
            self._insert(event_id, rec.id, "livekit", livekit_info.webhook_event(rec, name, event_id))

    def _insert(self, event_id: str, egress_id: str, fmt: str, body: str) -> None:
        now = time.time()
        for url in self.urls:
            self._db.execute("INSERT INTO outbox (id, egress_id, url, body, next_at, created_at, format) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)", (event_id, egress_id, url, body, now, now, fmt))
        self._wake.set()

    @property
    def backlog(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND failed_at IS NULL"
                                ).fetchone()[0]

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._db.close()

    def _due(self) -> list[tuple]:
        # Only the oldest pending event of each (egress, url) may go: order holds.
        return self._db.execute(
            "SELECT seq, id, url, body, attempts, created_at, format FROM outbox o WHERE delivered_at IS NULL AND"
            " failed_at IS NULL AND seq = (SELECT MIN(seq) FROM outbox p WHERE p.egress_id = o.egress_id AND"
            " p.url = o.url AND p.delivered_at IS NULL AND p.failed_at IS NULL) AND next_at <= ?",
            (time.time(),)).fetchall()

    def _next_wake(self) -> float:
        row = self._db.execute("SELECT MIN(next_at) FROM outbox WHERE delivered_at IS NULL AND failed_at IS NULL"
                               ).fetchone()
        return max(0.0, row[0] - time.time()) if row and row[0] else 3600.0

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while True:
                due = self._due()
                if due:
                    await asyncio.gather(*(self._deliver(session, *row) for row in due))
                    continue
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self._next_wake())
                except TimeoutError:
                    pass

    async def _deliver(self, session: aiohttp.ClientSession, seq: int, event_id: str, url: str, body: str,
                       attempts: int, created_at: float, fmt: str) -> None:
        data = body.encode()
        if fmt == "livekit":
            headers = {"Content-Type": "application/webhook+json",
                       "Authorization": livekit_info.authorization(*self._livekit, data)}
        else:
            headers = {"Content-Type": "application/json", EVENT_ID_HEADER: event_id,
                       SIGNATURE_HEADER: sign(self.secret, int(time.time()), data)}
        error = None
        try:
            async with session.post(url, data=data, headers=headers) as resp:
                if 200 <= resp.status < 300:
                    self._db.execute("UPDATE outbox SET delivered_at = ?, attempts = ? WHERE seq = ?",
                                     (time.time(), attempts + 1, seq))
                    return
                error = f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = str(exc) or type(exc).__name__
        attempts += 1
        if time.time() - created_at > GIVE_UP_AFTER_S:
            log.error("webhook %s to %s given up after %d attempts: %s", event_id, url, attempts, error)
            self._db.execute("UPDATE outbox SET failed_at = ?, attempts = ?, last_error = ? WHERE seq = ?",
                             (time.time(), attempts, error, seq))
            return
        delay = min(self.retry_base_s * 2 ** (attempts - 1), MAX_BACKOFF_S)
        log.warning("webhook %s to %s failed (%s); retry in %.0f s", event_id, url, error, delay)
        self._db.execute("UPDATE outbox SET attempts = ?, next_at = ?, last_error = ? WHERE seq = ?",
                         (attempts, time.time() + delay, error, seq))
