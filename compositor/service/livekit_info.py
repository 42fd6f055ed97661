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
from livekit.protocol import ingress as lki
from livekit.protocol import models as lkm
from livekit.protocol.webhook import WebhookEvent

from ..presets import ALIASES
from ..protocol import IngressState, InputKind, Status, StreamStatus
from .results import iso
from .seams import EgressRecord, IngressRecord

_STATUS = {Status.STARTING: lk.EGRESS_STARTING, Status.ACTIVE: lk.EGRESS_ACTIVE, Status.ENDING: lk.EGRESS_ENDING,
           Status.COMPLETE: lk.EGRESS_COMPLETE, Status.FAILED: lk.EGRESS_FAILED, Status.ABORTED: lk.EGRESS_ABORTED,
           Status.LIMIT_REACHED: lk.EGRESS_LIMIT_REACHED}
# LiveKit knows a destination as active, finished or failed; reconnecting is still active there.
_STREAM_STATUS = {StreamStatus.FINISHED: lk.StreamInfo.FINISHED, StreamStatus.FAILED: lk.StreamInfo.FAILED}
NS = 1_000_000_000
#: our stopped_by as LiveKit's egress words its end reasons
END_REASONS = {"stopped": "StopEgress API", "room_ended": "Source closed", "limit": "Session limit reached",
               "streams_removed": "All streams stopped"}


#: LiveKit EncodingOptions fields that mean the same in ours (same names, same units).
ADVANCED_FIELDS = {"width", "height", "framerate", "video_bitrate", "audio_bitrate", "audio_frequency",
                   "key_frame_interval"}


def _ns(seconds: float | None) -> int:
    return round(seconds * NS) if seconds else 0


def egress_info(rec: EgressRecord) -> lk.EgressInfo:
    """An egress as LiveKit's EgressInfo: status, times, results, the request it was started with, and the
    single-result fields older clients read."""
    info = _results(rec)
    if rec.request_shape == "start_egress":
        _set_start_request(info.egress, rec)
    else:
        _set_request(info, rec)
    if rec.error_code:
        info.details = rec.error_code
    elif rec.stopped_by in END_REASONS or rec.end_reason:
        # LiveKit's egress says why an egress ended in `details`, as "End reason: Source closed" (its
        # EgressInfo.SetEndReason); it has no idle stop, so that reason is ours, in words.
        info.details = f"End reason: {rec.end_reason or END_REASONS[rec.stopped_by]}"
    elif rec.paused:
        # LiveKit has no pause: `details` says it (the status stays EGRESS_ACTIVE).
        info.details = (f"Paused since {iso(rec.pauses[-1]['start'])}: files and HLS leave this out, live "
                        "destinations show the slate")
    elif (upload := rec.upload or {}).get("status") == "RETRYING":
        info.details = f"storing {upload.get('key')}: attempt {upload.get('attempt')} failed ({upload.get('error')})"
        info.retry_count = upload.get("attempt") or 0
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
        target.audio_track_id, target.video_track_id = _composite_tracks(req)
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
    mixing = (req.get("audio") or {}).get("mixing", "default")
    if rec.kind == "room_composite" and mixing != "default":
        target.audio_mixing = lk.AudioMixing.Value(mixing.upper())
    if rec.kind != "track":
        _set_encoding(target, rec)


def _set_start_request(target: lk.StartEgressRequest, rec: EgressRecord) -> None:
    """LiveKit's unified request, rebuilt as `_set_request` does the older ones: its source and encoding."""
    req = rec.request
    room = req.get("room") or {}
    if rec.kind == "web":
        target.web.url, target.web.await_start_signal = req.get("web_url", ""), req.get("await_start_signal", False)
        target.web.audio_only, target.web.video_only = req.get("audio_only", False), req.get("video_only", False)
    else:
        target.room_name = rec.room_name
    if rec.kind == "room_composite":
        target.template.layout = rec.layout
        target.template.audio_only = req.get("audio_only", False)
        target.template.video_only = req.get("video_only", False)
    elif rec.kind == "participant":
        identity = room.get("identity", "")
        target.media.participant_video.identity = identity
        target.media.participant_video.prefer_screen_share = room.get("screen_share", False)
        if not req.get("video_only"):
            target.media.audio.routes.add(participant_identity=identity, channel=_channel(req, identity))
    elif rec.kind == "track_composite":
        audio, video = _composite_tracks(req)
        target.media.video_track_id = video
        if audio:
            target.media.audio.routes.add(track_id=audio, channel=_channel(req, audio))
    _set_encoding(target, rec)


def _composite_tracks(req: dict) -> tuple[str, str]:
    """A track composite's (audio, video) track ids: the worker got [audio, video], leaving out the one not
    asked for (which made it video- or audio-only)."""
    ids = (req.get("room") or {}).get("track_ids") or []
    return tuple(ids) if len(ids) == 2 else (ids[0], "") if req.get("audio_only") else ("", ids[0])


def _channel(req: dict, name: str) -> int:
    """The channel the request's audio routes give the track or identity `name` (LiveKit's AudioChannel)."""
    routes = (req.get("audio") or {}).get("routes") or []
    side = next((r.get("channel", "both") for r in routes
                 if name in (r.get("track_id"), r.get("participant_identity"))), "both")
    return lk.AudioChannel.Value(f"AUDIO_CHANNEL_{side.upper()}")


def _set_encoding(target: Message, rec: EgressRecord) -> None:
    """The request's encoding: its advanced options as LiveKit names them, or the preset it named."""
    advanced = {k: v for k, v in (rec.request.get("advanced") or {}).items() if k in ADVANCED_FIELDS}
    if advanced:
        target.advanced.CopyFrom(lk.EncodingOptions(**advanced))
    elif rec.quality.upper() in ALIASES:
        target.preset = lk.EncodingOptionsPreset.Value(rec.quality.upper())


def _results(rec: EgressRecord) -> lk.EgressInfo:
    """Status, times and the results of every output."""
    # A web egress records a page, not a room: LiveKit leaves its room_name empty.
    info = lk.EgressInfo(egress_id=rec.id, room_name="" if rec.kind == "web" else rec.room_name,
                         status=_STATUS[rec.status],
                         started_at=_ns(rec.started_at), ended_at=_ns(rec.ended_at), updated_at=_ns(rec.updated_at),
                         error=rec.error or "")
    if rec.file or rec.request.get("file"):
        # LiveKit names the file from the start; where it went and its size come once it is written.
        f = rec.file or {}
        info.file_results.add(filename=file_key(rec), location=f.get("location", ""),
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


def file_key(rec: EgressRecord) -> str:
    """The egress's file as its storage names it, folders included (`recordings/x.mp4`): LiveKit's
    `filename`. Known from the start: the service fixed it when it planned the egress."""
    f = rec.file or {}
    if f.get("key"):
        return f["key"]
    path = (rec.request.get("file") or {}).get("filepath")
    staging = (rec.request.get("upload") or {}).get("staging")
    if path and staging and Path(path).is_relative_to(staging):
        return Path(path).relative_to(staging).as_posix()
    return f.get("filename") or (Path(path).name if path else "")


def webhook_event(rec: EgressRecord, name: str, event_id: str) -> str:
    """A LiveKit webhook body (protobuf JSON, as LiveKit sends it)."""
    event = WebhookEvent(event=name, id=event_id, created_at=int(time.time()), egress_info=egress_info(rec))
    return MessageToJson(event, indent=None)


def events_for(rec: EgressRecord, previous: str | None, previous_upload: dict | None = None,
               previous_pauses: list | None = None) -> list[str]:
    """LiveKit's event names for a change: started when live, updated on the way (a pause or resume, a storage
    retried or given up for the backup among it), ended at the end."""
    if rec.status == previous:
        if (rec.pauses or []) != (previous_pauses or []) and not rec.ended:
            return ["egress_updated"]
        upload = rec.upload or {}
        news = upload and (upload.get("status"), upload.get("attempt")) != (
            (previous_upload or {}).get("status"), (previous_upload or {}).get("attempt"))
        return ["egress_updated"] if news and not rec.ended else []
    if rec.ended:
        return ["egress_ended"]
    return ["egress_started"] if rec.status == Status.ACTIVE else ["egress_updated"]


def authorization(api_key: str, api_secret: str, body: bytes) -> str:
    """LiveKit's webhook signature: a JWT whose `sha256` claim is the body's hash."""
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    return AccessToken(api_key, api_secret).with_sha256(digest).to_jwt()


_INPUT = {InputKind.RTMP: lki.RTMP_INPUT, InputKind.WHIP: lki.WHIP_INPUT, InputKind.URL: lki.URL_INPUT}
_INGRESS_STATUS = {IngressState.INACTIVE: lki.IngressState.ENDPOINT_INACTIVE,
                   IngressState.BUFFERING: lki.IngressState.ENDPOINT_BUFFERING,
                   IngressState.PUBLISHING: lki.IngressState.ENDPOINT_PUBLISHING,
                   IngressState.ERROR: lki.IngressState.ENDPOINT_ERROR,
                   IngressState.COMPLETE: lki.IngressState.ENDPOINT_COMPLETE}
_SOURCE = {"camera": lkm.CAMERA, "microphone": lkm.MICROPHONE, "screen_share": lkm.SCREEN_SHARE,
           "screen_share_audio": lkm.SCREEN_SHARE_AUDIO}


def ingress_info(rec: IngressRecord, url: str = "") -> lki.IngressInfo:
    """An ingress as LiveKit's IngressInfo; `url` is where publishers go (RTMP server, WHIP endpoint) or, for
    a URL ingress, its source as shown."""
    info = lki.IngressInfo(
        ingress_id=rec.id, name=rec.name, stream_key=rec.stream_key, url=url, input_type=_INPUT[InputKind(
            rec.input_type)], enable_transcoding=rec.enable_transcoding, bypass_transcoding=not rec.enable_transcoding,
        room_name=rec.room_name,
        participant_identity=rec.participant_identity, participant_name=rec.participant_name,
        participant_metadata=rec.participant_metadata, reusable=rec.reusable, enabled=rec.enabled)
    video, audio = rec.video or {}, rec.audio or {}
    info.video.source = _SOURCE[video.get("source", "camera")]
    info.video.name = video.get("name", "")
    if video.get("preset"):
        info.video.preset = lki.IngressVideoEncodingPreset.Value(video["preset"])
    elif options := video.get("options"):
        info.video.options.frame_rate = options.get("frame_rate", 30)
        for layer in options["layers"]:
            info.video.options.layers.add(width=layer["width"], height=layer["height"], bitrate=layer["bitrate"])
    info.audio.source = _SOURCE[audio.get("source", "microphone")]
    info.audio.name = audio.get("name", "")
    if audio.get("preset"):
        info.audio.preset = lki.IngressAudioEncodingPreset.Value(audio["preset"])
    elif options := audio.get("options"):
        info.audio.options.bitrate, info.audio.options.channels = options.get("bitrate", 96000), options.get(
            "channels", 2)
    state = info.state
    state.status = _INGRESS_STATUS[rec.state]
    state.error = rec.error
    state.room_id = rec.room_id
    state.resource_id = rec.resource_id
    state.started_at, state.ended_at, state.updated_at = _ns(rec.started_at), _ns(rec.ended_at), _ns(rec.updated_at)
    for kind, given in (("video", rec.input_video), ("audio", rec.input_audio)):
        if given:
            target = getattr(state, kind)
            for key, value in given.items():
                if key in target.DESCRIPTOR.fields_by_name:
                    setattr(target, key, value)
    for t in rec.tracks or []:
        state.tracks.add(sid=t.get("sid", ""), type=lkm.VIDEO if t.get("type") == "video" else lkm.AUDIO,
                         name=t.get("name", ""), source=_SOURCE.get(t.get("source", ""), lkm.UNKNOWN),
                         width=t.get("width", 0), height=t.get("height", 0), simulcast=bool(t.get("simulcast")),
                         mime_type=t.get("mime_type", ""))
    return info


def ingress_events_for(rec: IngressRecord, previous: IngressState) -> list[str]:
    """LiveKit's ingress events: started once publishing, ended when a session ends."""
    if rec.state == previous:
        return []
    if rec.state == IngressState.PUBLISHING:
        return ["ingress_started"]
    live = (IngressState.BUFFERING, IngressState.PUBLISHING)
    return ["ingress_ended"] if previous in live and rec.state not in live else []


def ingress_webhook_event(rec: IngressRecord, name: str, event_id: str) -> str:
    """A LiveKit ingress webhook body (the stream key left out: webhooks travel to other systems)."""
    info = ingress_info(rec)
    info.stream_key = ""
    event = WebhookEvent(event=name, id=event_id, created_at=int(time.time()), ingress_info=info)
    return MessageToJson(event, indent=None)
