"""What an egress produced, as the store keeps it and the API and webhooks show it: its file's result,
its destinations before the worker reports, recording ids and times."""

from __future__ import annotations

from datetime import datetime, timezone

from pydantic import Field

from ..destinations import StreamTarget
from ..protocol import StreamStatus
from ..request import Model


def recording_id(egress_id: str) -> str:
    """A recording's id, tied one-to-one to its egress."""
    return "rec_" + egress_id.removeprefix("EG_")


def egress_id_of(rec_id: str) -> str:
    return "EG_" + rec_id.removeprefix("rec_")


class FileResult(Model):
    location: str = Field(description="the object's URL, or the file's path on this server")
    filename: str
    size: int
    key: str | None = Field(None, description="the name in the storage")
    storage: str | None = Field(None, description="local, s3, gcs or azure")
    backup_used: bool | None = Field(None, description="the storage refused; the backup storage holds it")
    duration: float | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    started_at: str | None = None
    ended_at: str | None = None


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def pending_streams(targets: tuple[StreamTarget, ...]) -> list[dict]:
    """Destinations of a new egress, before its worker reports on them."""
    return [{"url": t.redacted, "status": StreamStatus.STARTING, "retries": 0} for t in targets]
