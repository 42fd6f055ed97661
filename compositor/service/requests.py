"""What the service is asked: an egress or recording to start, destinations and layouts to change, the
auto-egress setting. These are the BaxCloud-shaped REST bodies; LiveKit's shapes are mapped onto them
(api/livekit_shape.py), and each becomes the worker's RecordRequest here and only here (`to_record_request`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ..errors import InvalidRequest
from ..layouts import CUSTOM_PREFIX, DEFAULT_LAYOUT, TEMPLATE, THEMES, builtin_layouts, resolve_layout
from ..livekit_room import SourceFacts
from ..presets import find_preset, preset_names
from ..request import (
    MAX_DURATION_S,
    AudioSpec,
    EncodingOptions,
    FileOutput,
    IdleStop,
    ImageOutput,
    Model,
    Overlays,
    ParticipantFilter,
    PauseSpec,
    RecordRequest,
    RoomSpec,
    SegmentOutput,
    StreamOutput,
    UploadSpec,
    first_error,
)
from ..storage import StorageConfig
from .webhooks import EGRESS_EVENTS


class FileSpec(Model):
    file_type: Literal["MP4", "WEBM", "OGG", "MP3"] | None = Field(
        None, description="default MP4 (OGG for a track egress); OGG and MP3 hold sound only (audio_only)")
    filepath: str | None = Field(None, description="the file's name in the storage: a template of {room_name}, "
                                 "{room_id}, {egress_id}, {time}, {utc}…; default {room_name}-{time}; a trailing / "
                                 "puts that default name in the folder")
    storage: StorageConfig | None = Field(None, description="where the file goes (default: the egress's storage)")


class SegmentSpec(SegmentOutput):
    storage: StorageConfig | None = Field(None, description="where the segments go (default: the egress's storage)")


class ImageSpec(ImageOutput):
    storage: StorageConfig | None = Field(None, description="where the thumbnails go (default: the egress's "
                                                            "storage)")


class StreamSpec(Model):
    urls: list[str] = Field(default_factory=list, max_length=16,
                            description="rtmp://, rtmps://, srt:// (or mux://KEY); may be empty and added later")
    retry_window: float = Field(60, ge=0, le=86400, description="seconds a dropped destination is retried")


class WebhookSpec(Model):
    """A receiver of this egress's own webhook events, beside the server's (LiveKit's WebhookConfig)."""

    url: str = Field(pattern=r"^https?://", max_length=2048,
                     description="http(s)://, reached under the server's outbound policy (public addresses or "
                                 "allowed_hosts) at every delivery; redirects are not followed")
    format: Literal["baxcloud", "livekit"] = Field(
        "baxcloud", description="baxcloud: our events, signed with the server's webhook_secret; livekit: LiveKit's "
                                "egress_started|updated|ended, signed as LiveKit signs them")
    signing_key: str | None = Field(None, max_length=256,
                                    description="LiveKit's signing_key: the API key whose secret signs the LiveKit "
                                                "format; only the server's livekit_api_key (the default)")
    include_events: list[str] = Field(default_factory=list, max_length=16,
                                      description="only these event names of the format (they win over excludes)")
    exclude_events: list[str] = Field(default_factory=list, max_length=16,
                                      description="every event name of the format but these")

    @field_validator("include_events", "exclude_events")
    @classmethod
    def _known_events(cls, names: list[str], info: ValidationInfo) -> list[str]:
        fmt = info.data.get("format", "baxcloud")
        unknown = [n for n in names if n not in EGRESS_EVENTS[fmt]]
        if unknown:
            raise ValueError(f"unknown {fmt} event {unknown[0]!r}; known: {', '.join(EGRESS_EVENTS[fmt])}")
        return names


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
    layout: LayoutName = DEFAULT_LAYOUT
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

    # Documented as `_outputs` checks it: a room, or a web page (which has none).
    model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": ["roomName"]}, {"required": ["webUrl"]}]})
    room_name: str = Field("", max_length=256, description="the room; a web egress (webUrl), which records a page, "
                                                           "has none unless you name one")
    mode: Literal["record", "stream", "both"] = "record"
    file: FileSpec | None = None
    stream: StreamSpec | None = None
    segments: SegmentSpec | None = Field(None, description="HLS; filenamePrefix is a name template in the storage")
    images: ImageSpec | None = Field(None, description="thumbnails; filenamePrefix is a name template in the storage")
    web_url: str | None = None
    await_start_signal: bool = Field(False, description="with web_url: record from the page's START_RECORDING "
                                     "console message on (LiveKit's web egress signal), not from its load")
    template_url: str | None = Field(None, pattern=r"^https?://", max_length=2048,
                                     description="record the LiveKit room through your own page (LiveKit's "
                                                 "custom_base_url, e.g. one built on @livekit/egress-sdk)")
    max_duration: float | None = Field(None, gt=0, le=MAX_DURATION_S,
                                       description="seconds; the egress ends LIMIT_REACHED")
    audio_only: bool = False
    video_only: bool = False
    audio: AudioSpec | None = Field(None, description="which voice plays in which channel: routes by track, "
                                                      "identity or participant kind, or a dual-channel mixing")
    queue: bool = Field(False, description="over capacity: wait in the bounded queue instead of a 503")
    storage: StorageConfig | None = Field(None, description="where the outputs go (default: the server's storage)")
    backup_storage: StorageConfig | None = Field(None, description="used if the storage refuses for good")
    participant: ParticipantTarget | None = Field(None, description="record one participant of the LiveKit room")
    track_composite: TrackCompositeTarget | None = Field(None, description="record one audio and one video track")
    track: TrackTarget | None = Field(None, description="record one audio track (OGG file or WebSocket)")
    webhooks: list[WebhookSpec] = Field(default_factory=list, max_length=8,
                                        description="receivers of this egress's own events, beside the server's")
    idle_stop: IdleStop | None = Field(None, description="end COMPLETE (stopped_by idle) when the room is empty, "
                                                         "has no publisher, or is all muted this long; each field "
                                                         "overrides the server's default (off unless it sets one)")
    participants: ParticipantFilter | None = Field(
        None, description="who is recorded: {include: [identities]} or {exclude: [identities]}; the others are "
                          "neither seen nor heard. Change it while recording with POST /v1/egress/{id}/participants")
    pause: PauseSpec | None = Field(None, description="what live destinations show while the egress is paused "
                                                      "(POST /v1/egress/{id}/pause): {slateUrl} (default: a plain "
                                                      "\"We'll be right back\" card)")
    sidecars: bool | None = Field(None, description="write `<file name>.participants.json` (who was in the room "
                                                    "when) and `<file name>.speakers.json` (who spoke when) next "
                                                    "to the file, in its storage (default: yes for a room; a web "
                                                    "page or templateUrl has none)")

    @model_validator(mode="after")
    def _outputs(self) -> StartEgressRequest:
        if not self.room_name and not self.web_url:
            # Typed here, not a ValueError: the message names the field as a missing one would.
            raise InvalidRequest("roomName is required (only a web egress, which records a page, may leave it out)",
                                 details={"field": "roomName"})
        picks = [k for k in ("participant", "track_composite", "track") if getattr(self, k)]
        if len(picks) > 1:
            raise ValueError(f"give one of participant, track_composite and track, not {' and '.join(picks)}")
        if picks and (self.room is not None or self.web_url):
            raise ValueError(f"{picks[0]} picks from the LiveKit room; give no room or web_url")
        if self.participants and (picks or self.web_url):
            raise InvalidRequest(f"participants: {picks[0] if picks else 'web_url'} "
                                 f"{'already picks whom it records' if picks else 'records a page, not a room'}",
                                 details={"field": "participants"})
        if self.track and (self.stream or self.segments or self.images or self.file_type != "OGG"):
            raise ValueError("a track egress writes an OGG file or sends to a WebSocket; nothing else")
        if self.mode in ("stream", "both") and not self.stream:
            raise ValueError(f"mode {self.mode!r} needs stream (urls may be empty and added later)")
        if self.mode == "record" and self.stream:
            raise ValueError("mode 'record' takes no stream; use mode 'both'")
        if self.mode == "stream" and self.file:
            raise ValueError("mode 'stream' writes no file; use mode 'both'")
        if self.idle_stop and (self.web_url or self.template_url):
            raise InvalidRequest("idleStop watches the room through our layout page: not with webUrl or "
                                 "templateUrl", details={"field": "idleStop"})
        if self.sidecars and (self.web_url or self.template_url):
            raise InvalidRequest("sidecars come from the room our layout page renders: not with webUrl or "
                                 "templateUrl", details={"field": "sidecars"})
        if self.sidecars and not self.wants_file:
            raise InvalidRequest("sidecars go next to the file: this egress writes none", details={"field": "sidecars"})
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

    def to_record_request(self, paths: dict[str, str], upload: UploadSpec, server: ServerFacts,
                          source: SourceFacts = SourceFacts()) -> RecordRequest:
        """The worker's request, with each output at its path (`paths`: file, segments and images prefixes), on
        this server (its room server, custom layouts and session limits), of this source (what the LiveKit
        server said of it). InvalidRequest for combinations the worker's model refuses (audio_only with
        video_only, a room and a web URL at once)."""
        output = paths.get("file")
        # The worker's own models, at their paths; their storages are in `upload` (UploadSpec.outputs).
        moved = {k: model.model_validate(getattr(self, k).model_dump(exclude={"storage"})
                                         | {"filename_prefix": paths[k]})
                 for k, model in (("segments", SegmentOutput), ("images", ImageOutput)) if getattr(self, k)}
        room, audio_only, video_only = self.room, self.audio_only, self.video_only
        if server.room_server and room is None and not self.web_url:
            # With a LiveKit server configured, a room name names one of its rooms.
            room = RoomSpec(kind="livekit")
        page = self.page
        if self.layout.startswith(CUSTOM_PREFIX):
            # The worker gets the folder; the caller only ever names a layout of layouts_dir.
            ref = resolve_layout(self.layout, self.layout_params, server.layouts_dir)
            page["layout"] = str(ref.folder if ref.template == TEMPLATE else ref.folder / ref.template)
        # Session limits: the shortest that applies to one of its outputs ends the egress LIMIT_REACHED.
        limits = [d for d, applies in ((self.max_duration, True), (server.max_file_duration_s, output),
                                       (server.max_stream_duration_s, self.stream),
                                       (server.max_segment_duration_s, self.segments)) if d and applies]
        if self.participant:
            room = RoomSpec(kind="livekit", identity=self.participant.identity,
                            screen_share=self.participant.screen_share)
        elif self.track_composite:
            tc = self.track_composite
            room = RoomSpec(kind="livekit", track_ids=[t for t in (tc.audio_track_id, tc.video_track_id) if t])
            audio_only, video_only = audio_only or not tc.video_track_id, video_only or not tc.audio_track_id
        elif self.track:
            room, audio_only = RoomSpec(kind="livekit", track_ids=[self.track.track_id]), True
        # A track's file keeps the track's channels, as LiveKit's (untranscoded) track egress does; the WebSocket
        # sends stereo PCM whatever the track.
        channels = source.channels if self.track and not self.track.websocket_url and source.channels else 2
        # The server's idle stop holds for every egress our layout page records, field by field under the caller's.
        idle = self.idle_stop
        if server.idle_stop and not (self.web_url or self.template_url):
            idle = server.idle_stop.model_copy(update=idle.model_dump(exclude_none=True) if idle else {})
        try:
            return RecordRequest(
                room_name=self.room_name, room=room, web_url=self.web_url, template_url=self.template_url, **page,
                await_start_signal=self.await_start_signal,
                preset=self.quality, advanced=self.advanced,
                file=FileOutput(filepath=output, file_type=self.file_type) if output else None,
                stream=StreamOutput(urls=self.stream.urls, retry_window=self.stream.retry_window) if self.stream
                else None, **moved, websocket=self.track.websocket_url if self.track else None,
                duration=min(limits) if limits else None, audio_only=audio_only, video_only=video_only,
                audio_channels=channels, audio=self.audio, participants=self.participants, upload=upload,
                idle_stop=idle, pause=self.pause, sidecars=self.sidecars)
        except ValidationError as exc:
            raise InvalidRequest(first_error(exc)) from None


@dataclass(frozen=True)
class ServerFacts:
    """What of the server's settings shapes a worker's request."""

    #: a LiveKit server is configured: a bare room name is one of its rooms
    room_server: bool = False
    #: where custom/NAME layouts live
    layouts_dir: Path | None = None
    #: session limits per output kind (seconds; None: none)
    max_file_duration_s: float | None = None
    max_stream_duration_s: float | None = None
    max_segment_duration_s: float | None = None
    #: idle stop of every room egress, under each request's own fields (None: off)
    idle_stop: IdleStop | None = None


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


class UpdateParticipantsRequest(ParticipantFilter):
    """POST /v1/egress/{id}/participants: who a running egress records from now on (replaces the filter it had):
    {include: [identities]} or {exclude: [identities]}."""


class StartRecordingRequest(RoomRequest):
    """POST /v1/recordings/start: a record-only egress."""

    file_type: Literal["MP4", "WEBM", "OGG", "MP3"] = "MP4"
    filepath: str | None = Field(None, description="the file's name in the storage (see file.filepath)")
    audio_only: bool = Field(False, description="the room's sound alone (an MP3 needs it)")
    storage: StorageConfig | None = None
    backup_storage: StorageConfig | None = None
    idle_stop: IdleStop | None = Field(None, description="as on /v1/egress/start")
    sidecars: bool | None = Field(None, description="as on /v1/egress/start")

    def to_egress_request(self) -> StartEgressRequest:
        return StartEgressRequest(room_name=self.room_name, mode="record", **self.page, quality=self.quality,
                                  advanced=self.advanced, file=FileSpec(file_type=self.file_type,
                                                                        filepath=self.filepath),
                                  room=self.room, storage=self.storage, backup_storage=self.backup_storage,
                                  audio_only=self.audio_only, idle_stop=self.idle_stop, sidecars=self.sidecars)


class AutoEgressConfig(Model):
    """GET/PUT /v1/egress/auto-egress: start an egress by itself when a room qualifies."""

    enabled: bool = False
    mode: Literal["record", "stream", "both"] = "record"
    layout: LayoutName = DEFAULT_LAYOUT
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
