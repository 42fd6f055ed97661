"""Resolve a validated request into the exact job the pipeline runs."""

from __future__ import annotations

import math
import re
import secrets
import string
from dataclasses import dataclass
from pathlib import Path

from .destinations import StreamTarget, parse_stream_urls
from .errors import InvalidRequest
from .layouts import DEFAULT_LAYOUT, LayoutRef, resolve_layout
from .livekit_room import server_from_env, with_query
from .outbound import OutboundPolicy
from .presets import find_preset, preset_names
from .request import (
    AudioSpec,
    IdleStop,
    ImageOutput,
    Overlays,
    ParticipantFilter,
    ParticipantSpec,
    RecordRequest,
    SegmentOutput,
    UploadSpec,
    default_participants,
)
from .storage.config import storage_urls

_BASE62 = string.digits + string.ascii_letters

CONTAINERS = {".mp4": "mp4", ".webm": "webm", ".ogg": "ogg", ".mp3": "mp3"}

DEFAULT_SAMPLE_RATE = 48000
# What a warm worker renders before it knows its job: the default preset's frame, the default rate.
WARM_SIZE = (1280, 720)

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
    #: H.264 profile (baseline, main, high); None: x264 picks (High for these settings)
    profile: str | None = None


@dataclass(frozen=True)
class AudioSettings:
    bitrate_kbps: int
    sample_rate: int
    codec: str  # aac | opus | mp3 | pcm (raw, for a WebSocket)
    channels: int = 2


@dataclass(frozen=True)
class StreamSettings:
    """Live destinations (possibly none yet: they can be added while live)."""

    targets: tuple[StreamTarget, ...]
    retry_window: float
    tls_verify: bool
    ca_file: str | None


@dataclass(frozen=True)
class SegmentSettings:
    """HLS output: ffmpeg names the segments from `pattern` (index or strftime) in `directory`."""

    directory: Path
    pattern: str
    playlist: Path
    live_playlist: Path | None
    duration: float
    timestamp: bool


@dataclass(frozen=True)
class ImageSettings:
    """Thumbnails: one JPEG per `interval` seconds, named from `pattern`."""

    directory: Path
    pattern: str
    interval: float
    width: int | None
    height: int | None
    timestamp: bool
    #: one file, `pattern` itself, overwritten at each capture (LiveKit's IMAGE_SUFFIX_NONE_OVERWRITE)
    overwrite: bool = False


@dataclass(frozen=True)
class Focus:
    """What of a LiveKit room to record, when not all of it: one participant, or some tracks."""

    identity: str | None = None
    screen_share: bool = False
    track_ids: tuple[str, ...] = ()

    @property
    def query(self) -> dict[str, str]:
        """The page's query parameters for it."""
        query = {"identity": self.identity or "", "share": "1" if self.screen_share else "",
                 "tracks": ",".join(self.track_ids)}
        return {k: v for k, v in query.items() if v}


@dataclass(frozen=True)
class EgressConfig:
    """One fully resolved egress: nothing left to default or look up."""

    egress_id: str
    room_name: str
    source: str  # synthetic | livekit | web
    participants: tuple[ParticipantSpec, ...]
    web_url: str | None
    #: a web page's recording starts at its START_RECORDING signal, not at its load
    await_start_signal: bool
    layout: LayoutRef
    overlays: Overlays
    width: int  # page and capture size (also for audio-only files)
    height: int
    video: VideoSettings | None
    audio: AudioSettings | None
    output: Path | None  # the file output, if any
    container: str | None
    stream: StreamSettings | None
    segments: SegmentSettings | None
    images: ImageSettings | None
    duration: float | None
    sync_markers: bool
    start_timeout: float
    upload: UploadSpec | None = None
    focus: Focus | None = None
    #: the caller's own page for the LiveKit room (LiveKit's custom_base_url), instead of a layout
    template_url: str | None = None
    #: where a track egress sends its sound as raw PCM
    websocket: str | None = None
    #: which voice the page plays in which channel (None: every voice in both, as the room sounds)
    routing: AudioSpec | None = None
    #: when the page ends the recording by itself for an idle room (None: never)
    idle_stop: IdleStop | None = None
    #: who is seen and heard (None: everyone in the room)
    participant_filter: ParticipantFilter | None = None
    #: the image live destinations show while paused (None: the default card)
    slate_url: str | None = None
    #: the participants and speakers sidecars are written next to the file
    sidecars: bool = False

    @property
    def frame(self) -> tuple[int, int, int]:
        """What a worker sets up for this egress: page width and height, and the sound sink's rate."""
        return self.width, self.height, self.audio.sample_rate if self.audio else DEFAULT_SAMPLE_RATE


def partial_path(output: Path) -> Path:
    """Where the recording is written while it runs (`name.partial.ext`): playable if we die."""
    return output.with_name(f"{output.stem}.partial{output.suffix}")


def new_egress_id() -> str:
    return "EG_" + random_base62(12)


def random_base62(length: int) -> str:
    """`length` random letters and digits (ids, and secrets such as stream keys: from `secrets`)."""
    return "".join(secrets.choice(_BASE62) for _ in range(length))


def resolve(req: RecordRequest, egress_id: str | None = None, env: dict | None = None,
            policy: OutboundPolicy = OutboundPolicy()) -> EgressConfig:
    """Turn a request into an EgressConfig, or raise InvalidRequest naming the field.

    `env` holds the LIVEKIT_* variables the worker will have (default: this process's environment). `policy`
    says whether the request may name local files (its addresses are checked by `outbound_urls`).
    """
    preset = find_preset(req.preset)
    if preset is None:
        raise InvalidRequest(f"unknown preset {req.preset!r}; known: {', '.join(preset_names())}",
                             details={"field": "preset"})
    adv = req.advanced
    width = (adv and adv.width) or preset.width
    height = (adv and adv.height) or preset.height
    fps = (adv and adv.framerate) or preset.fps

    output = Path(req.file.filepath).expanduser() if req.file else None
    container = _container(output, req.file.file_type) if req.file and output else None
    live = req.stream is not None or req.segments is not None
    if live and container in ("webm", "ogg", "mp3"):
        raise InvalidRequest(f"streams and HLS segments carry H.264/AAC; a {container.upper()} file alongside "
                             f"would need a second encode: record an MP4 with them", details={"field": "file"})
    if container == "mp3" and not req.audio_only:
        # Unlike OGG (LiveKit's audio file of old, which drops the video by itself), MP3 is asked for by name:
        # a request that would record a picture into it is a mistake to say, not a picture to drop unasked.
        raise InvalidRequest("file.fileType: an MP3 file holds sound only; set audio_only (or record one audio "
                             "track), or ask for MP4, WebM or OGG", details={"field": "file.fileType"})
    audio_only = req.audio_only or container == "ogg"
    if container in ("ogg", "mp3") and req.video_only:
        raise InvalidRequest(f"an {container.upper()} file carries audio only; video_only cannot apply",
                             details={"field": "file"})
    if req.images and audio_only:
        raise InvalidRequest("thumbnails need video; this egress is audio only", details={"field": "images"})

    h264 = container in (None, "mp4")
    video = None
    if not audio_only:
        # LiveKit's H264_BASELINE / H264_MAIN / H264_HIGH name a profile of the one H.264 codec.
        codec, _, profile = ((adv and adv.video_codec) or ("H264" if h264 else "VP8")).lower().partition("_")
        if h264 and codec != "h264":
            what = "MP4 files" if container else "Streams and segments"
            raise InvalidRequest(f"{what} carry H.264, not {codec.upper()}", details={"field": "advanced.videoCodec"})
        if container == "webm" and codec == "h264":
            raise InvalidRequest("WebM files carry VP8 or VP9, not H.264", details={"field": "advanced.videoCodec"})
        video = VideoSettings(
            width=width, height=height, fps=fps,
            bitrate_kbps=(adv and adv.video_bitrate) or preset.video_kbps,
            codec=codec,
            keyframe_interval=(adv and adv.key_frame_interval) or _keyframe_interval(req.segments),
            x264_preset=(adv and adv.x264_preset) or DEFAULT_X264_PRESET,
            profile=profile or None,
        )
    audio = None
    if not req.video_only:
        audio = AudioSettings(
            bitrate_kbps=(adv and adv.audio_bitrate) or 128,
            sample_rate=(adv and adv.audio_frequency) or DEFAULT_SAMPLE_RATE,
            codec="pcm" if req.websocket else "aac" if h264 else "mp3" if container == "mp3" else "opus",
            channels=req.audio_channels,
        )
    stream = None
    if req.stream and req.stream.ca_file:
        policy.local_file(req.stream.ca_file, "stream.caFile")
    if req.stream:
        stream = StreamSettings(targets=parse_stream_urls(req.stream.urls), retry_window=req.stream.retry_window,
                                tls_verify=req.stream.tls_verify, ca_file=req.stream.ca_file)
    segments = _segments(req.segments) if req.segments else None
    images = _images(req.images) if req.images else None
    if sum(x is not None for x in (output, stream, segments, images)) > 1:
        _check_tee_paths(output, segments, images)

    if req.upload:
        _check_staged(Path(req.upload.staging), output, segments, images)

    focus = None
    if req.websocket and not (req.room and req.room.track_ids):
        raise InvalidRequest("a websocket output sends one track: give its track id", details={"field": "websocket"})
    if req.web_url:
        source, participants = "web", ()
        _check_web_url(req.web_url, policy)
    elif req.room and req.room.kind == "livekit":
        source, participants = "livekit", ()
        server_from_env(env)  # said now, before anything starts
        if req.room.identity or req.room.track_ids:
            focus = Focus(req.room.identity, req.room.screen_share, tuple(req.room.track_ids))
    else:
        source = "synthetic"
        participants = tuple((req.room and req.room.participants) or default_participants())
        for i, p in enumerate(participants):
            if p.video and p.video != "off" and not p.video.startswith(("http://", "https://")):
                policy.local_file(p.video, f"room.participants.{i}.video")
        names = [p.name for p in participants]
        if len(set(names)) != len(names):
            raise InvalidRequest("participant names must be unique", details={"field": "room.participants"})

    routing = _routing(req, audio)
    return EgressConfig(
        egress_id=egress_id or new_egress_id(),
        room_name=req.room_name,
        source=source,
        participants=participants,
        web_url=req.web_url,
        await_start_signal=bool(req.web_url) and req.await_start_signal,
        layout=resolve_layout(DEFAULT_LAYOUT if req.template_url else req.layout, req.layout_params),
        overlays=_overlays(req.overlays, policy),
        width=width,
        height=height,
        video=video,
        audio=audio,
        output=output,
        container=container,
        stream=stream,
        segments=segments,
        images=images,
        duration=req.duration,
        sync_markers=req.sync_markers,
        start_timeout=req.start_timeout,
        upload=req.upload,
        focus=focus,
        # A template's layout is its own to name: it gets it as is, in its query.
        template_url=with_query(req.template_url, layout=req.layout) if req.template_url else None,
        websocket=req.websocket,
        routing=routing,
        idle_stop=req.idle_stop if req.idle_stop and req.idle_stop.enabled else None,
        participant_filter=_participant_filter(req),
        slate_url=req.pause.slate_url if req.pause else None,
        # On by default wherever our layout page renders a room (it reports the room model) into a file.
        sidecars=req.sidecars if req.sidecars is not None else bool(output and source != "web"
                                                                    and not req.template_url),
    )


def _participant_filter(req: RecordRequest) -> ParticipantFilter | None:
    """The request's participant filter; InvalidRequest where no page of ours renders the room's people."""
    if req.participants is None:
        return None
    room = req.room
    why = ("a web page has no participants to filter" if req.web_url
           else "the template_url page renders the room its own way; participants are filtered by our layout pages"
           if req.template_url
           else "a participant or track egress already picks whom it records" if room and (room.identity
                                                                                          or room.track_ids)
           else None)
    if why:
        raise InvalidRequest(f"participants: {why}", details={"field": "participants"})
    return req.participants


def _routing(req: RecordRequest, audio: AudioSettings | None) -> AudioSpec | None:
    """The request's audio routing, if it routes anything; InvalidRequest where no page of ours plays the sound."""
    if req.audio is None or not req.audio.routed:
        return None
    # Our layout pages route the voices; a page of someone else's plays its sound its own way.
    other_page = "web_url" if req.web_url else "template_url" if req.template_url else None
    if other_page:
        raise InvalidRequest(f"audio routing is done by our layout pages; the {other_page} page plays its own "
                             "sound", details={"field": "audio"})
    if audio is None:
        raise InvalidRequest("audio routing needs sound: this egress is video only", details={"field": "audio"})
    return req.audio


def _check_staged(staging: Path, output: Path | None, segments: SegmentSettings | None,
                  images: ImageSettings | None) -> None:
    """Stored outputs are written under the staging folder: their place there is their storage key."""
    root = staging.resolve()
    paths = {"file.filepath": output, "segments.filenamePrefix": segments and segments.directory,
             "images.filenamePrefix": images and images.directory}
    for field, path in paths.items():
        if path is not None and path.resolve() != root and root not in path.resolve().parents:
            raise InvalidRequest(f"{field} {str(path)!r} is outside upload.staging {str(staging)!r}",
                                 details={"field": field})


def _keyframe_interval(segments: SegmentOutput | None) -> float:
    """2 s, or the largest interval up to 2 s that divides the segment duration (segments cut on keyframes)."""
    if segments is None:
        return 2.0
    return segments.segment_duration / math.ceil(segments.segment_duration / 2.0)


def _series(prefix: str, default_base: str, field: str) -> tuple[Path, str]:
    """A file series' folder and base name from its prefix (`dir/` alone: files named `default_base`)."""
    path = Path(prefix).expanduser()
    if prefix.endswith("/"):
        return path, default_base
    if not path.name:
        raise InvalidRequest(f"{field} {prefix!r} has no file name part", details={"field": field})
    return path.parent, path.name


def _segments(seg: SegmentOutput) -> SegmentSettings:
    directory, base = _series(seg.filename_prefix, "segment", "segments.filenamePrefix")
    timestamp = seg.filename_suffix == "TIMESTAMP"
    names = {}
    for field, name, default in (("playlistName", seg.playlist_name, f"{base}.m3u8"),
                                 ("livePlaylistName", seg.live_playlist_name, None)):
        if name is None:
            names[field] = default
            continue
        if "/" in name or name in (".", "..") or not name.strip():
            raise InvalidRequest(f"segments.{field} {name!r} must be a file name (it goes next to the segments)",
                                 details={"field": f"segments.{field}"})
        names[field] = name if name.endswith(".m3u8") else f"{name}.m3u8"
    if names["livePlaylistName"] == names["playlistName"]:
        raise InvalidRequest("the live playlist needs a name of its own",
                             details={"field": "segments.livePlaylistName"})
    return SegmentSettings(
        directory=directory,
        pattern=f"{base}_%Y%m%dT%H%M%S.ts" if timestamp else f"{base}_%05d.ts",
        playlist=directory / names["playlistName"],
        live_playlist=directory / names["livePlaylistName"] if names["livePlaylistName"] else None,
        duration=seg.segment_duration, timestamp=timestamp)


def _images(img: ImageOutput) -> ImageSettings:
    directory, base = _series(img.filename_prefix, "thumbnail", "images.filenamePrefix")
    timestamp, overwrite = img.filename_suffix == "TIMESTAMP", img.filename_suffix == "NONE_OVERWRITE"
    # LiveKit names its overwritten thumbnail PREFIX.jpeg.
    pattern = f"{base}.jpeg" if overwrite else f"{base}_%Y%m%dT%H%M%S.jpg" if timestamp else f"{base}_%05d.jpg"
    return ImageSettings(directory=directory, pattern=pattern, interval=img.capture_interval, width=img.width,
                         height=img.height, timestamp=timestamp, overwrite=overwrite)


# ffmpeg's tee muxer splits its outputs on | and reads [options:...] before each.
_TEE_UNSAFE = re.compile(r"[|\[\]\\:\x00-\x1f]")


def _check_tee_paths(output: Path | None, segments: SegmentSettings | None, images: ImageSettings | None) -> None:
    paths = {"file.filepath": output,
             "segments.filenamePrefix": segments and segments.directory / segments.pattern,
             "segments.playlistName": segments and segments.playlist,
             "images.filenamePrefix": images and images.directory / images.pattern}
    for field, path in paths.items():
        if path is not None and _TEE_UNSAFE.search(str(path)):
            raise InvalidRequest(f"{field} {str(path)!r}: with several outputs, paths cannot contain | [ ] \\ or :",
                                 details={"field": field})


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
                             f"use .mp4, .webm, .ogg or .mp3", details={"field": "file.filepath"})
    return by_ext


def _overlays(overlays: Overlays, policy: OutboundPolicy) -> Overlays:
    if overlays.logo and not overlays.logo_is_url:
        policy.local_file(overlays.logo, "overlays.logo")
        logo = Path(overlays.logo).expanduser()
        if not logo.is_file():
            raise InvalidRequest(f"logo {overlays.logo!r}: no such file (or give an http(s) URL)",
                                 details={"field": "overlays.logo"})
        return overlays.model_copy(update={"logo": str(logo.resolve())})
    return overlays


def _check_web_url(url: str, policy: OutboundPolicy) -> None:
    if not url.startswith(("http://", "https://", "file://")):
        raise InvalidRequest(f"web_url {url!r} must be http://, https:// or file://", details={"field": "web_url"})
    if url.startswith("file://"):
        policy.local_file(url, "web_url")


def outbound_urls(config: EgressConfig) -> list[tuple[str, str]]:
    """Every URL the egress makes its worker connect to, with the request field that named it (for
    `outbound.check_urls`; the LiveKit server is the operator's, not the request's)."""
    urls = []
    if config.web_url and not config.web_url.startswith("file://"):
        urls.append(("web_url", config.web_url))
    if config.template_url:
        urls.append(("template_url", config.template_url))
    if config.overlays.logo and config.overlays.logo_is_url:
        urls.append(("overlays.logo", config.overlays.logo))
    urls += [(f"room.participants.{i}.video", p.video) for i, p in enumerate(config.participants)
             if p.video and p.video.startswith(("http://", "https://"))]
    if config.stream:
        urls += [(f"stream.urls.{i}", t.url) for i, t in enumerate(config.stream.targets)]
    if config.websocket:
        urls.append(("websocket", config.websocket))
    if config.slate_url:
        urls.append(("pause.slateUrl", config.slate_url))
    if config.upload:
        storages = [("storage", config.upload.storage), ("backupStorage", config.upload.backup),
                    *((f"{kind}.storage", storage) for kind, storage in config.upload.outputs.items())]
        for field, storage in storages:
            urls += [(f"{field}.{name}", url) for name, url in storage_urls(storage)]
    return urls
