"""The HTTP API's answers (BaxCloud Stream Out): an egress, a recording, lists, download URLs and errors."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from ..protocol import IngressState, InputKind, Status, StreamStatus
from ..request import Model
from ..service.results import FileResult, iso, recording_id
from ..service.seams import EgressRecord


class StreamInfo(Model):
    """One live destination: its own status, retries and last error (the URL's key redacted)."""

    url: str
    status: StreamStatus
    retries: int = 0
    last_retry_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    error: str | None = None
    error_code: str | None = None


class SegmentsResult(Model):
    playlist: str
    live_playlist: str | None = None
    segment_count: int
    duration: float
    size: int


class ImagesResult(Model):
    directory: str
    count: int
    first: str | None = None
    last: str | None = None


class UploadState(Model):
    """Outputs waiting on a storage: being retried (the attempt, and why the last one failed), or gone to
    the backup storage."""

    status: str = Field(description="RETRYING or BACKUP")
    attempt: int | None = None
    key: str | None = Field(None, description="the output being stored")
    error: str | None = None
    error_code: str | None = None
    retry_in_s: float | None = Field(None, description="seconds until the next attempt")


class PausedSpan(Model):
    """A span the egress was paused for: left out of its files and HLS, a slate on its live destinations."""

    start: str
    end: str | None = Field(None, description="null while it lasts")


class Lifecycle(Model):
    """What egresses and recordings both show: where they are and what came of them."""

    room_name: str
    status: Status
    layout: str
    quality: str
    created_at: str
    updated_at: str
    started_at: str | None
    ended_at: str | None
    duration_sec: float | None
    error: str | None
    error_code: str | None
    file: FileResult | None
    stopped_by: str | None = Field(None, description="why it ended: limit, stopped, room_ended, idle, "
                                                     "streams_removed")
    end_reason: str | None = Field(None, description="with stoppedBy idle, why in words: \"no one in the room "
                                                     "for 30 s\"")
    paused: bool = Field(False, description="paused now (status stays ACTIVE): POST /v1/egress/{id}/pause, /resume")
    paused_spans: list[PausedSpan] = Field(default_factory=list, description="every span it was paused for")


class EgressInfo(Lifecycle):
    """An egress as the API shows it (the seed's getStreamStatus fields)."""

    id: str
    type: str
    mode: str
    kind: str = Field("room_composite", description="LiveKit's egress type: room_composite, web, participant, "
                                                    "track_composite or track")
    queue_position: int | None = Field(None, description="1 = next to start, while waiting for capacity")
    node: str | None = Field(None, description="in a cluster, the node that runs it")
    streams: list[StreamInfo] = Field(default_factory=list)
    segments: SegmentsResult | None = None
    images: ImagesResult | None = None
    manifest: str | None = Field(None, description="where the manifest ({egress_id}.json) of the outputs is")
    upload: UploadState | None = Field(None, description="while a storage fails: its retries, or the backup")
    # A plain mapping, not ParticipantFilter: it shows the one list the filter has, not the other as null.
    participants: dict[Literal["include", "exclude"], list[str]] | None = Field(
        None, description="who it records now: {include: [identities]} or {exclude: [identities]} (null: everyone)")


class RecordingInfo(Lifecycle):
    id: str
    egress_id: str
    file_type: str


class EgressList(Model):
    items: list[EgressInfo]
    page: int
    limit: int
    total: int


class RecordingList(Model):
    items: list[RecordingInfo]
    page: int
    limit: int
    total: int


class LayoutInfo(Model):
    """A layout requests may name: a built-in one (each also as -light and -dark), or custom/NAME of the
    server's layouts_dir."""

    name: str
    builtin: bool
    description: str = Field(description="what its layout.json says of it (empty when it says nothing)")


class LayoutList(Model):
    items: list[LayoutInfo]


class DownloadUrl(Model):
    download_url: str
    expires_at: str


class IngressSession(Model):
    """An ingress's current (or last) session."""

    #: LiveKit's IngressState.Status name: ENDPOINT_INACTIVE, _BUFFERING, _PUBLISHING, _COMPLETE or _ERROR
    status: IngressState
    error: str | None = None
    error_code: str | None = None
    resource_id: str | None = None
    room_id: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    updated_at: str | None = None
    #: what came in: mime_type, width, height, framerate (video); mime_type, channels, sample_rate (audio)
    video: dict | None = None
    audio: dict | None = None
    #: the tracks published into the room: sid, type, source, name, width, height
    tracks: list[dict] = []


class IngressInfo(Model):
    """An ingress: where publishers go (`url` + `streamKey`), the room it publishes into, its session."""

    ingress_id: str
    name: str
    input_type: InputKind
    #: RTMP: the server URL (OBS's "Server"); WHIP: the endpoint; URL: the source (credentials left out)
    url: str
    #: the publisher's secret (RTMP stream key, WHIP bearer token); empty for a URL ingress
    stream_key: str
    rtmps_url: str | None = None
    room_name: str
    participant_identity: str
    participant_name: str
    participant_metadata: str
    enabled: bool
    reusable: bool
    #: false: the publisher's video goes into the room as it came (WHIP's bypassTranscoding)
    enable_transcoding: bool = True
    video: dict
    audio: dict
    state: IngressSession
    created_at: str | None = None


class IngressList(Model):
    items: list[IngressInfo]


class ErrorDetail(Model):
    code: str
    message: str
    details: dict


class ErrorBody(Model):
    error: ErrorDetail


def _egress(rec: EgressRecord) -> EgressInfo:
    duration = None
    if rec.started_at:
        duration = round((rec.ended_at or time.time()) - rec.started_at, 3)
    if rec.file and rec.file.get("duration"):
        duration = rec.file["duration"]
    outputs = rec.outputs or {}
    return EgressInfo(id=rec.id, room_name=rec.room_name, type=rec.mode, mode=rec.mode, kind=rec.kind,
                      status=rec.status,
                      layout=rec.layout, quality=rec.quality, created_at=iso(rec.created_at),
                      updated_at=iso(rec.updated_at), started_at=iso(rec.started_at), ended_at=iso(rec.ended_at),
                      duration_sec=duration, error=rec.error, error_code=rec.error_code,
                      stopped_by=rec.stopped_by, end_reason=rec.end_reason, paused=rec.paused,
                      paused_spans=paused_spans(rec),
                      file=FileResult.model_validate(rec.file) if rec.file else None,
                      streams=[stream_info(s) for s in rec.streams or []],
                      segments=SegmentsResult.model_validate(outputs["segments"]) if outputs.get("segments") else None,
                      images=ImagesResult.model_validate(outputs["images"]) if outputs.get("images") else None,
                      manifest=outputs.get("manifest"), node=rec.node,
                      upload=UploadState.model_validate(rec.upload) if rec.upload else None,
                      participants=rec.request.get("participants"))


def paused_spans(rec: EgressRecord) -> list[PausedSpan]:
    """The egress's paused spans (epoch seconds as the worker said) as the API shows them."""
    return [PausedSpan(start=iso(s["start"]), end=iso(s.get("end"))) for s in rec.pauses or []]


def stream_info(worker: dict) -> StreamInfo:
    """A destination as the worker reports it (epoch times), as the API shows it."""
    return StreamInfo(**{k: worker.get(k) for k in ("url", "status", "error", "error_code")},
                      retries=worker.get("retries", 0), last_retry_at=iso(worker.get("last_retry_at")),
                      started_at=iso(worker.get("started_at")), ended_at=iso(worker.get("ended_at")))


def egress_model(rec: EgressRecord, queue_position: int | None = None) -> EgressInfo:
    """An egress as the API shows it (the one translation the REST answers and the dashboard's events share)."""
    info = _egress(rec)
    info.queue_position = queue_position
    return info


def egress_info(rec: EgressRecord, queue_position: int | None = None) -> dict:
    """An egress as JSON for the API."""
    return egress_model(rec, queue_position).model_dump(by_alias=True)


def recording_info(rec: EgressRecord) -> dict:
    """An egress that writes a file (record or both mode) as the recordings API shows it."""
    shared = {k: getattr(_egress(rec), k) for k in Lifecycle.model_fields}
    return RecordingInfo(id=recording_id(rec.id), egress_id=rec.id,
                         file_type=rec.request.get("file", {}).get("file_type") or "MP4", **shared
                         ).model_dump(by_alias=True)
