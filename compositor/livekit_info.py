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
from livekit.api import AccessToken
from livekit.protocol import egress as lk
from livekit.protocol.webhook import WebhookEvent

from .store import EgressRecord

_STATUS = {"STARTING": lk.EGRESS_STARTING, "ACTIVE": lk.EGRESS_ACTIVE, "ENDING": lk.EGRESS_ENDING,
           "COMPLETE": lk.EGRESS_COMPLETE, "FAILED": lk.EGRESS_FAILED, "ABORTED": lk.EGRESS_ABORTED,
           "LIMIT_REACHED": lk.EGRESS_LIMIT_REACHED}
# LiveKit knows a destination as active, finished or failed; reconnecting is still active there.
_STREAM_STATUS = {"FINISHED": lk.StreamInfo.FINISHED, "FAILED": lk.StreamInfo.FAILED}
NS = 1_000_000_000


def _ns(seconds: float | None) -> int:
    return int(seconds * NS) if seconds else 0


def egress_info(rec: EgressRecord) -> lk.EgressInfo:
    """An egress as LiveKit's EgressInfo."""
    info = lk.EgressInfo(egress_id=rec.id, room_name=rec.room_name, status=_STATUS[rec.status],
                         started_at=_ns(rec.started_at), ended_at=_ns(rec.ended_at), updated_at=_ns(rec.updated_at),
                         error=rec.error or "")
    info.room_composite.room_name = rec.room_name
    info.room_composite.layout = rec.layout
    if rec.file:
        f = rec.file
        info.file_results.add(filename=f.get("filename", Path(f["location"]).name), location=f["location"],
                              size=f.get("size", 0), duration=_ns(f.get("duration")),
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
    return ["egress_started"] if rec.status == "ACTIVE" else ["egress_updated"]


def authorization(api_key: str, api_secret: str, body: bytes) -> str:
    """LiveKit's webhook signature: a JWT whose `sha256` claim is the body's hash."""
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return AccessToken(api_key, api_secret).with_sha256(digest).to_jwt()
