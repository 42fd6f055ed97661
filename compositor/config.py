"""Resolve a validated request into the exact job the pipeline runs."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidRequest
from .layouts import LayoutRef, resolve_layout
from .presets import find_preset, preset_names
from .request import ParticipantSpec, RecordRequest, default_participants

_BASE62 = string.digits + string.ascii_letters

CONTAINERS = {".mp4": "mp4", ".webm": "webm", ".ogg": "ogg"}

# superfast costs ~0.36 core at 720p30 against veryfast's ~0.58 (bench/record.py);
# at the presets' bitrates a room composite looks the same.
DEFAULT_X264_PRESET = "superfast"


@dataclass(frozen=True)
class VideoSettings:
    width: int
    height: int
    fps: int
    bitrate_kbps: int
    codec: str  # h264 | vp8 | vp9
    keyframe_interval: float
    x264_preset: str


@dataclass(frozen=True)
class AudioSettings:
    bitrate_kbps: int
    sample_rate: int
    codec: str  # aac | opus


@dataclass(frozen=True)
class EgressConfig:
    """One fully resolved egress: nothing left to default or look up."""

    egress_id: str
    room_name: str
    source: str  # synthetic | web
    participants: tuple[ParticipantSpec, ...]
    web_url: str | None
    layout: LayoutRef
    width: int  # page and capture size (also for audio-only files)
    height: int
    video: VideoSettings | None
    audio: AudioSettings | None
    output: Path
    container: str
    duration: float | None
    sync_markers: bool
    start_timeout: float


def new_egress_id() -> str:
    return "EG_" + "".join(secrets.choice(_BASE62) for _ in range(12))


def resolve(req: RecordRequest, egress_id: str | None = None) -> EgressConfig:
    """Turn a request into an EgressConfig, or raise InvalidRequest naming the field."""
    preset = find_preset(req.preset)
    if preset is None:
        raise InvalidRequest(f"unknown preset {req.preset!r}; known: {', '.join(preset_names())}",
                             details={"field": "preset"})
    adv = req.advanced
    width = (adv and adv.width) or preset.width
    height = (adv and adv.height) or preset.height
    fps = (adv and adv.framerate) or preset.fps

    output = Path(req.file.filepath).expanduser()
    container = _container(output, req.file.file_type)
    audio_only = req.audio_only or container == "ogg"
    if container == "ogg" and req.video_only:
        raise InvalidRequest("an OGG file carries audio only; video_only cannot apply", details={"field": "file"})

    video = None
    if not audio_only:
        codec = ((adv and adv.video_codec) or ("H264" if container == "mp4" else "VP8")).lower()
        if container == "mp4" and codec != "h264":
            raise InvalidRequest(f"MP4 files carry H.264, not {codec.upper()}", details={"field": "advanced.videoCodec"})
        if container == "webm" and codec == "h264":
            raise InvalidRequest("WebM files carry VP8 or VP9, not H.264", details={"field": "advanced.videoCodec"})
        video = VideoSettings(
            width=width, height=height, fps=fps,
            bitrate_kbps=(adv and adv.video_bitrate) or preset.video_kbps,
            codec=codec,
            keyframe_interval=(adv and adv.key_frame_interval) or 2.0,
            x264_preset=(adv and adv.x264_preset) or DEFAULT_X264_PRESET,
        )
    audio = None
    if not req.video_only:
        audio = AudioSettings(
            bitrate_kbps=(adv and adv.audio_bitrate) or 128,
            sample_rate=(adv and adv.audio_frequency) or 48000,
            codec="aac" if container == "mp4" else "opus",
        )

    if req.web_url:
        source, participants = "web", ()
        _check_web_url(req.web_url)
    else:
        source = "synthetic"
        participants = tuple((req.room and req.room.participants) or default_participants())
        names = [p.name for p in participants]
        if len(set(names)) != len(names):
            raise InvalidRequest("participant names must be unique", details={"field": "room.participants"})

    return EgressConfig(
        egress_id=egress_id or new_egress_id(),
        room_name=req.room_name,
        source=source,
        participants=participants,
        web_url=req.web_url,
        layout=resolve_layout(req.layout),
        width=width,
        height=height,
        video=video,
        audio=audio,
        output=output,
        container=container,
        duration=req.duration,
        sync_markers=req.sync_markers,
        start_timeout=req.start_timeout,
    )


def _container(path: Path, file_type: str | None) -> str:
    by_ext = CONTAINERS.get(path.suffix.lower())
    if file_type:
        wanted = file_type.lower()
        if by_ext and by_ext != wanted:
            raise InvalidRequest(f"output {str(path)!r} ends in {path.suffix} but fileType is {file_type}",
                                 details={"field": "file.filepath"})
        return wanted
    if not by_ext:
        raise InvalidRequest(f"output {str(path)!r}: unknown extension {path.suffix or '(none)'}; "
                             f"use .mp4, .webm or .ogg", details={"field": "file.filepath"})
    return by_ext


def _check_web_url(url: str) -> None:
    if not url.startswith(("http://", "https://", "file://")):
        raise InvalidRequest(f"web_url {url!r} must be http://, https:// or file://", details={"field": "web_url"})
