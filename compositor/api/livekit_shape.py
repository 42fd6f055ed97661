"""LiveKit's egress request JSON (RoomComposite, Web, Participant, TrackComposite, Track), mapped onto our
start request.

So a body written for LiveKit Egress (`room_name`, `file_outputs`,
`stream_outputs`, `preset`, `advanced`, …) starts the same egress.
"""

from __future__ import annotations

from ..errors import InvalidRequest, Unsupported
from ..service.livekit_info import ADVANCED_FIELDS

# Keys only LiveKit's shape has; any of them marks a LiveKit body.
_ONLY_LIVEKIT = {"file_outputs", "stream_outputs", "segment_outputs", "image_outputs", "preset", "url",
                 "custom_base_url", "await_start_signal", "audio_mixing"}
_FILE_TYPES = {"DEFAULT_FILETYPE": "MP4", "MP4": "MP4", "OGG": "OGG", "WEBM": "WEBM"}
# LiveKit's AudioMixing by number (protobuf JSON may carry either); names are read by AudioSpec itself.
_MIXING = {0: "default", 1: "dual_channel_agent", 2: "dual_channel_alternate"}


def is_livekit(body: dict) -> bool:
    return bool(_ONLY_LIVEKIT & body.keys())


def from_livekit(body: dict) -> dict:
    """A LiveKit RoomComposite/Web egress request as our StartEgressRequest body."""
    # Only a web egress may leave the room out; the others name a room, and an empty one is refused.
    out: dict = {"roomName": body.get("room_name") or body.get("roomName") or ("web" if body.get("url") else "")}
    for key in ("layout", "audio_only", "video_only", "room"):  # room: a synthetic room (ours, not LiveKit's)
        if key in body:
            out[key] = body[key]
    if body.get("url"):
        out["webUrl"] = body["url"]
    if body.get("custom_base_url"):
        out["templateUrl"] = body["custom_base_url"]
    if body.get("preset"):
        out["quality"] = body["preset"]
    if body.get("audio_mixing"):
        # DEFAULT_MIXING, DUAL_CHANNEL_AGENT, DUAL_CHANNEL_ALTERNATE (or their numbers): our audio.mixing.
        out["audio"] = {"mixing": _MIXING.get(body["audio_mixing"], body["audio_mixing"])}
    adv = body.get("advanced")
    if adv:
        mapped = {k: v for k, v in adv.items() if k in ADVANCED_FIELDS and v}
        codec = str(adv.get("video_codec", "")).upper()
        if codec:
            mapped["video_codec"] = "H264" if codec.startswith("H264") else codec
        out["advanced"] = mapped
    files = _items(body, "file_outputs", "file")
    if len(files) > 1:
        raise InvalidRequest("one file output per egress", details={"field": "file_outputs"})
    storages = [_storage_of(item, where) for where, item in _outputs(body, files)]
    storages = [st for st in storages if st is not None]
    if storages:
        if any(st != storages[0] for st in storages):
            raise InvalidRequest("every output of an egress goes to one storage; these name different ones",
                                 details={"field": "storage"})
        out["storage"] = storages[0]
    if files:
        f = files[0]
        file_type = _FILE_TYPES.get(str(f.get("file_type", "MP4")).upper())
        if file_type is None:
            raise InvalidRequest(f"unknown file_type {f.get('file_type')!r}", details={"field": "file_outputs.0"})
        out["file"] = {"fileType": file_type, **({"filepath": f["filepath"]} if f.get("filepath") else {})}
    streams = _items(body, "stream_outputs", "stream")
    urls = [u for s in streams for u in s.get("urls", [])]
    if streams:
        # An empty URL list still makes a stream output: destinations can be added while live.
        out["stream"] = {"urls": urls}
    segments = _one(body, "segment_outputs", "segments", _SEGMENT)
    images = _one(body, "image_outputs", None, _IMAGE)
    if segments is not None:
        out["segments"] = segments
    if images is not None:
        out["images"] = images
    recorded = files or segments is not None
    out["mode"] = "both" if recorded and streams else "stream" if streams else "record"
    return out


def from_livekit_participant(body: dict) -> dict:
    """A LiveKit ParticipantEgressRequest (room_name, identity, screen_share, outputs) as our start body."""
    return {**from_livekit(body), "participant": {"identity": body.get("identity", ""),
                                                  "screen_share": bool(body.get("screen_share"))}}


def from_livekit_track_composite(body: dict) -> dict:
    """A LiveKit TrackCompositeEgressRequest (room_name, audio_track_id, video_track_id, outputs) as our body."""
    tracks = {k: body[k] for k in ("audio_track_id", "video_track_id") if body.get(k)}
    return {**from_livekit(body), "track_composite": tracks}


def from_livekit_track(body: dict) -> dict:
    """A LiveKit TrackEgressRequest (room_name, track_id, then a DirectFileOutput `file` or a `websocket_url`)
    as our start body."""
    rest = {k: v for k, v in body.items() if k != "file"}
    if "file" in body:
        # A DirectFileOutput has no file_type: the track's sound is written as it comes, in OGG.
        rest["file_outputs"] = [{**body["file"], "file_type": "OGG"}]
    track = {"track_id": body.get("track_id", "")}
    if body.get("websocket_url"):
        track["websocket_url"] = body["websocket_url"]
    return {**from_livekit(rest), "track": track}


_SEGMENT = {"filename_prefix", "playlist_name", "live_playlist_name", "segment_duration", "filename_suffix"}
_IMAGE = {"capture_interval", "width", "height", "filename_prefix", "filename_suffix"}
_CLOUD = {"s3", "gcp", "azure", "aliOSS", "alioss"}


def _items(body: dict, key: str, single: str | None) -> list[dict]:
    """The outputs of a kind: the `key` list, or LiveKit's older single field."""
    return body.get(key) or ([body[single]] if single and body.get(single) else [])


def _outputs(body: dict, files: list[dict]):
    """(field, output) for each file, segment and image output of the body."""
    for i, f in enumerate(files):
        yield f"file_outputs.{i}", f
    for key, single in (("segment_outputs", "segments"), ("image_outputs", None)):
        for i, item in enumerate(_items(body, key, single)):
            yield f"{key}.{i}", item


def _storage_of(output: dict, where: str) -> dict | None:
    """The output's storage (LiveKit's `s3` / `gcp` / `azure` key), in our `{"kind": …}` shape."""
    named = [k for k in _CLOUD if output.get(k) is not None]
    if not named:
        return None
    if len(named) > 1:
        raise InvalidRequest(f"{where}: give one storage, not {' and '.join(sorted(named))}", details={"field": where})
    if named[0].lower() == "alioss":
        raise Unsupported("Alibaba OSS storage is not supported; use s3, gcp or azure", details={"field": where})
    return {named[0]: output[named[0]]}


def _one(body: dict, key: str, single: str | None, fields: set[str]) -> dict | None:
    """The one output of a kind (LiveKit allows one per type), its local-storage fields only."""
    items = _items(body, key, single)
    if len(items) > 1:
        raise InvalidRequest(f"one output per type: {key} has {len(items)}", details={"field": key})
    if not items:
        return None
    item = items[0]
    return {k: v for k, v in item.items() if k in fields and v not in (None, "")}
