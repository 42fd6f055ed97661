"""Ingress over HTTP: our REST shape (`/v1/ingress`), LiveKit's Ingress service over Twirp, WHIP (`/w`).

One translation per shape into `IngressRequest`/`IngressUpdate`: REST bodies are ours (camelCase, snake_case
taken too); LiveKit's messages go through `from_livekit_ingress`. What an ingress looks like going out is one
view per shape: `ingress_view` (REST) and `livekit_info.ingress_info` (Twirp, webhooks).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from livekit.protocol import ingress as lki

from ..errors import InvalidRequest, NotFound, Unauthenticated, Unsupported
from ..protocol import InputKind
from ..service import livekit_info
from ..service.ingress import IngressRequest, IngressService, IngressUpdate, redact_source
from ..service.results import iso
from ..service.seams import IngressRecord
from ..service.service import Service
from .bodies import read_body, validated
from .models import IngressInfo, IngressSession
from .twirp import Method, TwirpService

WHIP_PATH = "/w"
SDP = "application/sdp"
MAX_OFFER = 64 * 1024
_INPUT = {"RTMP_INPUT": "rtmp", "WHIP_INPUT": "whip", "URL_INPUT": "url"}


def ingresses(service: Service) -> IngressService:
    """The node's ingress service, or Unsupported where it runs none (a service built without ingress workers)."""
    if service.ingress is None:
        raise Unsupported("this service runs no ingress")
    return service.ingress


def publish_url(service: Service, rec: IngressRecord, origin: str) -> str:
    """Where publishers go: the RTMP server's app URL, the WHIP endpoint; a URL ingress's source (redacted)."""
    if rec.input_type == InputKind.URL:
        return redact_source(rec.url)
    if rec.input_type == InputKind.RTMP:
        return f"rtmp://{_public_host(service, origin)}:{service.settings.ingress_rtmp_port}/live"
    return origin.rstrip("/") + WHIP_PATH


def _public_host(service: Service, origin: str) -> str:
    """The host publishers reach this node at: the setting, or the host the API was called at."""
    return service.settings.ingress_public_host or urlsplit(origin).hostname or "127.0.0.1"


def ingress_view(service: Service, rec: IngressRecord, origin: str) -> dict:
    """An ingress as our REST API shows it."""
    settings = service.settings
    rtmps = None
    if rec.input_type == InputKind.RTMP and settings.ingress_rtmps_port:
        rtmps = f"rtmps://{_public_host(service, origin)}:{settings.ingress_rtmps_port}/live"
    return IngressInfo(
        ingress_id=rec.id, name=rec.name, input_type=rec.input_type, url=publish_url(service, rec, origin),
        stream_key=rec.stream_key, rtmps_url=rtmps, room_name=rec.room_name,
        participant_identity=rec.participant_identity, participant_name=rec.participant_name,
        participant_metadata=rec.participant_metadata, enabled=rec.enabled, reusable=rec.reusable,
        enable_transcoding=rec.enable_transcoding, video=rec.video, audio=rec.audio, created_at=iso(rec.created_at),
        state=IngressSession(status=rec.state, error=rec.error or None, error_code=rec.error_code or None,
                             resource_id=rec.resource_id or None, room_id=rec.room_id or None,
                             started_at=iso(rec.started_at), ended_at=iso(rec.ended_at),
                             updated_at=iso(rec.updated_at), video=rec.input_video, audio=rec.input_audio,
                             tracks=rec.tracks or [])).model_dump(by_alias=True)


def _origin(request: web.Request) -> str:
    return str(request.url.origin())


# --- REST ---------------------------------------------------------------------------------------------------


async def create_ingress(request: web.Request, service: Service, body: dict) -> web.Response:
    rec = await ingresses(service).create(validated(IngressRequest, body))
    return web.json_response(ingress_view(service, rec, _origin(request)), status=201)


async def list_ingress(request: web.Request, service: Service) -> web.Response:
    recs = await ingresses(service).list(request.query.get("roomName"), request.query.get("ingressId"))
    return web.json_response({"items": [ingress_view(service, r, _origin(request)) for r in recs]})


async def get_ingress(request: web.Request, service: Service) -> web.Response:
    rec = await ingresses(service).get(request.match_info["id"])
    return web.json_response(ingress_view(service, rec, _origin(request)))


async def update_ingress(request: web.Request, service: Service, body: dict) -> web.Response:
    rec = await ingresses(service).update(request.match_info["id"], validated(IngressUpdate, body))
    return web.json_response(ingress_view(service, rec, _origin(request)))


async def delete_ingress(request: web.Request, service: Service) -> web.Response:
    rec = await ingresses(service).delete(request.match_info["id"])
    return web.json_response(ingress_view(service, rec, _origin(request)))


# --- WHIP ---------------------------------------------------------------------------------------------------


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header[:7].lower() == "bearer " else ""


async def whip_offer(request: web.Request, service: Service) -> web.Response:
    """A WHIP publisher's offer: `POST /w` with its stream key as Bearer token (or `POST /w/{stream_key}`);
    201 with the answer and the session's Location."""
    key = request.match_info.get("key") or _bearer(request)
    if not key:
        raise Unauthenticated("WHIP needs the ingress's stream key (Authorization: Bearer <stream key>)")
    if request.content_type != SDP:
        raise InvalidRequest(f"a WHIP offer is {SDP}, not {request.content_type!r}")
    body = await read_body(request, service.settings.request_timeout_s)
    if len(body) > MAX_OFFER:
        raise InvalidRequest("the SDP offer is too large")
    try:
        offer = body.decode()
    except UnicodeDecodeError:
        raise InvalidRequest("the SDP offer is not text") from None
    if not offer.startswith("v=0"):
        raise InvalidRequest("the body is not an SDP offer")
    try:
        rec, answer = await ingresses(service).whip(key, offer)
    except NotFound:
        raise Unauthenticated("unknown stream key") from None
    location = f"{WHIP_PATH}/session/{rec.resource_id}"
    return web.Response(status=201, text=answer, headers={"Content-Type": SDP, "Location": location,
                                                          "X-Ingress-Id": rec.id})


async def whip_delete(request: web.Request, service: Service) -> web.Response:
    """The publisher ends its WHIP session (its stream key as Bearer token)."""
    key = _bearer(request)
    if not key:
        raise Unauthenticated("ending a WHIP session needs its stream key (Authorization: Bearer <stream key>)")
    await ingresses(service).whip_end(key, request.match_info["resource"])
    return web.Response(status=200)


# --- LiveKit's Ingress service over Twirp ---------------------------------------------------------------------


def from_livekit_ingress(body: dict) -> dict:
    """A LiveKit CreateIngressRequest / UpdateIngressRequest (protobuf JSON, proto names) as our body."""
    out = {k: v for k, v in body.items() if k not in ("input_type", "video", "audio", "ingress_id")}
    if "input_type" in body:
        out["input_type"] = _INPUT.get(str(body["input_type"]), body["input_type"])
    for kind in ("video", "audio"):
        given = body.get(kind)
        if given is None:
            continue
        mapped: dict = {"source": str(given.get("source", "")).lower()} if given.get("source") not in (
            None, "UNKNOWN") else {}
        if given.get("name"):
            mapped["name"] = given["name"]
        if "preset" in given:
            mapped["preset"] = given["preset"]
        if "options" in given:
            options = given["options"]
            if kind == "video":
                mapped["options"] = {"frame_rate": options.get("frame_rate") or 30,
                                     "layers": [{k: layer.get(k, 0) for k in ("width", "height", "bitrate")}
                                                for layer in options.get("layers", [])]}
            else:
                mapped["options"] = {k: options[k] for k in ("bitrate", "channels") if options.get(k)}
        out[kind] = mapped
    return out


def _as_dict(msg: Message) -> dict:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


async def _create(service: Service, msg: lki.CreateIngressRequest, request: web.Request) -> lki.IngressInfo:
    body = _as_dict(msg)
    body.setdefault("input_type", "RTMP_INPUT")  # the enum's zero is left out of protobuf JSON
    rec = await ingresses(service).create(validated(IngressRequest, from_livekit_ingress(body)))
    return livekit_info.ingress_info(rec, publish_url(service, rec, _origin(request)))


async def _update(service: Service, msg: lki.UpdateIngressRequest, request: web.Request) -> lki.IngressInfo:
    body = {k: v for k, v in from_livekit_ingress(_as_dict(msg)).items() if v not in ("", None)}
    body.pop("input_type", None)
    rec = await ingresses(service).update(msg.ingress_id, validated(IngressUpdate, body))
    return livekit_info.ingress_info(rec, publish_url(service, rec, _origin(request)))


async def _list(service: Service, msg: lki.ListIngressRequest, request: web.Request) -> lki.ListIngressResponse:
    recs = await ingresses(service).list(msg.room_name or None, msg.ingress_id or None)
    return lki.ListIngressResponse(items=[livekit_info.ingress_info(r, publish_url(service, r, _origin(request)))
                                          for r in recs])


async def _delete(service: Service, msg: lki.DeleteIngressRequest, request: web.Request) -> lki.IngressInfo:
    rec = await ingresses(service).delete(msg.ingress_id)
    return livekit_info.ingress_info(rec, publish_url(service, rec, _origin(request)))


TWIRP_METHODS: dict[str, Method] = {
    "CreateIngress": Method(lki.CreateIngressRequest, _create),
    "UpdateIngress": Method(lki.UpdateIngressRequest, _update),
    "ListIngress": Method(lki.ListIngressRequest, _list),
    "DeleteIngress": Method(lki.DeleteIngressRequest, _delete),
}

INGRESS_SERVICE = TwirpService(TWIRP_METHODS, ("ingress_admin", "ingressAdmin"), frozenset(
    m.name for m in lki.DESCRIPTOR.services_by_name["Ingress"].methods))
