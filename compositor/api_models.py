"""The HTTP API's shapes (BaxCloud Stream Out): requests in, egress info out."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, model_validator

from .destinations import StreamTarget
from .layouts import CUSTOM_PREFIX, THEMES, builtin_layouts, resolve_layout
from .presets import find_preset, preset_names
from .request import (MAX_DURATION_S, EncodingOptions, FileOutput, ImageOutput, Model, Overlays, RecordRequest,
                      RoomSpec, SegmentOutput, StreamOutput, UploadSpec)
from .storage import StorageConfig
from .store import EgressRecord


class FileSpec(Model):
    file_type: Literal["MP4", "WEBM", "OGG"] | None = Field(None, description="default MP4 (OGG for a track egress)")
    filepath: str | None = Field(None, description="the file's name in the storage: a template of {room_name}, "
                                 "{room_id}, {egress_id}, {time}, {utc}…; default {room_name}-{time}; a trailing / "
                                 "puts that default name in the folder")


class StreamSpec(Model):
    urls: list[str] = Field(default_factory=list, max_length=16,
                            description="rtmp://, rtmps://, srt:// (or mux://KEY); may be empty and added later")
    retry_window: float = Field(60, ge=0, le=86400, description="seconds a dropped destination is retried")


def _layout_names() -> list[str]:
    return [f"{n}{suffix}" for n in builtin_layouts() for suffix in ("", *(f"-{t}" for t in THEMES))]


# Documented as enums so clients (and schema-driven tests) know the valid names.
LayoutName = Annotated[str, Field(json_schema_extra={"anyOf": [
    {"enum": _layout_names()},
    {"pattern": r"^custom/[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", "description": "a layout of the server's layouts_dir"}]})]
QualityName = Annotated[str, Field(json_schema_extra={"enum": preset_names()})]


class RoomRequest(Model):
    """What every start request names: the room and how to render it."""

    room_name: str = Field(min_length=1, max_length=256)
    layout: LayoutName = "default"
    quality: QualityName = "720p"
    advanced: EncodingOptions | None = None
    room: RoomSpec | None = Field(None, description="a synthetic room's participants (no room server needed)")
    layout_params: dict[str, str | float | bool | None] = Field(
        default_factory=dict, description="values for the parameters the layout declares (its layout.json)")
    overlays: Overlays = Field(default_factory=Overlays)

    @model_validator(mode="after")
    def _served_layout(self) -> RoomRequest:
        # A path would let a caller render any template (or show any image) on the server's disk.
        if (("/" in self.layout and not self.layout.startswith(CUSTOM_PREFIX)) or self.layout.endswith(".j2")):
            raise ValueError(f"layout must be a built-in layout name, or {CUSTOM_PREFIX}NAME for a layout of the "
                             "server's layouts_dir")
        if self.overlays.logo and not self.overlays.logo_is_url:
            raise ValueError("overlays.logo must be an http(s) URL")
        return self

    @property
    def page(self) -> dict:
        """The fields that say how the page looks, as the worker's request names them."""
        return {"layout": self.layout, "layout_params": self.layout_params, "overlays": self.overlays}


class ParticipantTarget(Model):
    """Participant egress: one person of the LiveKit room, camera and microphone (or screen share and its sound)."""

    identity: str = Field(min_length=1, max_length=256)
    screen_share: bool = False


class TrackCompositeTarget(Model):
    """TrackComposite egress: one audio and one video track of the LiveKit room, by track id."""

    audio_track_id: str | None = Field(None, min_length=1, max_length=128)
    video_track_id: str | None = Field(None, min_length=1, max_length=128)

    @model_validator(mode="after")
    def _some(self) -> TrackCompositeTarget:
        if not (self.audio_track_id or self.video_track_id):
            raise ValueError("give audio_track_id, video_track_id or both")
        return self


class TrackTarget(Model):
    """Track egress: one audio track of the LiveKit room, to a WebSocket as raw PCM or to an OGG file."""

    track_id: str = Field(min_length=1, max_length=128)
    websocket_url: str | None = Field(None, pattern=r"^wss?://", max_length=2048,
                                      description="ws(s):// that receives 16-bit little-endian PCM frames")


class StartEgressRequest(RoomRequest):
    """POST /v1/egress/start."""

    mode: Literal["record", "stream", "both"] = "record"
    file: FileSpec | None = None
    stream: StreamSpec | None = None
    segments: SegmentOutput | None = Field(None, description="HLS; filenamePrefix is a name template in the storage")
    images: ImageOutput | None = Field(None, description="thumbnails; filenamePrefix is a name template in the storage")
    web_url: str | None = None
    template_url: str | None = Field(None, pattern=r"^https?://", max_length=2048,
                                     description="record the LiveKit room through your own page (LiveKit's "
                                                 "custom_base_url, e.g. one built on @livekit/egress-sdk)")
    max_duration: float | None = Field(None, gt=0, le=MAX_DURATION_S,
                                       description="seconds; the egress ends LIMIT_REACHED")
    audio_only: bool = False
    video_only: bool = False
    queue: bool = Field(False, description="over capacity: wait in the bounded queue instead of a 503")
    storage: StorageConfig | None = Field(None, description="where the outputs go (default: the server's storage)")
    backup_storage: StorageConfig | None = Field(None, description="used if the storage refuses for good")
    participant: ParticipantTarget | None = Field(None, description="record one participant of the LiveKit room")
    track_composite: TrackCompositeTarget | None = Field(None, description="record one audio and one video track")
    track: TrackTarget | None = Field(None, description="record one audio track (OGG file or WebSocket)")

    @model_validator(mode="after")
    def _outputs(self) -> StartEgressRequest:
        picks = [k for k in ("participant", "track_composite", "track") if getattr(self, k)]
        if len(picks) > 1:
            raise ValueError(f"give one of participant, track_composite and track, not {' and '.join(picks)}")
        if picks and (self.room is not None or self.web_url):
            raise ValueError(f"{picks[0]} picks from the LiveKit room; give no room or web_url")
        if self.track and (self.stream or self.segments or self.images or self.file_type != "OGG"):
            raise ValueError("a track egress writes an OGG file or sends to a WebSocket; nothing else")
        if self.mode in ("stream", "both") and not self.stream:
            raise ValueError(f"mode {self.mode!r} needs stream (urls may be empty and added later)")
        if self.mode == "record" and self.stream:
            raise ValueError("mode 'record' takes no stream; use mode 'both'")
        if self.mode == "stream" and self.file:
            raise ValueError("mode 'stream' writes no file; use mode 'both'")
        return self

    @property
    def file_type(self) -> str:
        """The file's container: as asked, else OGG for a track egress and MP4 for the others."""
        return (self.file and self.file.file_type) or ("OGG" if self.track else "MP4")

    @property
    def kind(self) -> str:
        """LiveKit's name for the egress type: room_composite, web, participant, track_composite or track."""
        picked = next((k for k in ("participant", "track_composite", "track") if getattr(self, k)), None)
        return picked or ("web" if self.web_url else "room_composite")

    @property
    def wants_file(self) -> bool:
        """A file is written in record and both modes, unless a record-mode request asks only for HLS segments
        (or a track egress sends to a WebSocket instead)."""
        if self.track and self.track.websocket_url:
            return self.file is not None
        if self.mode == "record":
            return self.file is not None or self.segments is None
        return self.mode == "both"

    def to_record_request(self, paths: dict[str, str], upload: UploadSpec) -> RecordRequest:
        """The worker's request, with each output at its path (`paths`: file, segments and images prefixes)."""
        output = paths.get("file")
        moved = {k: getattr(self, k).model_copy(update={"filename_prefix": paths[k]})
                 for k in ("segments", "images") if getattr(self, k)}
        room, audio_only, video_only = self.room, self.audio_only, self.video_only
        if self.participant:
            room = RoomSpec(kind="livekit", identity=self.participant.identity,
                            screen_share=self.participant.screen_share)
        elif self.track_composite:
            tc = self.track_composite
            room = RoomSpec(kind="livekit", track_ids=[t for t in (tc.audio_track_id, tc.video_track_id) if t])
            audio_only, video_only = audio_only or not tc.video_track_id, video_only or not tc.audio_track_id
        elif self.track:
            room, audio_only = RoomSpec(kind="livekit", track_ids=[self.track.track_id]), True
        return RecordRequest(
            room_name=self.room_name, room=room, web_url=self.web_url, template_url=self.template_url, **self.page,
            preset=self.quality, advanced=self.advanced,
            file=FileOutput(filepath=output, file_type=self.file_type) if output else None,
            stream=StreamOutput(urls=self.stream.urls, retry_window=self.stream.retry_window) if self.stream else None,
            **moved, websocket=self.track.websocket_url if self.track else None,
            duration=self.max_duration, audio_only=audio_only, video_only=video_only, upload=upload)


class UpdateStreamsRequest(Model):
    """POST /v1/egress/{id}/streams: destinations to add and remove while live."""

    add: list[str] = Field(default_factory=list, max_length=16,
                           validation_alias=AliasChoices("add", "add_output_urls", "addOutputUrls"))
    remove: list[str] = Field(default_factory=list, max_length=16,
                              validation_alias=AliasChoices("remove", "remove_output_urls", "removeOutputUrls"))

    @model_validator(mode="after")
    def _something(self) -> UpdateStreamsRequest:
        if not self.add and not self.remove:
            raise ValueError("give add or remove (a list of stream URLs)")
        return self


class UpdateLayoutRequest(Model):
    """POST /v1/egress/{id}/layout: another built-in layout while recording (any name a template knows, for an
    egress recorded through template_url)."""

    layout: LayoutName = Field(min_length=1, max_length=128)


class StartRecordingRequest(RoomRequest):
    """POST /v1/recordings/start: a record-only egress."""

    file_type: Literal["MP4", "WEBM", "OGG"] = "MP4"
    filepath: str | None = Field(None, description="the file's name in the storage (see file.filepath)")
    storage: StorageConfig | None = None
    backup_storage: StorageConfig | None = None

    def to_egress_request(self) -> StartEgressRequest:
        return StartEgressRequest(room_name=self.room_name, mode="record", **self.page, quality=self.quality,
                                  advanced=self.advanced, file=FileSpec(file_type=self.file_type,
                                                                        filepath=self.filepath),
                                  room=self.room, storage=self.storage, backup_storage=self.backup_storage)


class AutoEgressConfig(Model):
    """GET/PUT /v1/egress/auto-egress: start an egress by itself when a room qualifies."""

    enabled: bool = False
    mode: Literal["record", "stream", "both"] = "record"
    layout: LayoutName = "default"
    quality: QualityName = "720p"
    min_participants: int = Field(1, ge=1, le=1000)
    delay_seconds: float = Field(0, ge=0, le=3600)
    room_name_pattern: str = Field("*", min_length=1, max_length=256, description="glob, e.g. meeting-*")

    @model_validator(mode="after")
    def _known(self) -> AutoEgressConfig:
        resolve_layout(self.layout)
        if find_preset(self.quality) is None:
            raise ValueError(f"unknown quality {self.quality!r}")
        return self


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


Status = Literal["STARTING", "ACTIVE", "ENDING", "COMPLETE", "FAILED", "ABORTED", "LIMIT_REACHED"]


class StreamInfo(Model):
    """One live destination: its own status, retries and last error (the URL's key redacted)."""

    url: str
    status: Literal["STARTING", "ACTIVE", "RECONNECTING", "FAILED", "FINISHED"]
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


class EgressInfo(Lifecycle):
    """An egress as the API shows it (the seed's getStreamStatus fields)."""

    id: str
    type: str
    mode: str
    kind: str = Field("room_composite", description="LiveKit's egress type: room_composite, web, participant, "
                                                    "track_composite or track")
    queue_position: int | None = Field(None, description="1 = next to start, while waiting for capacity")
    streams: list[StreamInfo] = Field(default_factory=list)
    segments: SegmentsResult | None = None
    images: ImagesResult | None = None
    manifest: str | None = Field(None, description="where the manifest ({egress_id}.json) of the outputs is")


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


class DownloadUrl(Model):
    download_url: str
    expires_at: str


class ErrorDetail(Model):
    code: str
    message: str
    details: dict


class ErrorBody(Model):
    error: ErrorDetail


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
                      file=FileResult.model_validate(rec.file) if rec.file else None,
                      streams=[stream_info(s) for s in rec.streams or []],
                      segments=SegmentsResult.model_validate(outputs["segments"]) if outputs.get("segments") else None,
                      images=ImagesResult.model_validate(outputs["images"]) if outputs.get("images") else None,
                      manifest=outputs.get("manifest"))


def stream_info(worker: dict) -> StreamInfo:
    """A destination as the worker reports it (epoch times), as the API shows it."""
    return StreamInfo(**{k: worker.get(k) for k in ("url", "status", "error", "error_code")},
                      retries=worker.get("retries", 0), last_retry_at=iso(worker.get("last_retry_at")),
                      started_at=iso(worker.get("started_at")), ended_at=iso(worker.get("ended_at")))


def pending_streams(targets: tuple[StreamTarget, ...]) -> list[dict]:
    """Destinations of a new egress, before its worker reports on them."""
    return [{"url": t.redacted, "status": "STARTING", "retries": 0} for t in targets]


def egress_info(rec: EgressRecord, queue_position: int | None = None) -> dict:
    """An egress as JSON for the API."""
    info = _egress(rec)
    info.queue_position = queue_position
    return info.model_dump(by_alias=True)


def recording_info(rec: EgressRecord) -> dict:
    """A record-mode egress as the recordings API shows it."""
    shared = {k: getattr(_egress(rec), k) for k in Lifecycle.model_fields}
    return RecordingInfo(id=recording_id(rec.id), egress_id=rec.id,
                         file_type=rec.request.get("file", {}).get("file_type") or "MP4", **shared
                         ).model_dump(by_alias=True)
