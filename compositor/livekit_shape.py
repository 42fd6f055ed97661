"""LiveKit's egress request JSON (RoomComposite / Web), mapped onto our start request.

So a body written for LiveKit Egress (`room_name`, `file_outputs`,
`stream_outputs`, `preset`, `advanced`, …) starts the same egress.
"""

from __future__ import annotations

from .errors import InvalidRequest, Unsupported

# Keys only LiveKit's shape has; any of them marks a LiveKit body.
_ONLY_LIVEKIT = {"file_outputs", "stream_outputs", "segment_outputs", "image_outputs", "preset", "url",
                 "custom_base_url", "await_start_signal"}
_ADVANCED = {"width", "height", "framerate", "video_bitrate", "audio_bitrate", "audio_frequency",
             "key_frame_interval"}
_FILE_TYPES = {"DEFAULT_FILETYPE": "MP4", "MP4": "MP4", "OGG": "OGG", "WEBM": "WEBM"}


def is_livekit(body: dict) -> bool:
    return bool(_ONLY_LIVEKIT & body.keys())


def from_livekit(body: dict) -> dict:
    """A LiveKit RoomComposite/Web egress request as our StartEgressRequest body."""
    out: dict = {"roomName": body.get("room_name") or body.get("roomName") or "web"}
    for key in ("layout", "audio_only", "video_only"):
        if key in body:
            out[key] = body[key]
    if body.get("url"):
        out["webUrl"] = body["url"]
    if body.get("preset"):
        out["quality"] = body["preset"]
    adv = body.get("advanced")
    if adv:
        mapped = {k: v for k, v in adv.items() if k in _ADVANCED and v}
        codec = str(adv.get("video_codec", "")).upper()
        if codec:
            mapped["video_codec"] = "H264" if codec.startswith("H264") else codec
        out["advanced"] = mapped
    files = body.get("file_outputs") or ([body["file"]] if body.get("file") else [])
    if len(files) > 1:
        raise InvalidRequest("one file output per egress", details={"field": "file_outputs"})
    if files:
        f = files[0]
        file_type = _FILE_TYPES.get(str(f.get("file_type", "MP4")).upper())
        if file_type is None:
            raise InvalidRequest(f"unknown file_type {f.get('file_type')!r}", details={"field": "file_outputs.0"})
        out["file"] = {"fileType": file_type, **({"filepath": f["filepath"]} if f.get("filepath") else {})}
    streams = body.get("stream_outputs") or []
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


_SEGMENT = {"filename_prefix", "playlist_name", "live_playlist_name", "segment_duration", "filename_suffix"}
_IMAGE = {"capture_interval", "width", "height", "filename_prefix", "filename_suffix"}
_CLOUD = {"s3", "gcp", "azure", "aliOSS", "alioss"}


def _one(body: dict, key: str, single: str | None, fields: set[str]) -> dict | None:
    """The one output of a kind (LiveKit allows one per type), its local-storage fields only."""
    items = body.get(key) or ([body[single]] if single and body.get(single) else [])
    if len(items) > 1:
        raise InvalidRequest(f"one output per type: {key} has {len(items)}", details={"field": key})
    if not items:
        return None
    item = items[0]
    if _CLOUD & item.keys():
        raise Unsupported("cloud storage for outputs is not available yet; they are written to the server's "
                          "recordings folder", details={"field": key})
    return {k: v for k, v in item.items() if k in fields and v not in (None, "")}
