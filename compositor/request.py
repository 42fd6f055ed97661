"""The egress request: what a caller asks for, validated at the edge.

The same models serve `compositor record --config request.json` and (later)
the HTTP API. Field names are snake_case; camelCase spellings are accepted
too, so BaxCloud-style (`roomName`, `fileType`) and LiveKit-style
(`room_name`, `file_type`) bodies both validate.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .errors import InvalidRequest
from .layouts import DEFAULT_LAYOUT
from .storage.config import StorageConfig

COLOR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")

# Distinct, saturated colours and tones 100 Hz apart (none a harmonic of
# another below 1 kHz) so tests can tell participants apart by pixel and pitch.
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
           "#bfef45", "#469990", "#9a6324", "#800000", "#808000", "#000075", "#a9a9a9"]
TONES = [350, 450, 550, 650, 750, 850, 950, 1050, 1150, 1250, 1350, 1450, 1550, 1650]
SCREENSHARE_COLOR = "#f0f0f0"


# The longest session a request may ask for (a week): past it a number is a mistake, or an attack.
MAX_DURATION_S = 7 * 24 * 3600


class Model(BaseModel):
    # allow_inf_nan: JSON's Infinity and NaN are no numbers of seconds, Hz or sizes.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", allow_inf_nan=False)


class Window(Model):
    """A span of room time in seconds, counted from START_RECORDING."""

    start: float = Field(ge=0)
    end: float

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.end <= self.start:
            raise ValueError(f"window end {self.end} must be after its start {self.start}")
        return self


class ScreenShare(Window):
    color: str = SCREENSHARE_COLOR

    @field_validator("color")
    @classmethod
    def _color(cls, v: str) -> str:
        return check_color(v)


# LiveKit's ParticipantInfo.Kind names, lowercased (the JWT's `kind` claim spells them so).
ParticipantKind = Literal["standard", "ingress", "egress", "sip", "agent", "connector", "bridge"]
AudioChannel = Literal["both", "left", "right"]


class ParticipantSpec(Model):
    """One scripted participant of a synthetic room."""

    name: str = Field(min_length=1, max_length=64)
    color: str
    tone: float = Field(ge=0, le=20000, description="Hz of the voice; 0 = silent")
    speaks: list[Window] | None = Field(None, description="None: speaks all the time; []: never")
    screenshare: ScreenShare | None = None
    joins: float = Field(0, ge=0)
    leaves: float | None = None
    video: str | None = Field(None, description="media file or URL looped as camera; 'off': no camera")
    freezes: list[Window] = Field([], description="spans when the camera's picture stops, as when the publisher's "
                                                  "network drops")
    mutes: list[Window] = Field([], description="spans when the microphone is muted: silent, the mute icon shows")
    kind: ParticipantKind = Field("standard", description="what LiveKit would call them (agent, sip, …): audio "
                                                          "routes and dual-channel mixing go by it")

    @field_validator("color")
    @classmethod
    def _color(cls, v: str) -> str:
        return check_color(v)

    @field_validator("tone")
    @classmethod
    def _tone(cls, v: float) -> float:
        if 0 < v < 20:
            raise ValueError("tone must be 0 (silent) or at least 20 Hz")
        return v

    @model_validator(mode="after")
    def _presence(self) -> ParticipantSpec:
        if self.leaves is not None and self.leaves <= self.joins:
            raise ValueError(f"leaves ({self.leaves}) must be after joins ({self.joins})")
        return self

    @property
    def has_camera(self) -> bool:
        return self.video != "off"


class AudioRoute(Model):
    """Which voice goes to which channel: one track, one participant, or every participant of a kind."""

    track_id: str | None = Field(None, min_length=1, max_length=128)
    participant_identity: str | None = Field(None, min_length=1, max_length=256)
    participant_kind: ParticipantKind | None = None
    channel: AudioChannel = "both"

    @field_validator("participant_kind", "channel", mode="before")
    @classmethod
    def _lower(cls, v):
        # LiveKit spells them AGENT and AUDIO_CHANNEL_LEFT.
        return v.lower().removeprefix("audio_channel_") if isinstance(v, str) else v

    @model_validator(mode="after")
    def _one_selector(self) -> AudioRoute:
        named = [to_camel(k) for k in ("track_id", "participant_identity", "participant_kind")
                 if getattr(self, k) is not None]
        if len(named) != 1:
            raise ValueError("a route names exactly one of trackId, participantIdentity and participantKind"
                             + (f", not {' and '.join(named)}" if named else ""))
        return self


class AudioSpec(Model):
    """How the room's voices share the two channels (LiveKit's AudioConfig and audio_mixing).

    Without routes or mixing every voice plays in both channels, as it does with no `audio` at all. With routes
    (LiveKit's semantics), a route both picks a voice and places it: the voices no route names are left out,
    unless capture_all puts them in both channels. A voice several routes name takes the most specific one
    (track, then identity, then kind), then the first listed. Mixing places everyone by a rule instead:
    dual_channel_agent puts agents left and everyone else right; dual_channel_alternate puts participants
    left, right, left… as they are first heard (those present in the order they joined), each keeping their
    side.
    """

    routes: list[AudioRoute] = Field(default_factory=list, max_length=64)
    capture_all: bool = Field(False, description="with routes: the voices no route names play in both channels "
                                                 "(otherwise they are left out)")
    mixing: Literal["default", "dual_channel_agent", "dual_channel_alternate"] = "default"

    @field_validator("mixing", mode="before")
    @classmethod
    def _mixing(cls, v):
        # LiveKit's AudioMixing names: DEFAULT_MIXING, DUAL_CHANNEL_AGENT, DUAL_CHANNEL_ALTERNATE.
        return ("default" if v.upper() == "DEFAULT_MIXING" else v.lower()) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _one_rule(self) -> AudioSpec:
        if self.routes and self.mixing != "default":
            raise ValueError(f"give routes or mixing {self.mixing!r}, not both: mixing places every voice itself")
        return self

    @property
    def routed(self) -> bool:
        """Some voice may play elsewhere than in both channels (or not at all)."""
        return bool(self.routes) or self.mixing != "default"


# The longest an idle room is waited for (a day): past it, idle stop is not what the caller means.
MAX_IDLE_S = 24 * 3600


class IdleStop(Model):
    """End the egress by itself (COMPLETE, stopped_by idle) when its room has been idle this long, as Jibri does.
    Each condition is off unless given; they are watched from START_RECORDING on."""

    no_publisher_seconds: float | None = Field(None, gt=0, le=MAX_IDLE_S,
                                               description="no one has published a track for this long")
    all_muted_seconds: float | None = Field(None, gt=0, le=MAX_IDLE_S,
                                            description="every published track has been muted for this long")
    empty_seconds: float | None = Field(None, gt=0, le=MAX_IDLE_S,
                                        description="no one but the recorder has been in the room for this long")

    @property
    def enabled(self) -> bool:
        """Some condition is watched."""
        return any(v is not None for v in (self.no_publisher_seconds, self.all_muted_seconds, self.empty_seconds))


class PauseSpec(Model):
    """What live destinations show while the egress is paused (files and HLS leave the paused span out)."""

    slate_url: str | None = Field(None, pattern=r"^https?://", max_length=2048,
                                  description="a still image (PNG, JPEG, WebP or GIF, at most 5 MB) shown full "
                                              "frame; default: a plain \"We'll be right back\" card")


# How many identities a participant filter may name: enough for any meeting, bounded for the page's URL.
MAX_FILTERED = 100


class ParticipantFilter(Model):
    """Who is recorded (consent): only the identities `include` names, or everyone but those `exclude` names;
    one of the two. Whom it leaves out is neither seen nor heard; the egress's room changes as when they leave."""

    include: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        None, max_length=MAX_FILTERED, description="record these identities only (an empty list: nobody)")
    exclude: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        None, max_length=MAX_FILTERED, description="record everyone but these identities")

    @model_validator(mode="after")
    def _one_list(self) -> ParticipantFilter:
        if (self.include is None) == (self.exclude is None):
            raise ValueError("give include or exclude (a list of identities), not both" if self.include is not None
                             else "give include or exclude (a list of identities)")
        return self


class RoomSpec(Model):
    kind: Literal["synthetic", "livekit"] = "synthetic"
    participants: list[ParticipantSpec] = Field(default_factory=list, max_length=100,
                                                description="a synthetic room's people")
    identity: str | None = Field(None, min_length=1, max_length=256,
                                 description="LiveKit: record this participant only (participant egress)")
    screen_share: bool = Field(False, description="with identity: their screen share and its sound, not camera "
                                                  "and microphone")
    track_ids: list[str] = Field(default_factory=list, max_length=2,
                                 description="LiveKit: record these tracks only (track composite / track egress)")

    @model_validator(mode="after")
    def _kind(self) -> RoomSpec:
        if self.kind == "livekit" and self.participants:
            raise ValueError("a LiveKit room's participants are the people in it; give none")
        if self.kind != "livekit" and (self.identity or self.track_ids):
            raise ValueError("identity and track_ids pick from a LiveKit room")
        if self.identity and self.track_ids:
            raise ValueError("give identity or track_ids, not both")
        return self


class EncodingOptions(Model):
    """Advanced encoding: each field overrides the preset's value."""

    width: int | None = Field(None, ge=16, le=3840)
    height: int | None = Field(None, ge=16, le=3840)
    framerate: int | None = Field(None, ge=1, le=60)
    video_bitrate: int | None = Field(None, ge=100, le=50000, description="kbps")
    audio_bitrate: int | None = Field(None, ge=16, le=512, description="kbps")
    audio_frequency: Literal[44100, 48000] | None = None
    video_codec: Literal["H264", "H264_BASELINE", "H264_MAIN", "H264_HIGH", "VP8", "VP9"] | None = Field(
        None, description="H264 (x264's profile for the settings: High) or H264_BASELINE/_MAIN/_HIGH for that "
                          "H.264 profile (LiveKit's names), VP8, VP9")
    key_frame_interval: float | None = Field(None, gt=0, le=20, description="seconds")
    x264_preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"] | None = None

    @field_validator("width", "height")
    @classmethod
    def _even(cls, v: int | None) -> int | None:
        if v is not None and v % 2:
            raise ValueError("must be even (4:2:0 video)")
        return v


class FileOutput(Model):
    filepath: str = Field(min_length=1)
    file_type: Literal["MP4", "WEBM", "OGG", "MP3"] | None = None

    @field_validator("file_type", mode="before")
    @classmethod
    def _upper(cls, v):
        return v.upper() if isinstance(v, str) else v


class StreamOutput(Model):
    """Live destinations: one encode pushed to each URL by its own connection."""

    urls: list[str] = Field(default_factory=list, max_length=16,
                            description="rtmp://, rtmps://, srt:// (or mux://KEY); may start empty and be added later")
    retry_window: float = Field(60, ge=0, le=86400,
                                description="seconds a dropped destination is retried before it is FAILED")
    tls_verify: bool = Field(True, description="verify rtmps:// certificates")
    ca_file: str | None = Field(None, description="PEM file of CAs to trust for rtmps:// (default: the system's)")


class NumberedFiles(Model):
    """Outputs that write a series of files: PREFIX + index or timestamp suffix."""

    filename_prefix: str = Field(min_length=1, description="path prefix of the files")
    filename_suffix: Literal["INDEX", "TIMESTAMP"] = "INDEX"

    @field_validator("filename_suffix", mode="before")
    @classmethod
    def _suffix(cls, v):
        # LiveKit spells them IMAGE_SUFFIX_INDEX and so on.
        return v.upper().removeprefix("IMAGE_SUFFIX_") if isinstance(v, str) else v


class SegmentOutput(NumberedFiles):
    """HLS: MPEG-TS segments, a playlist of all of them and optionally a sliding live playlist."""

    playlist_name: str | None = Field(None, description="file name next to the segments (default PREFIX.m3u8)")
    live_playlist_name: str | None = Field(None, description="a playlist of the last few segments only")
    segment_duration: float = Field(2, ge=1, le=60, description="seconds")


class ImageOutput(NumberedFiles):
    """JPEG thumbnails every capture_interval seconds."""

    filename_suffix: Literal["INDEX", "TIMESTAMP", "NONE_OVERWRITE"] = Field(
        "INDEX", description="PREFIX_00000.jpg…, PREFIX_<time>.jpg…, or NONE_OVERWRITE: one PREFIX.jpeg, "
                             "overwritten at each capture (an always-current thumbnail)")
    capture_interval: float = Field(10, ge=1, le=3600, description="seconds")
    width: int | None = Field(None, ge=16, le=3840, description="default: the video's")
    height: int | None = Field(None, ge=16, le=3840, description="default: the video's")


LOGO_POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right")


class Overlays(Model):
    """What the base page draws over any layout, each on or off per request."""

    names: bool = Field(True, description="a name label on every video tile (a screen share's says whose it is)")
    title: str | None = Field(None, min_length=1, max_length=120, description="a title bar across the top")
    logo: str | None = Field(None, max_length=2048,
                             description="watermark image: an http(s) URL (the page must be allowed to reach its "
                                         "host), or on the command line a local file")
    logo_position: Literal[LOGO_POSITIONS] = "bottom-right"
    clock: bool = Field(False, description="a clock, hh:mm:ss, in the top-right corner")
    clock_timezone: str = Field("UTC", max_length=64, description="IANA time zone of the clock")

    @field_validator("clock_timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ValueError, ZoneInfoNotFoundError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name such as Europe/Paris)") from None
        return v

    @property
    def logo_is_url(self) -> bool:
        return bool(self.logo) and self.logo.startswith(("http://", "https://"))


#: The kinds of stored output: a file, HLS segments (with their playlists), thumbnails.
OutputKind = Literal["file", "segments", "images"]


class UploadSpec(Model):
    """Where a worker's outputs go: written under `staging` (a path's place there is its storage key),
    then stored in `storage` (or `backup`, if it refuses for good)."""

    storage: StorageConfig
    backup: StorageConfig | None = None
    #: an output kind's own storage (file, segments, images), where it is not `storage`
    outputs: dict[OutputKind, StorageConfig] = Field(default_factory=dict)
    staging: str = Field(min_length=1, description="local folder the outputs are written in")
    local_root: str | None = Field(None, description="the local storage's folder (for a local storage or backup)")
    retry_window_s: float = Field(300, gt=0, le=86400, description="seconds transient failures are retried")

    def storage_of(self, kind: OutputKind) -> StorageConfig:
        """Where outputs of `kind` go."""
        return self.outputs.get(kind, self.storage)

    @property
    def in_place(self) -> bool:
        """The outputs are written where they are stored (local storage staged in its own folder)."""
        return (all(s.kind == "local" for s in (self.storage, *self.outputs.values())) and self.local_root is not None
                and Path(self.local_root).resolve() == Path(self.staging).resolve())


class RecordRequest(Model):
    """One egress as the worker receives it."""

    room_name: str = "synthetic"
    room: RoomSpec | None = None
    web_url: str | None = None
    await_start_signal: bool = Field(False, description="with web_url: record from the page's START_RECORDING on")
    template_url: str | None = Field(None, pattern=r"^https?://", max_length=2048,
                                     description="a LiveKit room rendered by your own page (LiveKit's "
                                                 "custom_base_url): opened with ?url=&token=&layout=, it signals "
                                                 "START_RECORDING and END_RECORDING as @livekit/egress-sdk does")
    layout: str = Field(DEFAULT_LAYOUT, description="a built-in name, or a custom layout folder / .html.j2 file")
    layout_params: dict[str, str | float | bool | None] = Field(default_factory=dict,
                                                                description="values for the layout's parameters")
    overlays: Overlays = Field(default_factory=Overlays)
    preset: str = Field("720p", validation_alias=AliasChoices("preset", "quality"))
    advanced: EncodingOptions | None = None
    file: FileOutput | None = None
    stream: StreamOutput | None = None
    segments: SegmentOutput | None = None
    images: ImageOutput | None = None
    websocket: str | None = Field(None, pattern=r"^wss?://", max_length=2048,
                                  description="send the sound as raw 16-bit little-endian PCM to this ws(s):// URL")
    duration: float | None = Field(None, gt=0, le=MAX_DURATION_S, description="seconds of media; None: until stopped")
    sync_markers: bool = False
    audio_only: bool = False
    video_only: bool = False
    audio_channels: Literal[1, 2] = Field(2, description="the sound's channels (a track egress keeps its track's)")
    audio: AudioSpec | None = Field(None, description="which voice plays in which channel (routes or mixing)")
    participants: ParticipantFilter | None = Field(None, description="who is recorded: include or exclude "
                                                                     "identities (changeable while recording)")
    start_timeout: float = Field(20, gt=0, le=600)
    upload: UploadSpec | None = Field(None, description="store the outputs (default: leave them where written)")
    idle_stop: IdleStop | None = Field(None, description="end by itself when the room is idle (empty, no one "
                                                         "publishing, or everyone muted) for so long")
    pause: PauseSpec | None = Field(None, description="what live destinations show while paused")
    sidecars: bool | None = Field(None, description="write the participants and speakers sidecars next to the file "
                                                    "(default: yes for a room recorded by our layout page)")

    @model_validator(mode="after")
    def _source(self) -> RecordRequest:
        if self.web_url and self.room and self.room.participants:
            raise ValueError("give either a room or a web_url, not both")
        if self.template_url and not (self.room and self.room.kind == "livekit"):
            raise ValueError("template_url renders a LiveKit room: give room kind livekit")
        if self.audio_only and self.video_only:
            raise ValueError("audio_only and video_only exclude each other")
        if not (self.file or self.stream or self.segments or self.websocket):
            raise ValueError("give at least one output: file, stream, segments or websocket (images go along "
                             "with them)")
        if self.websocket and not self.audio_only:
            raise ValueError("a websocket output carries sound only: set audio_only")
        if self.websocket and self.audio_channels != 2:
            raise ValueError("a websocket output carries stereo PCM: audio_channels must be 2")
        if self.idle_stop and self.idle_stop.enabled and (self.web_url or self.template_url):
            # Our own layout page watches the room; a web page or the caller's template has no room we can see.
            raise ValueError("idleStop watches a room through our layout page: not with web_url or template_url")
        if self.sidecars and (self.web_url or self.template_url):
            raise ValueError("sidecars come from the room our layout page renders: not with web_url or "
                             "template_url")
        if self.sidecars and not self.file:
            raise ValueError("sidecars go next to a file: give file")
        return self


def read_request_file(path: Path, what: str) -> dict:
    """A request's JSON from a file (`what` names where it was given, for the message)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidRequest(f"cannot read {what} {str(path)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"{what} must hold a JSON object")
    return data


def check_color(value: str) -> str:
    if not COLOR_RE.match(value):
        raise ValueError(f"colour {value!r} is not #rrggbb")
    return value.lower()


def parse_participant(spec: str, index: int = 0) -> ParticipantSpec:
    """Parse a CLI participant SPEC (`name=A,color=#ff0000,speaks=0-2;4-6,...`).

    Missing name, colour and tone are filled from the palette by `index`, so
    `--participant ''` alone is a valid, distinct participant.
    """
    fields: dict = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep:
            raise InvalidRequest(f"participant spec {spec!r}: {part!r} is not key=value")
        if key in fields:
            raise InvalidRequest(f"participant spec {spec!r}: {key} given twice")
        fields[key] = value.strip()
    known = {"name", "color", "tone", "speaks", "screenshare", "joins", "leaves", "video", "freezes", "mutes", "kind"}
    unknown = set(fields) - known
    if unknown:
        raise InvalidRequest(f"participant spec {spec!r}: unknown key(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(sorted(known))}")
    data: dict = {
        "name": fields.pop("name", None) or f"P{index + 1}",
        "color": fields.pop("color", None) or PALETTE[index % len(PALETTE)],
        "tone": fields.pop("tone", None) or TONES[index % len(TONES)],
    }
    if "speaks" in fields:
        data["speaks"] = [_window(w, spec) for w in fields.pop("speaks").split(";") if w.strip()]
    for key in ("freezes", "mutes"):
        if key in fields:
            data[key] = [_window(w, spec) for w in fields.pop(key).split(";") if w.strip()]
    if "screenshare" in fields:
        span, _, color = fields.pop("screenshare").partition(":")
        share = _window(span, spec)
        data["screenshare"] = {**share, **({"color": color} if color else {})}
    data.update(fields)
    try:
        return ParticipantSpec.model_validate(data)
    except ValueError as exc:
        raise InvalidRequest(f"participant spec {spec!r}: {first_error(exc)}") from None


def _window(text: str, spec: str) -> dict:
    start, sep, end = text.strip().partition("-")
    try:
        if not sep:
            raise ValueError
        return {"start": float(start), "end": float(end)}
    except ValueError:
        raise InvalidRequest(f"participant spec {spec!r}: {text!r} is not START-END in seconds") from None


def first_error(exc: Exception) -> str:
    """A pydantic ValidationError as one line naming the field."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    err = errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    msg = err.get("msg", "invalid").removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def default_participants() -> list[ParticipantSpec]:
    """The demo room: four people taking turns, one sharing a screen."""
    specs = [
        "name=Ada,speaks=0-3;7-10",
        "name=Grace,speaks=3-5",
        "name=Linus,speaks=5-7,screenshare=6-9",
        "name=Margaret,speaks=",
    ]
    return [parse_participant(s, i) for i, s in enumerate(specs)]


# Names for `--participants N`: people enough for the largest grid.
NAMES = ["Ada", "Grace", "Linus", "Margaret", "Alan", "Barbara", "Dennis", "Frances", "Ken", "Radia", "Donald",
         "Edsger", "Hedy", "John"]


def synthetic_participants(count: int) -> list[ParticipantSpec]:
    """`count` people in distinct colours and tones; the first one talks, the others listen."""
    if not 0 <= count <= len(NAMES):
        raise InvalidRequest(f"--participants takes 0 to {len(NAMES)}; for more, give --participant specs",
                             details={"field": "participants"})
    return [parse_participant(f"name={name}" + ("" if i == 0 else ",speaks="), i)
            for i, name in enumerate(NAMES[:count])]
