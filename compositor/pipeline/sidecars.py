"""The participants and speakers sidecars of a recording: who was in the room when, and who spoke when.

Our layout page reports the room model's joins, leaves and speaking changes on the console (`ROOM_EVENT {...}`,
static/sdk/sidecars.js), stamped with its own clock (performance.now(), ms). The worker keeps them in a
`RoomLog`, bounded whatever the page or the room sends; once the file is finished they are put on the file's
media timeline (`MediaClock`) and written next to it as `<file name>.participants.json` and
`<file name>.speakers.json`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path

log = logging.getLogger(__name__)

#: the page's console signal of a room event
ROOM_EVENT = "ROOM_EVENT"
SIDECARS_VERSION = 1
#: A page or a room we do not control sends these: past the cap, events are counted, not kept (the sidecars
#: then say `truncated`); a line or identity longer than its cap is dropped whole.
MAX_EVENTS = 20_000
MAX_LINE = 2048
MAX_IDENTITY = 256  # LiveKit's identities are well under this
MAX_NAME = 256
#: what each sidecar is called next to the file `name.ext`: `name.ext.participants.json`
KINDS = ("participants", "speakers")


class RoomEventKind(StrEnum):
    JOINED = "joined"
    LEFT = "left"
    SPEAKING = "speaking"
    SILENT = "silent"


@dataclass(frozen=True)
class RoomEvent:
    """One change the page saw, at `at` ms of the page's clock (performance.now())."""

    kind: RoomEventKind
    identity: str
    name: str
    at: float


def parse_room_event(text: str) -> RoomEvent | None:
    """A ROOM_EVENT line's event (the text after the signal's name); None if it is malformed or over a cap."""
    if len(text) > MAX_LINE:
        return None
    try:
        data = json.loads(text)
        kind = RoomEventKind(data["kind"])
        identity, name, at = data["identity"], data.get("name") or data["identity"], data["at"]
    except (ValueError, KeyError, TypeError):
        return None
    if not (isinstance(identity, str) and isinstance(name, str) and 0 < len(identity) <= MAX_IDENTITY
            and len(name) <= MAX_NAME and isinstance(at, int | float) and not isinstance(at, bool)
            and at == at and abs(at) < 1e12):  # at == at: not NaN
        return None
    return RoomEvent(kind, identity, name, float(at))


class RoomLog:
    """The room events a page reported, at most `limit` of them (the rest counted in `dropped`)."""

    def __init__(self, limit: int = MAX_EVENTS):
        self.limit = limit
        self.events: list[RoomEvent] = []
        self.dropped = 0
        self.malformed = 0

    def add(self, text: str) -> None:
        """Take one ROOM_EVENT line (without the signal's name)."""
        event = parse_room_event(text)
        if event is None:
            self.malformed += 1
        elif len(self.events) >= self.limit:
            self.dropped += 1
        else:
            self.events.append(event)

    @property
    def truncated(self) -> bool:
        return bool(self.dropped or self.malformed)


@dataclass(frozen=True)
class ClockSample:
    """The page's clock read once from the worker: `page_ms` (performance.now()) at wall time `epoch` (the
    middle of the round trip that read it)."""

    page_ms: float
    epoch: float


@dataclass(frozen=True)
class MediaClock:
    """Puts the page's times on the file's timeline.

    Two relations make it. The page's clock to the wall clock: read at the first frame and again every minute
    while recording (`samples`: the first reading and the latest), and interpolated between them, so a drift
    of the monotonic clock Chromium's performance.now() follows against the wall clock (NTP slewing it) is
    followed too. The wall clock to the
    file: ffmpeg stamps every captured frame with the wall clock (see encoder.py), so the first captured
    frame's stamp, and where that frame sits in the finished file, give the wall time of the file's time 0
    (`zero_epoch`). Capture begins after START_RECORDING (ffmpeg takes a few tenths of a second to start), so
    this is later than the page's room time 0: what happened before the first frame is at offset 0.
    """

    samples: tuple[ClockSample, ...]
    zero_epoch: float
    duration: float
    #: with paused spans left out of the file: the kept pieces, (start, end) in seconds from the first frame of
    #: the recording as captured (None: its start or end); empty when nothing was left out
    pieces: tuple[tuple[float | None, float | None], ...] = ()

    def epoch(self, page_ms: float) -> float:
        """The wall time of a page time."""
        first, last = self.samples[0], self.samples[-1]
        if last.page_ms - first.page_ms < 1000:
            return first.epoch + (page_ms - first.page_ms) / 1000
        rate = (last.epoch - first.epoch) / ((last.page_ms - first.page_ms) / 1000)
        return first.epoch + (page_ms - first.page_ms) / 1000 * rate

    def offset(self, page_ms: float) -> float:
        """Seconds from the file's first frame, within the file (a moment of a paused span, which the file
        leaves out, is where the file goes on after it)."""
        return min(max(self._kept(self.epoch(page_ms) - self.zero_epoch), 0.0), self.duration)

    @property
    def end_epoch(self) -> float:
        """The wall time of the file's end (its pauses included)."""
        return self.zero_epoch + self._captured(self.duration)

    def _kept(self, captured: float) -> float:
        """Where a time of the recording as captured is in the file."""
        if not self.pieces:
            return captured
        kept = 0.0
        for start, end in self.pieces:
            start = start or 0.0
            if captured < start:
                return kept
            if end is None or captured <= end:
                return kept + captured - start
            kept += end - start
        return kept

    def _captured(self, offset: float) -> float:
        """Where a time of the file was in the recording as captured."""
        kept = 0.0
        for start, end in self.pieces:
            start = start or 0.0
            if end is None or offset <= kept + end - start:
                return start + offset - kept
            kept += end - start
        return offset


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _moment(offset: float, epoch: float) -> dict:
    return {"offset": round(offset, 3), "at": _iso(epoch)}


def build_sidecars(events: list[RoomEvent], clock: MediaClock) -> tuple[list[dict], list[dict]]:
    """(presence spans, speaking spans) of `events` on the file's timeline, each a dict with identity, name,
    start and end ({offset, at}), `from_start` / `until_end` where the file cut it. A span wholly outside the
    file is left out; a speaking span ends at the latest when its speaker leaves."""
    present: dict[str, dict] = {}
    speaking: dict[str, dict] = {}
    presences: list[dict] = []
    speeches: list[dict] = []

    def close(spans: list[dict], span: dict, offset: float, epoch: float) -> None:
        # (A span the file leaves wholly out, as one within a pause, has no length left: it is not listed.)
        if offset > span["start"]:
            spans.append({**span, "end": offset, "end_at": min(epoch, clock.end_epoch)})

    for e in events:
        offset, epoch = clock.offset(e.at), clock.epoch(e.at)
        if e.kind == RoomEventKind.JOINED and e.identity not in present:
            present[e.identity] = {"identity": e.identity, "name": e.name, "start": offset,
                                   "start_at": max(epoch, clock.zero_epoch)}
        elif e.kind == RoomEventKind.LEFT and e.identity in present:
            if e.identity in speaking:
                close(speeches, speaking.pop(e.identity), offset, epoch)
            close(presences, present.pop(e.identity), offset, epoch)
        elif e.kind == RoomEventKind.SPEAKING and e.identity in present and e.identity not in speaking:
            speaking[e.identity] = {"identity": e.identity, "name": present[e.identity]["name"], "start": offset,
                                    "start_at": max(epoch, clock.zero_epoch)}
        elif e.kind == RoomEventKind.SILENT and e.identity in speaking:
            close(speeches, speaking.pop(e.identity), offset, epoch)
    for spans, still in ((speeches, speaking), (presences, present)):
        for span in still.values():
            close(spans, span, clock.duration, clock.end_epoch)

    def shaped(span: dict) -> dict:
        return {"identity": span["identity"], "name": span["name"],
                "start": _moment(span["start"], span["start_at"]), "end": _moment(span["end"], span["end_at"]),
                "from_start": span["start"] == 0.0, "until_end": span["end"] >= clock.duration}

    def by_start(span: dict) -> tuple[float, str]:
        return span["start"], span["identity"]

    return ([shaped(s) for s in sorted(presences, key=by_start)],
            [shaped(s) for s in sorted(speeches, key=by_start)])


def sidecar_path(file: Path, kind: str) -> Path:
    """Where the sidecar of `kind` (participants, speakers) of `file` goes: `name.ext.<kind>.json` beside it."""
    return file.with_name(f"{file.name}.{kind}.json")


def write_sidecars(file: Path, room_log: RoomLog, clock: MediaClock, *, egress_id: str,
                   room_name: str) -> dict[str, Path]:
    """Write the participants and speakers sidecars of `file`; returns their paths by kind."""
    presences, speeches = build_sidecars(room_log.events, clock)
    common = {"version": SIDECARS_VERSION, "egress_id": egress_id, "room_name": room_name, "file": file.name,
              "duration": round(clock.duration, 3), "started_at": _iso(clock.zero_epoch),
              "ended_at": _iso(clock.end_epoch),
              # Past a cap (events, line or identity length) the page's reports were not all kept.
              "truncated": room_log.truncated}
    if room_log.truncated:
        log.warning("room events: %d past the cap of %d, %d malformed or oversized; the sidecars are incomplete",
                    room_log.dropped, room_log.limit, room_log.malformed)
    bodies = {
        "participants": {**common, "participants": presences},
        "speakers": {**common, "detection": "the page's speaking detection (a synthetic room's script; a "
                                            "LiveKit room's decoded sound level, held 0.6 s over pauses), not "
                                            "the layout's speaker with its 1 s hold", "speakers": speeches},
    }
    paths = {}
    for kind, body in bodies.items():
        path = sidecar_path(file, kind)
        path.write_text(json.dumps(body, indent=2) + "\n")
        paths[kind] = path
    return paths

