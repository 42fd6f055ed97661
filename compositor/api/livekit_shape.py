"""LiveKit's egress request JSON (RoomComposite, Web, Participant, TrackComposite, Track, and the unified
StartEgressRequest), mapped onto our start request.

So a body written for LiveKit Egress (`room_name`, `file_outputs`,
`stream_outputs`, `preset`, `advanced`, …) starts the same egress. A field
of LiveKit's that we do not honour is refused, naming it, rather than
dropped: a caller who set it expects what it does.
"""

from __future__ import annotations

from ..errors import InvalidRequest, Unsupported
from ..service.livekit_info import ADVANCED_FIELDS

# Keys only LiveKit's shape has; any of them marks a LiveKit body.
_ONLY_LIVEKIT = {"file_outputs", "stream_outputs", "segment_outputs", "image_outputs", "preset", "url",
                 "custom_base_url", "await_start_signal", "audio_mixing"}
_FILE_TYPES = {"DEFAULT_FILETYPE": "MP4", "MP4": "MP4", "OGG": "OGG", "WEBM": "WEBM", "MP3": "MP3"}
# LiveKit's AudioMixing by number (protobuf JSON may carry either); names are read by AudioSpec itself.
_MIXING = {0: "default", 1: "dual_channel_agent", 2: "dual_channel_alternate"}

# What of LiveKit's requests is honoured, field by field (proto names): a set field not named here is refused.
# A nested dict names the fields of a message (of each item of a list); None takes the value as it is (storage
# configurations are checked field by field by our storage models, which name what they do not know).
_STORAGE = {"s3": None, "gcp": None, "azure": None, "aliOSS": None}
_FILE = {"file_type": None, "filepath": None, **_STORAGE}
_STREAM = {"protocol": None, "urls": None}
_SEGMENT = {"filename_prefix", "playlist_name", "live_playlist_name", "segment_duration", "filename_suffix"}
_IMAGE = {"capture_interval", "width", "height", "filename_prefix", "filename_suffix"}
_SEGMENTS = dict.fromkeys(_SEGMENT | {"protocol"}) | _STORAGE
_IMAGES = dict.fromkeys(_IMAGE | {"image_codec"}) | _STORAGE
_ENCODING = dict.fromkeys(ADVANCED_FIELDS | {"video_codec", "audio_codec", "depth"})
_WEBHOOK = {"url": None, "signing_key": None, "filter_params": {"include_events": None, "exclude_events": None}}
_OUTPUTS = {"file": _FILE, "stream": _STREAM, "segments": _SEGMENTS, "file_outputs": _FILE,
            "stream_outputs": _STREAM, "segment_outputs": _SEGMENTS, "image_outputs": _IMAGES}
_COMMON = {"room_name": None, "preset": None, "advanced": _ENCODING, "webhooks": _WEBHOOK, **_OUTPUTS,
           # ours, beside LiveKit's: roomName as our REST shape spells it, and a synthetic room
           "roomName": None, "room": None}
_ROOM_COMPOSITE = {**_COMMON, "layout": None, "audio_only": None, "video_only": None, "audio_mixing": None,
                   "custom_base_url": None,
                   # a web egress's, which our REST shape sends through the same mapping
                   "url": None, "await_start_signal": None}
_PARTICIPANT = {**_COMMON, "identity": None, "screen_share": None}
_TRACK_COMPOSITE = {**_COMMON, "audio_track_id": None, "video_track_id": None}
_TRACK = {"room_name": None, "track_id": None, "websocket_url": None, "webhooks": _WEBHOOK,
          "file": {"filepath": None, **_STORAGE}}
_START = {"room_name": None, "preset": None, "advanced": _ENCODING, "webhooks": _WEBHOOK, "storage": _STORAGE,
          "template": {"layout": None, "audio_only": None, "video_only": None, "custom_base_url": None},
          "web": {"url": None, "audio_only": None, "video_only": None, "await_start_signal": None},
          "media": {"video_track_id": None, "participant_video": {"identity": None, "prefer_screen_share": None},
                    "audio": {"capture_all": None, "routes": {"track_id": None, "participant_identity": None,
                                                              "participant_kind": None, "channel": None}}},
          "outputs": {"file": {"file_type": None, "filepath": None}, "stream": _STREAM,
                      "segments": dict.fromkeys(_SEGMENT | {"protocol"}),
                      "images": dict.fromkeys(_IMAGE | {"image_codec"}), "storage": _STORAGE}}
# Fields of our request shape with no LiveKit counterpart, refused in LiveKit's.
_OURS_ONLY = {"sidecars"}
# Values of LiveKit's enums that ask for something we do not make.
_REFUSED_VALUES = {"protocol": {"WEBSOCKET", "HLS_FMP4_PROTOCOL"}}
_CODECS = {"DEFAULT_AC": None, "AAC": {"MP4"}, "OPUS": {"OGG", "WEBM"}, "AC_MP3": {"MP3"}}


def is_livekit(body: dict) -> bool:
    return bool(_ONLY_LIVEKIT & body.keys())


def _check_fields(body: dict, known: dict, where: str = "") -> None:
    """Refuse a field of `body` that is set (not at its default) and not honoured, naming it; and any of ours
    only (`sidecars`), set or not: a LiveKit request never carries it, and one that does mixes the two shapes."""
    if not where and (ours := sorted(_OURS_ONLY & body.keys())):
        raise InvalidRequest(f"{ours[0]} is not a LiveKit field: give it on /v1/egress/start in our shape",
                             details={"field": ours[0]})
    for key, value in body.items():
        path = f"{where}{key}"
        if key not in known:
            if value in (None, False, 0, "", [], {}):
                continue
            raise InvalidRequest(f"{path} is not supported by this server", details={"field": path})
        if isinstance(value, str) and value in _REFUSED_VALUES.get(key, ()):
            raise InvalidRequest(f"{path} {value} is not supported by this server", details={"field": path})
        sub = known[key]
        if sub is None:
            continue
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    _check_fields(item, sub, f"{path}.{i}.")
        elif isinstance(value, dict):
            _check_fields(value, sub, f"{path}.")


def from_livekit(body: dict) -> dict:
    """A LiveKit RoomComposite/Web egress request as our StartEgressRequest body."""
    _check_fields(body, _ROOM_COMPOSITE)
    return _mapped(body)


def _mapped(body: dict) -> dict:
    # Only a web egress may leave the room out (it records a page: no room is invented for it); the others
    # name a room, and an empty one is refused.
    out: dict = {"roomName": body.get("room_name") or body.get("roomName") or ""}
    for key in ("layout", "audio_only", "video_only", "room", "await_start_signal"):  # room: a synthetic room
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
    files = _items(body, "file_outputs", "file")
    if len(files) > 1:
        raise InvalidRequest("one file output per egress", details={"field": "file_outputs"})
    adv = body.get("advanced")
    if adv:
        out["advanced"] = _advanced(adv, files)
    # Each output's storage: one that every output names is the egress's; else each goes with its output
    # (an output naming none goes to the server's).
    named = {kind: _storage_of(item, where) for kind, where, item in _outputs(body, files)}
    own = {kind: st for kind, st in named.items() if st is not None}
    if own and len(own) == len(named) and all(st == next(iter(own.values())) for st in own.values()):
        out["storage"], own = next(iter(own.values())), {}
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
    for kind, storage in own.items():
        out[kind]["storage"] = storage
    recorded = files or segments is not None
    out["mode"] = "both" if recorded and streams else "stream" if streams else "record"
    if "webhooks" in body:
        hooks = body["webhooks"]
        out["webhooks"] = [_webhook(h, i) for i, h in enumerate(hooks)] if isinstance(hooks, list) else hooks
    return out


def _webhook(config, index: int):
    """LiveKit's WebhookConfig (url, signing_key, filter_params) as our webhooks item: LiveKit's format."""
    if not isinstance(config, dict):
        return config  # refused by the model, naming the field
    filters = config.get("filter_params") or {}
    if not isinstance(filters, dict):
        raise InvalidRequest(f"webhooks.{index}.filter_params must be an object",
                             details={"field": f"webhooks.{index}.filter_params"})
    out = {"url": config.get("url", ""), "format": "livekit", "includeEvents": filters.get("include_events", []),
           "excludeEvents": filters.get("exclude_events", [])}
    if config.get("signing_key"):
        out["signingKey"] = config["signing_key"]
    return out


def _advanced(adv: dict, files: list[dict]) -> dict:
    """LiveKit's EncodingOptions as ours; an audio codec is taken only where it is the file type's own."""
    mapped = {k: v for k, v in adv.items() if k in ADVANCED_FIELDS and v}
    if adv.get("depth") not in (None, 0, 24):
        raise InvalidRequest("advanced.depth: the video is 24-bit colour here", details={"field": "advanced.depth"})
    codec = str(adv.get("video_codec", "")).upper()
    if codec and codec != "DEFAULT_VC":  # LiveKit's H264_BASELINE/_MAIN/_HIGH are ours too
        mapped["video_codec"] = codec
    audio = str(adv.get("audio_codec") or "DEFAULT_AC").upper()
    file_type = _FILE_TYPES.get(str(files[0].get("file_type", "MP4")).upper()) if files else "MP4"
    if audio not in _CODECS or (_CODECS[audio] is not None and file_type not in _CODECS[audio]):
        raise InvalidRequest(f"advanced.audio_codec {audio} is not written in a {file_type} output: the audio "
                             "codec follows the file type (AAC in MP4, Opus in OGG and WebM, MP3 in MP3)",
                             details={"field": "advanced.audio_codec"})
    return mapped


def from_livekit_participant(body: dict) -> dict:
    """A LiveKit ParticipantEgressRequest (room_name, identity, screen_share, outputs) as our start body."""
    _check_fields(body, _PARTICIPANT)
    return {**_mapped(body), "participant": {"identity": body.get("identity", ""),
                                             "screen_share": bool(body.get("screen_share"))}}


def from_livekit_track_composite(body: dict) -> dict:
    """A LiveKit TrackCompositeEgressRequest (room_name, audio_track_id, video_track_id, outputs) as our body."""
    _check_fields(body, _TRACK_COMPOSITE)
    tracks = {k: body[k] for k in ("audio_track_id", "video_track_id") if body.get(k)}
    return {**_mapped(body), "track_composite": tracks}


def from_livekit_track(body: dict) -> dict:
    """A LiveKit TrackEgressRequest (room_name, track_id, then a DirectFileOutput `file` or a `websocket_url`)
    as our start body."""
    _check_fields(body, _TRACK)
    rest = {k: v for k, v in body.items() if k not in ("file", "track_id", "websocket_url")}
    if "file" in body:
        # A DirectFileOutput has no file_type: the track's sound is written as it comes, in OGG.
        rest["file_outputs"] = [{**body["file"], "file_type": "OGG"}]
    track = {"track_id": body.get("track_id", "")}
    if body.get("websocket_url"):
        track["websocket_url"] = body["websocket_url"]
    return {**_mapped(rest), "track": track}


def from_livekit_start(body: dict) -> dict:
    """LiveKit's unified StartEgressRequest (one source: template, web or media; encoding; outputs, each with
    its own storage or the request's) as our start body: rewritten as the older request of the same source,
    then mapped as that one is, so both shapes take one path."""
    _check_fields(body, _START)
    sources = [k for k in ("template", "web", "media") if k in body]
    if len(sources) != 1:
        raise InvalidRequest("give one source: template, web or media" + (
            f", not {' and '.join(sources)}" if sources else ""), details={"field": "source"})
    older = {k: body[k] for k in ("room_name", "preset", "advanced", "webhooks") if k in body}
    _place_outputs(body, older)
    source = body[sources[0]]
    if sources[0] == "template":
        return from_livekit({**older, **source})
    if sources[0] == "web":
        return from_livekit({**{k: v for k, v in older.items() if k != "room_name"}, **source})
    return _from_media(source, older)


def _place_outputs(body: dict, older: dict) -> None:
    """Each Output of `body` as the older request's output list of its kind, its storage (or the request's)
    inline as those carry it."""
    lists = {"file": "file_outputs", "stream": "stream_outputs", "segments": "segment_outputs",
             "images": "image_outputs"}
    for i, output in enumerate(body.get("outputs") or []):
        kinds = [k for k in lists if k in output]
        if len(kinds) != 1:
            raise InvalidRequest(f"outputs.{i}: give one of file, stream, segments and images",
                                 details={"field": f"outputs.{i}"})
        item = dict(output[kinds[0]])
        storage = output.get("storage") or body.get("storage")
        if storage and kinds[0] != "stream":
            item.update(storage)
        elif output.get("storage"):
            raise InvalidRequest(f"outputs.{i}: a stream output has no storage", details={"field": f"outputs.{i}"})
        older.setdefault(lists[kinds[0]], []).append(item)


_CHANNELS = {"AUDIO_CHANNEL_BOTH": "both", "AUDIO_CHANNEL_LEFT": "left", "AUDIO_CHANNEL_RIGHT": "right"}


def _from_media(media: dict, older: dict) -> dict:
    """A media source (a participant's or a track's video, and the audio its routes pick) as the participant
    or track composite egress that records the same tracks, its audio routed to the channels asked."""
    video_track, person = media.get("video_track_id"), media.get("participant_video")
    audio = media.get("audio") or {}
    routes = audio.get("routes") or []
    if video_track and person:
        raise InvalidRequest("media: give video_track_id or participant_video, not both",
                             details={"field": "media"})
    if audio.get("capture_all"):
        raise Unsupported("media.audio.capture_all is not supported: name the tracks or the participant to hear "
                          "in routes (or record the whole room with a template source)",
                          details={"field": "media.audio.capture_all"})
    by_track = [r for r in routes if r.get("track_id")]
    by_person = [r for r in routes if r.get("participant_identity")]
    if len(by_track) + len(by_person) != len(routes) or len(by_track) > 1 or (by_track and by_person):
        raise Unsupported("media.audio.routes: one track (by track_id) or one participant (by "
                          "participant_identity) can be heard in a media egress here",
                          details={"field": "media.audio.routes"})
    channel = {r.get("track_id") or r.get("participant_identity"): _CHANNELS.get(r.get("channel"), "both")
               for r in routes}
    if by_track or not person:
        tracks = {"video_track_id": video_track, "audio_track_id": by_track[0]["track_id"] if by_track else None}
        out = from_livekit_track_composite({**older, **{k: v for k, v in tracks.items() if v}})
    else:
        identity = person.get("identity", "")
        if by_person and by_person[0]["participant_identity"] != identity:
            raise Unsupported("media.audio.routes: a participant's video goes with that participant's own audio "
                              "here", details={"field": "media.audio.routes.0.participant_identity"})
        out = from_livekit_participant({**older, "identity": identity,
                                        "screen_share": bool(person.get("prefer_screen_share"))})
        out["video_only"] = not by_person
    key = "trackId" if by_track else "participantIdentity"
    routed = [{key: name, "channel": c} for name, c in channel.items() if c != "both"]
    if routed:
        out["audio"] = {"routes": routed}
    return out


_CLOUD = {"s3", "gcp", "azure", "aliOSS", "alioss"}


def _items(body: dict, key: str, single: str | None) -> list[dict]:
    """The outputs of a kind: the `key` list, or LiveKit's older single field."""
    return body.get(key) or ([body[single]] if single and body.get(single) else [])


def _outputs(body: dict, files: list[dict]):
    """(our output kind, field, output) for each file, segment and image output of the body."""
    for i, f in enumerate(files):
        yield "file", f"file_outputs.{i}", f
    for kind, key, single in (("segments", "segment_outputs", "segments"), ("images", "image_outputs", None)):
        for i, item in enumerate(_items(body, key, single)):
            yield kind, f"{key}.{i}", item


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
