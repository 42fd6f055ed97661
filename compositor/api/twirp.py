"""LiveKit's Egress and Ingress services over Twirp (`POST /twirp/livekit.Egress/{Method}`,
`/twirp/livekit.Ingress/{Method}`), so the egress and ingress clients of LiveKit's server SDKs work pointed at
this service.

Bodies are LiveKit's own messages, in protobuf (`application/protobuf`) or protobuf JSON
(`application/json`); the answer comes in the request's encoding, errors in Twirp's JSON. Callers
authenticate as with LiveKit: an access token signed with the service's livekit_api_key/secret that
grants roomRecord (Egress) or ingressAdmin (Ingress).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import jwt
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet
from livekit.api import TokenVerifier
from livekit.protocol import egress as proto

from ..errors import CapacityExceeded, CompositorError, InvalidRequest
from ..protocol import ACTIVE_STATUSES
from ..service import livekit_info
from ..service.requests import StartEgressRequest, UpdateStreamsRequest
from ..service.service import Service
from .bodies import read_body, validated
from .livekit_shape import (
    from_livekit,
    from_livekit_participant,
    from_livekit_start,
    from_livekit_track,
    from_livekit_track_composite,
)

log = logging.getLogger(__name__)
_PROTOCOL_VERSION = version("livekit-protocol")

PREFIX = "/twirp/"
ROUTE = PREFIX + "{route:.*}"
EGRESS, INGRESS = "livekit.Egress", "livekit.Ingress"
PROTOBUF, JSON = "application/protobuf", "application/json"
#: ListEgress answers this many egresses at a time; next_page_token asks for the next ones.
LIST_PAGE = 100

#: Twirp's error codes and the HTTP status each goes with.
STATUS = {"invalid_argument": 400, "malformed": 400, "bad_route": 404, "unauthenticated": 401,
          "permission_denied": 403, "not_found": 404, "already_exists": 409, "failed_precondition": 412,
          "resource_exhausted": 429, "unimplemented": 501, "unavailable": 503, "internal": 500}
# Our errors by HTTP status; a 409 (the egress's state forbids it) is Twirp's failed_precondition.
_BY_STATUS = {400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied", 404: "not_found",
              409: "failed_precondition", 503: "unavailable"}


class TwirpError(Exception):
    """An error as Twirp sends it: a code of STATUS, a message and string metadata."""

    def __init__(self, code: str, msg: str, meta: dict[str, str] | None = None, retry_after: int | None = None):
        super().__init__(msg)
        self.code, self.msg, self.meta, self.retry_after = code, msg, meta or {}, retry_after

    @classmethod
    def of(cls, err: CompositorError) -> TwirpError:
        """One of our errors in Twirp's terms; its own code and details go in the metadata."""
        code = "resource_exhausted" if isinstance(err, CapacityExceeded) else _BY_STATUS.get(err.http_status,
                                                                                            "internal")
        meta = {"error_code": err.code, **{k: str(v) for k, v in err.details.items()}}
        return cls(code, err.message, meta, err.retry_after)

    def response(self) -> web.Response:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after else {}
        return _reply(json.dumps({"code": self.code, "msg": self.msg, "meta": self.meta}).encode(), JSON,
                      STATUS[self.code], headers)


def _reply(body: bytes, kind: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # The Content-Type exactly, without aiohttp's "; charset=utf-8": LiveKit's Node SDK reads an error's
    # code and message only when it is exactly application/json.
    return web.Response(body=body, status=status, headers={"Content-Type": kind, **(headers or {})})


#: A method's answer to its message (the HTTP request gives the host its URLs are shown at).
Call = Callable[[Service, Any, web.Request], Awaitable[Message]]


@dataclass(frozen=True)
class Method:
    """One method of a service: the message its body holds, and what answers it."""

    request: type[Message]
    call: Call


@dataclass(frozen=True)
class TwirpService:
    """A Twirp service: its methods, and the grant an access token needs for them."""

    methods: dict[str, Method]
    #: the VideoGrants attribute, and its name as LiveKit says it
    grant: tuple[str, str]
    #: every method LiveKit's service declares (those not in `methods` answer unimplemented)
    declared: frozenset[str]


def handler(service: Service, services: dict[str, TwirpService]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The aiohttp handler of every path under /twirp/ (register it for ROUTE), serving `services` of
    `service`."""

    async def handle(request: web.Request) -> web.Response:
        try:
            return await _serve(service, services, request)
        except TwirpError as err:
            return err.response()
        except CompositorError as err:
            if err.http_status >= 500 and err.http_status != 503:
                log.exception("twirp %s failed", request.path)
            return TwirpError.of(err).response()
        except Exception:
            # A Twirp client reads every error as Twirp JSON; a bare 500 would be an "unknown" to it.
            log.exception("twirp %s failed", request.path)
            return TwirpError("internal", "internal error").response()

    return handle


async def _serve(service: Service, services: dict[str, TwirpService], request: web.Request) -> web.Response:
    service_name, _, name = request.match_info["route"].partition("/")
    served = services.get(service_name)
    method = served.methods.get(name) if served else None
    route = f"{request.method} {request.path}"
    if request.method != "POST" or method is None:
        if request.method == "POST" and served and name in served.declared:
            raise TwirpError("unimplemented", f"{name} is not served here; the methods are "
                                              f"{', '.join(served.methods)}")
        raise TwirpError("bad_route", f"no such method: {route}", {"twirp_invalid_route": route})
    settings = service.settings
    if not (settings.livekit_api_key and settings.livekit_api_secret):
        raise TwirpError("unimplemented", f"the LiveKit {service_name.split('.')[1]} API checks LiveKit access "
                         "tokens: set livekit_api_key and livekit_api_secret (COMPOSITOR_LIVEKIT_API_KEY, "
                         "COMPOSITOR_LIVEKIT_API_SECRET)")
    _authorize(request.headers.get("Authorization", ""), settings.livekit_api_key, settings.livekit_api_secret,
               served.grant)
    kind = request.content_type
    if kind not in (PROTOBUF, JSON):
        raise TwirpError("bad_route", f"unexpected Content-Type: {kind!r} (use {PROTOBUF} or {JSON})",
                         {"twirp_invalid_route": route})
    try:
        body = await read_body(request, settings.request_timeout_s)
    except web.HTTPRequestEntityTooLarge:
        raise TwirpError("malformed", "the request body is too large") from None
    reply = await method.call(service, _parse(body, method.request(), kind), request)
    if kind == JSON:
        # As Twirp's own servers answer: proto field names, fields at their defaults included.
        text = json_format.MessageToJson(reply, preserving_proto_field_name=True, indent=None,
                                         always_print_fields_with_no_presence=True)
        return _reply(text.encode(), JSON)
    return _reply(reply.SerializeToString(), PROTOBUF)


def _authorize(header: str, api_key: str, api_secret: str, grant: tuple[str, str]) -> None:
    """Accept a LiveKit access token of this server's key that grants `grant`, as LiveKit's server does."""
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not token:
        raise TwirpError("unauthenticated", "no access token (Authorization: Bearer <LiveKit access token>)")
    try:
        claims = TokenVerifier(api_key, api_secret).verify(token)
    # jwt's errors for a bad signature, issuer or expiry; the others for claims of the wrong shape (a room
    # configuration protobuf cannot parse among them).
    except (jwt.PyJWTError, json_format.Error, ValueError, TypeError, AttributeError):
        raise TwirpError("unauthenticated", "invalid access token: expired, or not signed with this server's "
                         "LiveKit API key and secret") from None
    attribute, name = grant
    if not (claims.video and getattr(claims.video, attribute)):
        raise TwirpError("permission_denied", f"the access token does not grant {name}")


def _parse(body: bytes, message: Message, kind: str) -> Message:
    """`body` as `message`; malformed names where it went wrong, never a value (it may be a secret). A field
    this server does not know is refused, naming it: a newer client that set it expects what it does."""
    name = message.DESCRIPTOR.full_name
    try:
        if kind == JSON:
            json_format.Parse(body or b"{}", message)
        else:
            message.ParseFromString(body)
    except (json_format.ParseError, DecodeError, UnicodeDecodeError) as exc:
        if unknown := _UNKNOWN_JSON.search(str(exc)):
            field, at = unknown.group(1)[:64], unknown.group(2).partition(".")[2]
            _refuse_unknown(f"{at}.{field}" if at else field, name)
        where = ".".join(re.findall(r"Failed to parse (\w+) field", str(exc)))
        raise TwirpError("malformed", f"the body is not a {name} in {kind}" + (f" (at {where})" if where else "")
                         ) from None
    if kind == PROTOBUF:
        _check_unknown(message, "")
    return message


_UNKNOWN_JSON = re.compile(r'has no field named "([^"]*)" at "([\w.\[\]]*)"')


def _refuse_unknown(path: str, name: str) -> None:
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    raise TwirpError("invalid_argument", f"{path}: {name} has no such field here (this server speaks "
                                         "livekit-protocol " + _PROTOCOL_VERSION + ")", {"field": path})


def _check_unknown(message: Message, where: str) -> None:
    """Refuse a protobuf field of a number this server's messages do not have, anywhere in `message`."""
    for field in UnknownFieldSet(message):
        _refuse_unknown(f"{where}{field.field_number}", message.DESCRIPTOR.full_name)
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None or descriptor.message_type.GetOptions().map_entry:
            continue
        items = value if descriptor.is_repeated else [value]
        for i, item in enumerate(items):
            index = f".{i}" if descriptor.is_repeated else ""
            _check_unknown(item, f"{where}{descriptor.name}{index}.")


def _start(mapping: Callable[[dict], dict], shape: str = "") -> Call:
    """A Start*Egress method: LiveKit's request mapped (by `mapping`) onto ours, then started; its answers come
    in `shape` (EgressRecord.request_shape)."""

    async def start(service: Service, msg: Message, _: web.Request) -> proto.EgressInfo:
        body = json_format.MessageToDict(msg, preserving_proto_field_name=True)
        return livekit_info.egress_info(await service.start(validated(StartEgressRequest, mapping(body)), shape))

    return start


async def _stop(service: Service, msg: proto.StopEgressRequest, _: web.Request) -> proto.EgressInfo:
    return livekit_info.egress_info(await service.stop(msg.egress_id))


async def _update_layout(service: Service, msg: proto.UpdateLayoutRequest, _: web.Request) -> proto.EgressInfo:
    return livekit_info.egress_info(await service.update_layout(msg.egress_id, msg.layout))


async def _update_stream(service: Service, msg: proto.UpdateStreamRequest, _: web.Request) -> proto.EgressInfo:
    change = validated(UpdateStreamsRequest, {"add_output_urls": list(msg.add_output_urls),
                                               "remove_output_urls": list(msg.remove_output_urls)})
    return livekit_info.egress_info(await service.update_streams(msg.egress_id, change.add, change.remove))


async def _list(service: Service, msg: proto.ListEgressRequest, _: web.Request) -> proto.ListEgressResponse:
    room = msg.room_name or None
    out = proto.ListEgressResponse()
    if msg.egress_id:
        rec = await service.store.get(msg.egress_id)
        recs = [rec] if rec and room in (None, rec.room_name) else []
    elif msg.active:
        # Active egresses are few (capacity and queue bound them): one answer, no pages.
        recs = sorted((r for r in await service.store.unfinished() if room in (None, r.room_name)),
                      key=lambda r: (r.created_at, r.id))
    else:
        token = msg.page_token.token or "1"
        if not token.isdigit() or int(token) < 1:
            raise InvalidRequest("page_token is not one this server gave", details={"field": "page_token"})
        page = int(token)
        # Oldest first, as LiveKit lists them (`lk egress list --limit 3` shows the first three started).
        recs, total = await service.store.list(room_name=room, page=page, limit=LIST_PAGE,
                                               oldest_first=True)
        if page * LIST_PAGE < total:
            out.next_page_token.token = str(page + 1)
    out.items.extend(livekit_info.egress_info(r) for r in recs if not msg.active or r.status in ACTIVE_STATUSES)
    return out


EGRESS_METHODS: dict[str, Method] = {
    "StartRoomCompositeEgress": Method(proto.RoomCompositeEgressRequest, _start(from_livekit)),
    "StartWebEgress": Method(proto.WebEgressRequest, _start(from_livekit)),
    "StartParticipantEgress": Method(proto.ParticipantEgressRequest, _start(from_livekit_participant)),
    "StartTrackCompositeEgress": Method(proto.TrackCompositeEgressRequest, _start(from_livekit_track_composite)),
    "StartTrackEgress": Method(proto.TrackEgressRequest, _start(from_livekit_track)),
    "StartEgress": Method(proto.StartEgressRequest, _start(from_livekit_start, "start_egress")),
    "UpdateLayout": Method(proto.UpdateLayoutRequest, _update_layout),
    "UpdateStream": Method(proto.UpdateStreamRequest, _update_stream),
    "ListEgress": Method(proto.ListEgressRequest, _list),
    "StopEgress": Method(proto.StopEgressRequest, _stop),
}
EGRESS_SERVICE = TwirpService(EGRESS_METHODS, ("room_record", "roomRecord"), frozenset(
    m.name for m in proto.DESCRIPTOR.services_by_name["Egress"].methods))
