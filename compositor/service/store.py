"""Where the service keeps its egresses and the webhook events they cause: SQLite by default (one file,
survives restarts).

An egress's change and the events it causes commit in one transaction (the outbox): a crash between them can
lose neither. The service talks to `seams.Store` only, so another engine can stand in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..protocol import ACTIVE_STATUSES, Status
from .seams import (
    EgressRecord,
    EventsOf,
    IngressEventsOf,
    IngressRecord,
    OutboxEvent,
    ingress_from_json,
    ingress_to_json,
)

_COLUMNS = ["id", "room_name", "mode", "layout", "quality", "request", "status", "created_at", "updated_at",
            "started_at", "ended_at", "error", "error_code", "file", "worker_pid", "streams", "outputs", "kind",
            "node", "request_shape", "upload", "webhooks", "stopped_by", "end_reason", "pauses"]
_JSON = {"request", "file", "streams", "outputs", "upload", "webhooks", "pauses"}
# Columns added after the first release: older data dirs gain them on open.
_ADDED = {"streams": "TEXT", "outputs": "TEXT", "kind": "TEXT NOT NULL DEFAULT 'room_composite'", "node": "TEXT",
          "request_shape": "TEXT NOT NULL DEFAULT ''", "upload": "TEXT", "webhooks": "TEXT", "stopped_by": "TEXT",
          "end_reason": "TEXT", "pauses": "TEXT"}


class SqliteStore:
    """Store on one SQLite file. Every call is a short local transaction, run on the event loop: it never
    waits on anything but the disk."""

    def __init__(self, path: Path):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Made 0600 before SQLite opens it: its -wal and -shm files take the database's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        path.chmod(0o600)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS egress (id TEXT PRIMARY KEY, room_name TEXT, mode TEXT, layout TEXT,"
            " quality TEXT, request TEXT, status TEXT, created_at REAL, updated_at REAL, started_at REAL,"
            " ended_at REAL, error TEXT, error_code TEXT, file TEXT, worker_pid INTEGER)")
        present = {row[1] for row in self._db.execute("PRAGMA table_info(egress)")}
        for column, kind in _ADDED.items():
            if column not in present:
                self._db.execute(f"ALTER TABLE egress ADD COLUMN {column} {kind}")
        self._db.execute("CREATE TABLE IF NOT EXISTS setting (key TEXT PRIMARY KEY, value TEXT)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT, egress_id TEXT,"
            " url TEXT, body TEXT, attempts INTEGER DEFAULT 0, next_at REAL, created_at REAL,"
            " delivered_at REAL, failed_at REAL, last_error TEXT, format TEXT DEFAULT 'baxcloud')")
        outbox_columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        for column, kind in (("format", "TEXT DEFAULT 'baxcloud'"), ("untrusted", "INTEGER DEFAULT 0")):
            if column not in outbox_columns:
                self._db.execute(f"ALTER TABLE outbox ADD COLUMN {column} {kind}")
        # The delivery loop reads only pending events: kept small however many were delivered.
        self._db.execute("CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(egress_id, url, seq)"
                         " WHERE delivered_at IS NULL AND failed_at IS NULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS seen_event (id TEXT PRIMARY KEY, at REAL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS egress_created ON egress(created_at DESC, id)")
        self._db.execute("CREATE INDEX IF NOT EXISTS egress_room ON egress(room_name, created_at)")
        self._db.execute("CREATE INDEX IF NOT EXISTS egress_status ON egress(status, created_at)")
        # An ingress is read whole and by its stream key: the record is one JSON document.
        self._db.execute("CREATE TABLE IF NOT EXISTS ingress (id TEXT PRIMARY KEY, stream_key TEXT, room_name TEXT,"
                         " created_at REAL, data TEXT)")
        self._db.execute("CREATE UNIQUE INDEX IF NOT EXISTS ingress_key ON ingress(stream_key) WHERE stream_key != ''")
        # Whoever follows changes() (the dashboard's push): one queue each, fed after each commit.
        self._watchers: set[asyncio.Queue[str | None]] = set()

    @staticmethod
    def _row(row: tuple) -> EgressRecord:
        values = dict(zip(_COLUMNS, row))
        for key in _JSON:
            values[key] = json.loads(values[key]) if values[key] is not None else None
        return EgressRecord(**values | {"status": Status(values["status"])})

    async def create(self, rec: EgressRecord) -> None:
        values = [json.dumps(getattr(rec, c)) if c in _JSON and getattr(rec, c) is not None else getattr(rec, c)
                  for c in _COLUMNS]
        self._db.execute(f"INSERT INTO egress ({','.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})",
                         values)
        self._changed(rec.id)

    async def get(self, egress_id: str) -> EgressRecord | None:
        return self._get(egress_id)

    def _get(self, egress_id: str) -> EgressRecord | None:
        row = self._db.execute(f"SELECT {','.join(_COLUMNS)} FROM egress WHERE id = ?", (egress_id,)).fetchone()
        return self._row(row) if row else None

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    async def update(self, egress_id: str, *, events: EventsOf | None = None, **fields) -> EgressRecord:
        """Change an egress; with `events`, the webhook events the change causes go into the outbox in the same
        transaction."""
        fields["updated_at"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in fields)
        values = [json.dumps(v) if k in _JSON and v is not None else v for k, v in fields.items()]
        with self._transaction():
            before = self._get(egress_id)
            assert before is not None, egress_id
            if before.ended and "status" in fields:
                return before  # settled for good: a late report changes nothing
            self._db.execute(f"UPDATE egress SET {sets} WHERE id = ?", (*values, egress_id))
            after = self._get(egress_id)
            self._queue_events(events(before, after) if events else [])
        self._changed(egress_id)
        return after

    def _changed(self, egress_id: str) -> None:
        for queue in self._watchers:
            queue.put_nowait(egress_id)

    async def changes(self) -> AsyncIterator[str | None]:
        """The id of each egress as it is created, changed or deleted (after the change is committed)."""
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._watchers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._watchers.discard(queue)

    def _queue_events(self, events: list[OutboxEvent]) -> None:
        for e in events:
            self._db.execute("INSERT INTO outbox (id, egress_id, url, body, next_at, created_at, format, untrusted) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (e.event_id, e.egress_id, e.url, e.body, e.created_at,
                                                                 e.created_at, e.format, int(e.untrusted)))

    @staticmethod
    def _ingress(row: tuple | None) -> IngressRecord | None:
        return ingress_from_json(row[0]) if row else None

    async def create_ingress(self, rec: IngressRecord) -> None:
        self._db.execute("INSERT INTO ingress (id, stream_key, room_name, created_at, data) VALUES (?, ?, ?, ?, ?)",
                         (rec.id, rec.stream_key, rec.room_name, rec.created_at, ingress_to_json(rec)))

    async def get_ingress(self, ingress_id: str) -> IngressRecord | None:
        return self._ingress(self._db.execute("SELECT data FROM ingress WHERE id = ?", (ingress_id,)).fetchone())

    async def ingress_of_key(self, stream_key: str) -> IngressRecord | None:
        """The ingress a publisher's stream key names; None for an unknown (or empty) key."""
        if not stream_key:
            return None
        return self._ingress(self._db.execute("SELECT data FROM ingress WHERE stream_key = ?",
                                              (stream_key,)).fetchone())

    async def update_ingress(self, ingress_id: str, *, events: IngressEventsOf | None = None,
                             **fields) -> IngressRecord:
        """Change an ingress; with `events`, the webhook events the change causes go into the outbox in the same
        transaction."""
        with self._transaction():
            before = await self.get_ingress(ingress_id)
            assert before is not None, ingress_id
            after = dataclasses.replace(before, **fields, updated_at=time.time())
            self._db.execute("UPDATE ingress SET room_name = ?, data = ? WHERE id = ?",
                             (after.room_name, ingress_to_json(after), ingress_id))
            self._queue_events(events(before, after) if events else [])
        return after

    async def list_ingress(self, *, room_name: str | None = None) -> list[IngressRecord]:
        """Every ingress (of a room), newest first."""
        where, args = (" WHERE room_name = ?", (room_name,)) if room_name else ("", ())
        rows = self._db.execute(f"SELECT data FROM ingress{where} ORDER BY created_at DESC, id", args).fetchall()
        return [self._ingress(r) for r in rows]

    async def delete_ingress(self, ingress_id: str) -> None:
        self._db.execute("DELETE FROM ingress WHERE id = ?", (ingress_id,))

    # Of each (egress, receiver), only the oldest pending event may go: order holds.
    _HEADS = ("FROM outbox o WHERE delivered_at IS NULL AND failed_at IS NULL AND seq = (SELECT MIN(seq) FROM"
              " outbox p WHERE p.egress_id = o.egress_id AND p.url = o.url AND p.delivered_at IS NULL"
              " AND p.failed_at IS NULL)")

    async def claim_events(self, now: float, lease_s: float) -> list[OutboxEvent]:
        """The events to send now, each held for `lease_s` (due again then, unless delivered or retried)."""
        with self._transaction():
            rows = self._db.execute(f"SELECT id, egress_id, url, format, body, attempts, created_at, seq, untrusted "
                                    f"{self._HEADS} AND next_at <= ?", (now,)).fetchall()
            self._db.executemany("UPDATE outbox SET next_at = ? WHERE seq = ?", [(now + lease_s, r[7]) for r in rows])
        return [OutboxEvent(*row[:8], untrusted=bool(row[8])) for row in rows]

    async def next_event_at(self) -> float | None:
        """When the next event may go (one waiting behind a retrying one waits for it); None when none is pending."""
        return self._db.execute(f"SELECT MIN(next_at) {self._HEADS}").fetchone()[0]

    async def event_delivered(self, seq: int, attempts: int) -> None:
        self._db.execute("UPDATE outbox SET delivered_at = ?, attempts = ? WHERE seq = ?", (time.time(), attempts, seq))

    async def event_retry(self, seq: int, attempts: int, next_at: float, error: str) -> None:
        self._db.execute("UPDATE outbox SET attempts = ?, next_at = ?, last_error = ? WHERE seq = ?",
                         (attempts, next_at, error, seq))

    async def event_given_up(self, seq: int, attempts: int, error: str) -> None:
        self._db.execute("UPDATE outbox SET failed_at = ?, attempts = ?, last_error = ? WHERE seq = ?",
                         (time.time(), attempts, error, seq))

    async def event_backlog(self) -> int:
        """Events neither delivered nor given up."""
        return self._db.execute("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND failed_at IS NULL"
                                ).fetchone()[0]

    async def list(self, *, room_name: str | None = None, status: str | None = None, modes: tuple[str, ...] = (),
             page: int = 1, limit: int = 20, oldest_first: bool = False) -> tuple[list[EgressRecord], int]:
        where, args = [], []
        if modes:
            where.append(f"mode IN ({','.join('?' * len(modes))})")
            args.extend(modes)
        if room_name:
            where.append("room_name = ?")
            args.append(room_name)
        if status:
            where.append("status = ?")
            args.append(status)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        total = self._db.execute(f"SELECT COUNT(*) FROM egress{clause}", args).fetchone()[0]
        order = "created_at, id" if oldest_first else "created_at DESC, id"
        rows = self._db.execute(f"SELECT {','.join(_COLUMNS)} FROM egress{clause} ORDER BY {order} "
                                "LIMIT ? OFFSET ?", (*args, limit, (page - 1) * limit)).fetchall()
        return [self._row(r) for r in rows], total

    async def delete(self, egress_id: str) -> None:
        self._db.execute("DELETE FROM egress WHERE id = ?", (egress_id,))
        self._changed(egress_id)

    async def get_setting(self, key: str) -> dict | None:
        row = self._db.execute("SELECT value FROM setting WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    async def put_setting(self, key: str, value: dict) -> None:
        self._db.execute("INSERT INTO setting (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                         "excluded.value", (key, json.dumps(value)))

    async def counts(self) -> list[tuple[str, str, int]]:
        """(status, mode, count) over every stored egress."""
        return self._db.execute("SELECT status, mode, COUNT(*) FROM egress GROUP BY status, mode").fetchall()

    async def first_sighting(self, event_id: str, keep_s: float) -> bool:
        """True the first time `event_id` is seen within `keep_s` seconds (ids older than that are forgotten)."""
        now = time.time()
        self._db.execute("DELETE FROM seen_event WHERE at < ?", (now - keep_s,))
        return self._db.execute("INSERT OR IGNORE INTO seen_event (id, at) VALUES (?, ?)",
                                (event_id, now)).rowcount == 1

    async def unfinished(self) -> list[EgressRecord]:
        rows = self._db.execute(f"SELECT {','.join(_COLUMNS)} FROM egress WHERE status IN "
                                f"({','.join('?' * len(ACTIVE_STATUSES))})", ACTIVE_STATUSES).fetchall()
        return [self._row(r) for r in rows]

    async def close(self) -> None:
        self._db.close()
