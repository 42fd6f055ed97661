"""Egresses in LiveKit's own terms: its EgressInfo message and its webhook events.

Users who run LiveKit already consume `egress_started|updated|ended`
webhooks carrying an EgressInfo; the service can send exactly those, signed
the way LiveKit signs them (a JWT over the body's SHA-256 in the
Authorization header, made with the API key and secret), so LiveKit's own
`WebhookReceiver` accepts them.
"""

from __future__ import annotations

import base64
import hashlib
import time
from pathlib import Path

from google.protobuf.json_format import MessageToJson
from google.protobuf.message import Message
from livekit.api import AccessToken
from livekit.protocol import egress as lk
from livekit.protocol.webhook import WebhookEvent

from ..presets import ALIASES
from ..protocol import Status, StreamStatus
from .seams import EgressRecord

_STATUS = {Status.STARTING: lk.EGRESS_STARTING, Status.ACTIVE: lk.EGRESS_ACTIVE, Status.ENDING: lk.EGRESS_ENDING,
           Status.COMPLETE: lk.EGRESS_COMPLETE, Status.FAILED: lk.EGRESS_FAILED, Status.ABORTED: lk.EGRESS_ABORTED,
           Status.LIMIT_REACHED: lk.EGRESS_LIMIT_REACHED}
# LiveKit knows a destination as active, finished or failed; reconnecting is still active there.
_STREAM_STATUS = {StreamStatus.FINISHED: lk.StreamInfo.FINISHED, StreamStatus.FAILED: lk.StreamInfo.FAILED}
NS = 1_000_000_000


#: LiveKit EncodingOptions fields that mean the same in ours (same names, same units).
ADVANCED_FIELDS = {"width", "height", "framerate", "video_bitrate", "audio_bitrate", "audio_frequency",
                   "key_frame_interval"}


def _ns(seconds: float | None) -> int:
    return round(seconds * NS) if seconds else 0


def egress_info(rec: EgressRecord) -> lk.EgressInfo:
    """An egress as LiveKit's EgressInfo: status, times, results, the request it was started with, and the
    single-result fields older clients read."""
    info = _results(rec)
    _set_request(info, rec)
    if rec.error_code:
        info.details = rec.error_code
    outputs, file = rec.outputs or {}, rec.file or {}
    info.manifest_location = outputs.get("manifest") or ""
    info.backup_storage_used = bool(file.get("backup_used"))
    # LiveKit fills its deprecated `result` oneof when the egress has one kind of output.
    kinds = [k for k in ("file_results", "stream_results", "segment_results") if len(getattr(info, k))]
    if kinds == ["file_results"]:
        info.file.CopyFrom(info.file_results[0])
    elif kinds == ["stream_results"]:
        info.stream.info.extend(info.stream_results)
    elif kinds == ["segment_results"]:
        info.segments.CopyFrom(info.segment_results[0])
    return info


def _set_request(info: lk.EgressInfo, rec: EgressRecord) -> None:
    """The `request` oneof, rebuilt from what the record keeps: the source and the encoding, never the outputs
    (their URLs and storage hold secrets)."""
    req = rec.request
    room = req.get("room") or {}
    ids = room.get("track_ids") or []
    if rec.kind == "web":
        target: Message = info.web
        target.url = req.get("web_url", "")
    elif rec.kind == "participant":
        target = info.participant
        target.identity, target.screen_share = room.get("identity", ""), room.get("screen_share", False)
    elif rec.kind == "track_composite":
        target = info.track_composite
        # The worker got [audio, video], leaving out the one not asked for (which made it video- or audio-only).
        audio, video = ids if len(ids) == 2 else (ids[0], "") if req.get("audio_only") else ("", ids[0])
        target.audio_track_id, target.video_track_id = audio, video
    elif rec.kind == "track":
        target = info.track
        target.track_id = ids[0]
    else:
        target = info.room_composite
        target.layout = rec.layout
    if rec.kind != "web":
        target.room_name = rec.room_name
    if rec.kind in ("web", "room_composite"):
        target.audio_only, target.video_only = req.get("audio_only", False), req.get("video_only", False)
    if rec.kind == "track":
        return
    advanced = {k: v for k, v in (req.get("advanced") or {}).items() if k in ADVANCED_FIELDS}
    if advanced:
        target.advanced.CopyFrom(lk.EncodingOptions(**advanced))
    elif rec.quality.upper() in ALIASES:
        target.preset = lk.EncodingOptionsPreset.Value(rec.quality.upper())


def _results(rec: EgressRecord) -> lk.EgressInfo:
    """Status, times and the results of every output."""
    info = lk.EgressInfo(egress_id=rec.id, room_name=rec.room_name, status=_STATUS[rec.status],
                         started_at=_ns(rec.started_at), ended_at=_ns(rec.ended_at), updated_at=_ns(rec.updated_at),
                         error=rec.error or "")
    if rec.file:
        f = rec.file
        info.file_results.add(filename=f.get("filename", Path(f["location"]).name), location=f["location"],
                              size=f.get("size") or 0, duration=_ns(f.get("duration")),
                              started_at=_ns(rec.started_at), ended_at=_ns(rec.ended_at))
    for s in rec.streams or []:
        info.stream_results.add(url=s["url"], status=_STREAM_STATUS.get(s["status"], lk.StreamInfo.ACTIVE),
                                started_at=_ns(s.get("started_at")), ended_at=_ns(s.get("ended_at")),
                                error=s.get("error") or "", retries=s.get("retries", 0),
                                last_retry_at=_ns(s.get("last_retry_at")))
    outputs = rec.outputs or {}
    if seg := outputs.get("segments"):
        info.segment_results.add(playlist_name=Path(seg["playlist"]).name, playlist_location=seg["playlist"],
                                 live_playlist_name=Path(seg["live_playlist"]).name if seg.get("live_playlist")
                                 else "", live_playlist_location=seg.get("live_playlist") or "",
                                 segment_count=seg["segment_count"], duration=_ns(seg["duration"]),
                                 size=seg["size"])
    if img := outputs.get("images"):
        info.image_results.add(filename_prefix=img["directory"], image_count=img["count"])
    return info


def webhook_event(rec: EgressRecord, name: str, event_id: str) -> str:
    """A LiveKit webhook body (protobuf JSON, as LiveKit sends it)."""
    event = WebhookEvent(event=name, id=event_id, created_at=int(time.time()), egress_info=egress_info(rec))
    return MessageToJson(event, indent=None)


def events_for(rec: EgressRecord, previous: str | None) -> list[str]:
    """LiveKit's event names for a status change: started when live, updated on the way, ended at the end."""
    if rec.status == previous:
        return []
    if rec.ended:
        return ["egress_ended"]
    return ["egress_started"] if rec.status == Status.ACTIVE else ["egress_updated"]


def authorization(api_key: str, api_secret: str, body: bytes) -> str:
    """LiveKit's webhook signature: a JWT whose `sha256` claim is the body's hash."""
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return AccessToken(api_key, api_secret).with_sha256(digest).to_jwt()
