"""What an egress produced, as the store keeps it and the API and webhooks show it: its file's result,
its destinations before the worker reports, recording ids and times."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from pydantic import Field

from ..destinations import StreamTarget
from ..plan import partial_path
from ..probe import ProbeError, probe
from ..protocol import ErrorEvent, Event, ResultEvent, Status, StatusEvent, StreamStatus, UploadEvent, UploadStatus
from ..request import Model


def recording_id(egress_id: str) -> str:
    """A recording's id, tied one-to-one to its egress."""
    return "rec_" + egress_id.removeprefix("EG_")


def egress_id_of(rec_id: str) -> str:
    return "EG_" + rec_id.removeprefix("rec_")


class Sidecars(Model):
    """Where a recording's sidecars are: JSON files beside it, in the same storage, with times on the file's
    timeline (seconds from its first frame) and the wall clock."""

    participants: str | None = Field(None, description="who was in the room when (`<file name>.participants.json`)")
    speakers: str | None = Field(None, description="who spoke when (`<file name>.speakers.json`)")


class FileResult(Model):
    location: str = Field(description="the object's URL, or the file's path on this server")
    filename: str
    size: int | None = Field(None, description="bytes (unknown for the file of a lost cluster node)")
    key: str | None = Field(None, description="the name in the storage")
    storage: str | None = Field(None, description="local, s3, gcs or azure")
    backup_used: bool | None = Field(None, description="the storage refused; the backup storage holds it")
    node: str | None = Field(None, description="in a cluster, the node whose disk holds a file kept locally")
    duration: float | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    sidecars: Sidecars | None = None


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def pending_streams(targets: tuple[StreamTarget, ...]) -> list[dict]:
    """Destinations of a new egress, before its worker reports on them."""
    return [{"url": t.redacted, "status": StreamStatus.STARTING, "retries": 0} for t in targets]


def fold(event: Event) -> dict | None:
    """The stored fields a worker's event changes (None: it changes none; a stream event changes its
    destination, which the service folds itself)."""
    if isinstance(event, StatusEvent) and event.status in (Status.ACTIVE, Status.ENDING):
        return {"status": event.status, **({"started_at": event.time} if event.status == Status.ACTIVE else {})}
    if isinstance(event, ResultEvent):
        outputs = {k: v for k in ("segments", "images", "manifest") if (v := getattr(event, k))}
        return {"status": Status.LIMIT_REACHED if event.stopped_by == "limit" else Status.COMPLETE,
                "ended_at": event.time, "file": _file_result(event.file) if event.file else None,
                "outputs": outputs or None, **({"streams": event.streams} if event.streams else {}),
                # A delivery resumed after a restart keeps why the recording itself ended.
                **({"stopped_by": event.stopped_by, "end_reason": event.reason}
                   if event.stopped_by and event.stopped_by != "resumed" else {})}
    if isinstance(event, UploadEvent) and event.status != UploadStatus.STORED:
        # A storage that fails: retried (with its attempt and why), or given up for the backup. (A stored
        # output clears a retrying state: the service, which knows the state, does that.)
        return {"upload": {"status": event.status, "attempt": event.attempt, "key": event.key,
                           "error": event.message, "error_code": event.code, "retry_in_s": event.delay_s}}
    if isinstance(event, ErrorEvent):
        kept = (event.file or {}).get("path")
        return {"status": event.status, "ended_at": event.time, "error": event.message, "error_code": event.code,
                "file": _kept(Path(kept)) if kept else None}
    return None


def _file_result(f: dict) -> dict:
    """A worker's file facts as the API shows them (FileResult names the fields)."""
    location = f.get("location") or f["path"]
    return FileResult(location=location, filename=(f.get("key") or location).rpartition("/")[2], size=f["size"],
                      duration=f["duration"],
                      **{k: f[k] for k in ("width", "height", "fps", "video_codec", "audio_codec", "key", "storage",
                                           "backup_used", "sidecars") if k in f},
                      started_at=iso(f.get("started_at")), ended_at=iso(f.get("ended_at"))
                      ).model_dump(by_alias=True, exclude_none=True)


async def kept_file(request: dict) -> dict | None:
    """The file an egress left (final, or the crash-safe partial one), if any, with its facts as far as
    ffprobe can read them."""
    output = Path(request.get("file", {}).get("filepath", ""))
    left = left_behind(output) if output.name else None
    if left is None:
        return None
    try:
        facts = (await probe(left)).to_dict()
    except ProbeError:
        return _kept(left)
    return _file_result({**facts, "location": str(left), "key": left.name})


def left_behind(output: Path) -> Path | None:
    """What an egress writing `output` left on this disk: the file, or its crash-safe partial one."""
    return next((path for path in (output, partial_path(output)) if path.exists()), None)


def _kept(path: Path) -> dict:
    """A file left on this server (not stored), as the API shows it."""
    return {"location": str(path), "filename": path.name, "size": path.stat().st_size if path.is_file() else 0}
