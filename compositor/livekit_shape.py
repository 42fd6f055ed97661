"""LiveKit's egress request JSON (RoomComposite / Web), mapped onto our start request.

So a body written for LiveKit Egress (`room_name`, `file_outputs`,
`stream_outputs`, `preset`, `advanced`, …) starts the same egress.
"""

from __future__ import annotations

from .errors import InvalidRequest, Unsupported

# Keys only LiveKit's shape has; any of them marks a LiveKit body.
_ONLY_LIVEKIT = {"file_outputs", "stream_outputs", "segment_outputs", "image_outputs", "preset", "url",
                 "custom_base_url", "await_start_signal", "segments"}
_ADVANCED = {"width", "height", "framerate", "video_bitrate", "audio_bitrate", "audio_frequency",
             "key_frame_interval"}
_FILE_TYPES = {"DEFAULT_FILETYPE": "MP4", "MP4": "MP4", "OGG": "OGG", "WEBM": "WEBM"}


def is_livekit(body: dict) -> bool:
    return bool(_ONLY_LIVEKIT & body.keys())


def from_livekit(body: dict) -> dict:
    """A LiveKit RoomComposite/Web egress request as our StartEgressRequest body."""
    if body.get("segment_outputs") or body.get("segments") or body.get("image_outputs"):
        raise Unsupported("segment and image outputs are not available yet", details={"field": "segment_outputs"})
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
    urls = [u for s in body.get("stream_outputs") or [] for u in s.get("urls", [])]
    if urls:
        out["stream"] = {"urls": urls}
    out["mode"] = "both" if files and urls else "stream" if urls else "record"
    return out
