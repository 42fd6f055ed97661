"""The egress HTTP API (aiohttp): BaxCloud Stream Out endpoints over the service."""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable

from aiohttp import web
from google.protobuf.json_format import ParseError
from livekit import api as livekit_api

from ..errors import (
    CompositorError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from ..protocol import ACTIVE_STATUSES
from ..service.auto_egress import AUTO_EGRESS
from ..service.requests import (
    AutoEgressConfig,
    StartEgressRequest,
    StartRecordingRequest,
    UpdateLayoutRequest,
    UpdateParticipantsRequest,
    UpdateStreamsRequest,
)
from ..service.results import egress_id_of, iso, recording_id
from ..service.seams import EgressRecord, Need
from ..service.service import Service
from ..storage.local_urls import DOWNLOAD_PATH, verify_local_signature
from . import dashboard, ingress, twirp
from .bodies import read_body, validated
from .livekit_shape import from_livekit, is_livekit
from .models import egress_info, recording_info
from .openapi import openapi

log = logging.getLogger(__name__)

SERVICE_KEY: web.AppKey[Service] = web.AppKey("service", Service)
MAX_PAGE = 1_000_000
MAX_LIMIT = 100
LIVEKIT_WEBHOOK_PATH = "/v1/livekit/webhook"
# LiveKit signs a webhook with a token valid for minutes; its event id is remembered far longer than that, so
# a replayed delivery is recognised, and an event created earlier than this is refused as stale.
WEBHOOK_REPLAY_WINDOW_S = 24 * 3600


def _error_response(status: int, err: CompositorError) -> web.Response:
    body = {"error": {"code": err.code, "message": err.message, "details": err.details}}
    headers = {"Retry-After": str(err.retry_after)} if err.retry_after else {}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def errors_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except CompositorError as err:
        if err.http_status >= 500 and err.http_status != 503:
            log.exception("request failed")
        return _error_response(err.http_status, err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        err = NotFound(exc.reason) if exc.status == 404 else CompositorError(exc.reason)
        if exc.status != 404:
            err.code = "METHOD_NOT_ALLOWED" if exc.status == 405 else "HTTP_ERROR"
        response = _error_response(exc.status, err)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response


@web.middleware
async def auth_middleware(request: web.Request, handler):
    # The LiveKit webhook is signed with the LiveKit API key instead (checked by its handler); the Twirp
    # Egress API takes LiveKit access tokens (checked by twirp.py).
    # A WHIP publisher presents its ingress's stream key instead (checked by the ingress service).
    # The dashboard's page and files hold no data: they need no key (the page asks for one, to call the API).
    if (request.path in ("/healthz", "/readyz", "/openapi.json", LIVEKIT_WEBHOOK_PATH, ingress.WHIP_PATH,
                         dashboard.PAGE_PATH)
            or request.path.startswith((DOWNLOAD_PATH, twirp.PREFIX, ingress.WHIP_PATH + "/", dashboard.ASSET_PREFIX))):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    keys = request.app[SERVICE_KEY].settings.api_keys
    # Compare against every key in constant time, so timing tells nothing. A header that is not UTF-8 (aiohttp
    # keeps its bytes as surrogates) is compared as the bytes it was, and matches no key.
    given = token.encode("utf-8", "surrogateescape")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    if not token or not matched:
        raise Unauthenticated("missing or wrong API key (Authorization: Bearer <key>)")
    return await handler(request)


def _body(request: web.Request) -> Awaitable[bytes]:
    return read_body(request, request.app[SERVICE_KEY].settings.request_timeout_s)


async def _json_body(request: web.Request) -> dict:
    try:
        body = json.loads(await _body(request))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequest("the request body is not JSON") from None
    except RecursionError:
        raise InvalidRequest("the request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


async def _info(request: web.Request, rec) -> dict:
    return egress_info(rec, await request.app[SERVICE_KEY].queue_position(rec.id))


def _egress_or_404(request: web.Request) -> Awaitable[EgressRecord]:
    return request.app[SERVICE_KEY].get(request.match_info["id"])


def _paging(request: web.Request) -> tuple[int, int]:
    try:
        page = int(request.query.get("page", 1))
        limit = int(request.query.get("limit", 20))
    except ValueError:
        raise InvalidRequest("page and limit must be whole numbers", details={"field": "page"}) from None
    if not 1 <= page <= MAX_PAGE or not 1 <= limit <= MAX_LIMIT:
        field = "limit" if 1 <= page <= MAX_PAGE else "page"
        raise InvalidRequest(f"page must be 1..{MAX_PAGE} and limit 1..{MAX_LIMIT}", details={"field": field})
    return page, limit


async def start_egress(request: web.Request) -> web.Response:
    body = await _json_body(request)
    req = validated(StartEgressRequest, from_livekit(body) if is_livekit(body) else body)
    rec = await request.app[SERVICE_KEY].start(req)
    return web.json_response(await _info(request, rec), status=201)


async def stop_egress(request: web.Request) -> web.Response:
    rec = await _egress_or_404(request)
    rec = await request.app[SERVICE_KEY].stop(rec.id)
    return web.json_response(await _info(request, rec))


async def update_streams(request: web.Request) -> web.Response:
    """Add and remove live destinations (BaxCloud shape, or LiveKit's add_output_urls / remove_output_urls)."""
    rec = await _egress_or_404(request)
    change = validated(UpdateStreamsRequest, await _json_body(request))
    rec = await request.app[SERVICE_KEY].update_streams(rec.id, change.add, change.remove)
    return web.json_response(await _info(request, rec))


async def update_layout(request: web.Request) -> web.Response:
    """Switch a recording egress to another built-in layout (LiveKit's UpdateLayout)."""
    rec = await _egress_or_404(request)
    change = validated(UpdateLayoutRequest, await _json_body(request))
    rec = await request.app[SERVICE_KEY].update_layout(rec.id, change.layout)
    return web.json_response(await _info(request, rec))


async def update_participants(request: web.Request) -> web.Response:
    """Change who a recording egress shows and plays: {include: [...]} or {exclude: [...]}, replacing the old."""
    rec = await _egress_or_404(request)
    change = validated(UpdateParticipantsRequest, await _json_body(request))
    rec = await request.app[SERVICE_KEY].update_participants(rec.id, change)
    return web.json_response(await _info(request, rec))


async def pause_egress(request: web.Request) -> web.Response:
    """Pause a running egress: files and HLS leave out what follows, live destinations show the slate."""
    rec = await _egress_or_404(request)
    return web.json_response(await _info(request, await request.app[SERVICE_KEY].pause(rec.id)))


async def resume_egress(request: web.Request) -> web.Response:
    """Resume a paused egress: its files and HLS go on as one, from the next keyframe."""
    rec = await _egress_or_404(request)
    return web.json_response(await _info(request, await request.app[SERVICE_KEY].resume(rec.id)))


async def get_egress(request: web.Request) -> web.Response:
    return web.json_response(await _info(request, await _egress_or_404(request)))


async def _listing(request: web.Request, show, modes: tuple[str, ...] = ()) -> web.Response:
    """One page of stored egresses (filtered by roomName and status) as {items, page, limit, total}."""
    page, limit = _paging(request)
    items, total = await request.app[SERVICE_KEY].store.list(room_name=request.query.get("roomName"),
                                                             status=request.query.get("status"), modes=modes,
                                                             page=page, limit=limit)
    return web.json_response({"items": [await show(r) for r in items], "page": page, "limit": limit,
                              "total": total})


async def list_egress(request: web.Request) -> web.Response:
    return await _listing(request, lambda rec: _info(request, rec))


async def delete_egress(request: web.Request) -> web.Response:
    rec = await _egress_or_404(request)
    if not rec.ended:
        raise Conflict("EGRESS_ACTIVE", f"egress {rec.id} is {rec.status}; stop it first")
    await request.app[SERVICE_KEY].delete(rec.id)
    return web.json_response({"id": rec.id, "deleted": True})


async def start_recording(request: web.Request) -> web.Response:
    req = validated(StartRecordingRequest, await _json_body(request))
    rec = await request.app[SERVICE_KEY].start(req.to_egress_request())
    return web.json_response(recording_info(rec), status=201)


#: Every egress that writes a file is a recording (a both-mode one too: its webhooks say recording.*).
RECORDING_MODES = ("record", "both")


async def _recording_or_404(request: web.Request, key: str = "id") -> EgressRecord:
    ident = request.match_info[key]
    rec = await request.app[SERVICE_KEY].store.get(egress_id_of(ident) if ident.startswith("rec_") else ident)
    if rec is None or rec.mode not in RECORDING_MODES:
        raise NotFound(f"no recording {ident!r}")
    return rec


async def stop_recording(request: web.Request) -> web.Response:
    rec = await _recording_or_404(request, "egress_id")
    return web.json_response(recording_info(await request.app[SERVICE_KEY].stop(rec.id)))


async def get_recording(request: web.Request) -> web.Response:
    return web.json_response(recording_info(await _recording_or_404(request)))


async def list_recordings(request: web.Request) -> web.Response:
    return await _listing(request, _recording_info, modes=RECORDING_MODES)


async def _recording_info(rec: EgressRecord) -> dict:
    return recording_info(rec)


async def recording_download_url(request: web.Request) -> web.Response:
    """A URL that downloads the recording without an API key until it expires (`?expiresIn=` seconds)."""
    rec = await _recording_or_404(request)
    # A failed egress's kept file is the recording as far as it went: downloadable too.
    if not rec.ended or not rec.file:
        raise Conflict("NOT_READY", f"recording {recording_id(rec.id)} has no finished file ({rec.status})")
    service = request.app[SERVICE_KEY]
    ttl, longest = service.settings.download_url_ttl_s, service.settings.download_url_max_ttl_s
    if "expiresIn" in request.query:
        try:
            ttl = int(request.query["expiresIn"])
        except ValueError:
            raise InvalidRequest("expiresIn must be whole seconds", details={"field": "expiresIn"}) from None
        if not 1 <= ttl <= longest:
            raise InvalidRequest(f"expiresIn must be 1 to {longest} seconds (the server's download_url_max_ttl_s)",
                                 details={"field": "expiresIn"})
    url = await service.download_url(rec, str(request.url.origin()), ttl)
    return web.json_response({"downloadUrl": url, "expiresAt": iso(time.time() + ttl)})


async def download_file(request: web.Request) -> web.StreamResponse:
    """A file of the local storage, for whoever holds an unexpired signed URL (no API key needed)."""
    key = request.match_info["key"]
    settings = request.app[SERVICE_KEY].settings
    expires, sig = request.query.get("expires", ""), request.query.get("sig", "")
    if not verify_local_signature(key, expires, sig, settings.url_signing_key,
                                  longest=settings.download_url_max_ttl_s):
        expired = (expires.isdigit() and int(expires) <= time.time()
                   and verify_local_signature(key, expires, sig, settings.url_signing_key, now=0))
        raise Forbidden("this download URL has expired" if expired else "bad or missing download signature")
    root = settings.recordings_dir.resolve()
    path = (root / key).resolve()
    if root not in path.parents or not path.is_file():
        raise NotFound("the file is gone")
    return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{path.name}"'})


async def get_auto_egress(request: web.Request) -> web.Response:
    stored = await request.app[SERVICE_KEY].store.get_setting(AUTO_EGRESS) or {}
    return web.json_response(AutoEgressConfig.model_validate(stored).model_dump(by_alias=True))


async def put_auto_egress(request: web.Request) -> web.Response:
    store = request.app[SERVICE_KEY].store
    current = AutoEgressConfig.model_validate(await store.get_setting(AUTO_EGRESS) or {}).model_dump(by_alias=True)
    config = validated(AutoEgressConfig, {**current, **await _json_body(request)})
    await store.put_setting(AUTO_EGRESS, config.model_dump())
    return web.json_response(config.model_dump(by_alias=True))


async def livekit_webhook(request: web.Request) -> web.Response:
    """A LiveKit server's webhook (room and participant events, for auto egress), signed with its API key."""
    service = request.app[SERVICE_KEY]
    key, secret = service.settings.livekit_api_key, service.settings.livekit_api_secret
    if not (key and secret):
        raise Conflict("LIVEKIT_NOT_CONFIGURED", "this server has no LiveKit API key to check webhooks with: set "
                       "livekit_api_key and livekit_api_secret (COMPOSITOR_LIVEKIT_API_KEY, "
                       "COMPOSITOR_LIVEKIT_API_SECRET)")
    try:
        body = (await _body(request)).decode()
    except UnicodeDecodeError:
        raise InvalidRequest("the webhook body is not UTF-8") from None
    receiver = livekit_api.WebhookReceiver(livekit_api.TokenVerifier(key, secret))
    try:
        event = receiver.receive(body, request.headers.get("Authorization", ""))
    except ParseError as exc:
        raise InvalidRequest(f"not a LiveKit webhook event: {exc}") from None
    # The receiver raises plain Exception (and jwt's errors) for a bad token or a body that does not match it.
    except Exception:
        raise Unauthenticated("bad or missing LiveKit webhook signature (Authorization: <LiveKit token>)") from None
    if not event.id:
        raise InvalidRequest("the LiveKit webhook event has no id")
    if event.created_at and event.created_at < time.time() - WEBHOOK_REPLAY_WINDOW_S:
        raise InvalidRequest("the LiveKit webhook event is stale (created over a day ago): refused as a replay")
    if not await service.store.first_sighting(f"livekit:{event.id}", WEBHOOK_REPLAY_WINDOW_S):
        # A retry of LiveKit's, or a replay: answered as received, acted on once.
        return web.json_response({"received": event.id, "duplicate": True})
    await service.auto_egress.handle(event)
    return web.json_response({"received": event.id})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text: egresses by status and type, active, capacity, load, webhook backlog."""
    service = request.app[SERVICE_KEY]
    lines = ["# HELP compositor_egresses Stored egresses by status and type.", "# TYPE compositor_egresses gauge"]
    counts = await service.store.counts()
    capacity, free = service.dispatcher.capacity, await service.dispatcher.free()
    lines += [f'compositor_egresses{{status="{s}",type="{m}"}} {n}' for s, m, n in counts]
    gauges = {
        "compositor_egresses_active": ("Egresses starting, recording or ending.",
                                       sum(n for s, _, n in counts if s in ACTIVE_STATUSES)),
        "compositor_workers": ("Worker processes running.", len(service.runner.running)),
        "compositor_warm_workers": ("Idle warm workers ready for a job.", service.runner.warm),
        "compositor_capacity_cores": ("CPU cores egresses may use.", capacity.cores),
        "compositor_capacity_free_cores": ("CPU cores not held by egresses.", round(free.cores, 3)),
        "compositor_capacity_memory_mb": ("Memory (MB) jobs may hold.", round(capacity.memory_mb)),
        "compositor_capacity_free_memory_mb": ("Memory (MB) not held by jobs.", round(free.memory_mb)),
        "compositor_cpu_load1": ("1-minute load average of the machine.", os.getloadavg()[0]),
        "compositor_webhook_backlog": ("Webhook deliveries not yet done.", await service.webhooks.backlog()),
    }
    for name, (doc, value) in gauges.items():
        lines += [f"# HELP {name} {doc}", f"# TYPE {name} gauge", f"{name} {value}"]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi())


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    status = 200 if service.ready else 503
    try:
        free = await service.dispatcher.free()
    except Unavailable:
        free, status = Need(0.0, 0.0), 503
    body = {"ready": status == 200, "freeCapacity": round(free.cores, 3),
            "freeMemoryMb": round(max(free.memory_mb, 0)), "active": len(service.runner.running),
            "warm": service.runner.warm}
    if service.ingress:
        body["ingress"] = {"active": len(service.ingress.runner.running), "warm": service.ingress.runner.warm}
    return web.json_response(body, status=status)


def _with_service(call, with_body: bool = False):
    """A handler of ingress.py or dashboard.py as an aiohttp handler: it gets the service, and the JSON body if
    it takes one."""
    async def handle(request: web.Request) -> web.StreamResponse:
        service = request.app[SERVICE_KEY]
        if with_body:
            return await call(request, service, await _json_body(request))
        return await call(request, service)
    return handle


def make_app(service: Service) -> web.Application:
    app = web.Application(middlewares=[errors_middleware, auth_middleware])
    app[SERVICE_KEY] = service
    app[dashboard.SNAPSHOTS_KEY] = dashboard.Snapshots(service)
    app[dashboard.STREAMS_KEY] = set()
    app.on_shutdown.append(dashboard.close_streams)
    app.on_response_prepare.append(dashboard.add_security_headers)
    app.router.add_get(dashboard.PAGE_PATH, dashboard.page)
    app.router.add_get(dashboard.ASSET_PREFIX + "{name}", dashboard.asset)
    app.router.add_get(dashboard.EVENTS_PATH, _with_service(dashboard.events))
    app.router.add_get("/v1/egress/{id}/preview", _with_service(dashboard.preview))
    app.router.add_get("/v1/layouts", _with_service(dashboard.layouts))
    app.router.add_get("/v1/layouts/{name:(?:custom/)?[^/]+}/snapshot", _with_service(dashboard.snapshot))
    app.router.add_get("/v1/egress/auto-egress", get_auto_egress)
    app.router.add_put("/v1/egress/auto-egress", put_auto_egress)
    app.router.add_post("/v1/egress/start", start_egress)
    app.router.add_post("/v1/egress/{id}/stop", stop_egress)
    app.router.add_post("/v1/egress/{id}/streams", update_streams)
    app.router.add_post("/v1/egress/{id}/layout", update_layout)
    app.router.add_post("/v1/egress/{id}/participants", update_participants)
    app.router.add_post("/v1/egress/{id}/pause", pause_egress)
    app.router.add_post("/v1/egress/{id}/resume", resume_egress)
    app.router.add_get("/v1/egress/{id}", get_egress)
    app.router.add_get("/v1/egress", list_egress)
    app.router.add_delete("/v1/egress/{id}", delete_egress)
    app.router.add_post("/v1/recordings/start", start_recording)
    app.router.add_post("/v1/recordings/{egress_id}/stop", stop_recording)
    app.router.add_get("/v1/recordings", list_recordings)
    app.router.add_get("/v1/recordings/{id}", get_recording)
    app.router.add_get("/v1/recordings/{id}/download-url", recording_download_url)
    app.router.add_get(DOWNLOAD_PATH + "{key:.+}", download_file)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_post(LIVEKIT_WEBHOOK_PATH, livekit_webhook)
    app.router.add_post("/v1/ingress", _with_service(ingress.create_ingress, with_body=True))
    app.router.add_get("/v1/ingress", _with_service(ingress.list_ingress))
    app.router.add_get("/v1/ingress/{id}", _with_service(ingress.get_ingress))
    app.router.add_patch("/v1/ingress/{id}", _with_service(ingress.update_ingress, with_body=True))
    app.router.add_delete("/v1/ingress/{id}", _with_service(ingress.delete_ingress))
    app.router.add_post(ingress.WHIP_PATH, _with_service(ingress.whip_offer))
    app.router.add_post(ingress.WHIP_PATH + "/{key}", _with_service(ingress.whip_offer))
    app.router.add_delete(ingress.WHIP_PATH + "/session/{resource}", _with_service(ingress.whip_delete))
    app.router.add_route("*", twirp.ROUTE, twirp.handler(service, {twirp.EGRESS: twirp.EGRESS_SERVICE,
                                                                   twirp.INGRESS: ingress.INGRESS_SERVICE}))
    return app
