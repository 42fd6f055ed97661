"""GET /openapi.json, generated from the API's pydantic models (never kept by hand)."""

from __future__ import annotations

from functools import cache

from pydantic.json_schema import models_json_schema

from .. import __version__
from ..service.ingress import IngressRequest, IngressUpdate
from ..service.requests import (
    AutoEgressConfig,
    StartEgressRequest,
    StartRecordingRequest,
    UpdateLayoutRequest,
    UpdateParticipantsRequest,
    UpdateStreamsRequest,
)
from .models import (
    DownloadUrl,
    EgressInfo,
    EgressList,
    ErrorBody,
    IngressInfo,
    IngressList,
    LayoutList,
    RecordingInfo,
    RecordingList,
)

REQUESTS = [StartEgressRequest, StartRecordingRequest, AutoEgressConfig, UpdateStreamsRequest, UpdateLayoutRequest,
            UpdateParticipantsRequest, IngressRequest, IngressUpdate]
RESPONSES = [EgressInfo, EgressList, RecordingInfo, RecordingList, DownloadUrl, ErrorBody, IngressInfo, IngressList,
             LayoutList]

# method, path, summary, request model, response model, success status
OPERATIONS = [
    ("post", "/v1/egress/start", "Start a recording, a stream, or both", StartEgressRequest, EgressInfo, 201),
    ("post", "/v1/egress/{id}/stop", "Stop an egress", None, EgressInfo, 200),
    ("post", "/v1/egress/{id}/streams", "Add and remove live destinations", UpdateStreamsRequest, EgressInfo, 200),
    ("post", "/v1/egress/{id}/layout", "Switch a recording egress to another built-in layout", UpdateLayoutRequest,
     EgressInfo, 200),
    ("post", "/v1/egress/{id}/participants", "Change who a recording egress shows and plays (include or exclude "
     "identities)", UpdateParticipantsRequest, EgressInfo, 200),
    ("post", "/v1/egress/{id}/pause", "Pause: files and HLS leave out what follows, live destinations show the "
     "slate (409 ALREADY_PAUSED, EGRESS_NOT_ACTIVE)", None, EgressInfo, 200),
    ("post", "/v1/egress/{id}/resume", "Resume a paused egress: files and HLS go on as one from the next keyframe "
     "(409 NOT_PAUSED, EGRESS_NOT_ACTIVE)", None, EgressInfo, 200),
    ("get", "/v1/egress/{id}", "Get an egress", None, EgressInfo, 200),
    ("get", "/v1/egress", "List egresses (roomName, status, page, limit)", None, EgressList, 200),
    ("delete", "/v1/egress/{id}", "Delete an ended egress", None, None, 200),
    ("get", "/v1/egress/auto-egress", "Get the auto-egress config", None, AutoEgressConfig, 200),
    ("put", "/v1/egress/auto-egress", "Update the auto-egress config", AutoEgressConfig, AutoEgressConfig, 200),
    ("post", "/v1/recordings/start", "Start a cloud recording", StartRecordingRequest, RecordingInfo, 201),
    ("post", "/v1/recordings/{egressId}/stop", "Stop a recording", None, RecordingInfo, 200),
    ("get", "/v1/recordings", "List recordings (roomName, status, page, limit)", None, RecordingList, 200),
    ("get", "/v1/recordings/{id}", "Get a recording", None, RecordingInfo, 200),
    ("get", "/v1/recordings/{id}/download-url", "Signed, expiring download URL", None, DownloadUrl, 200),
    ("get", "/v1/layouts", "The layouts requests may name: built-in and custom/NAME", None, LayoutList, 200),
    ("post", "/v1/ingress", "Create an ingress (RTMP, WHIP or URL); a URL ingress starts pulling", IngressRequest,
     IngressInfo, 201),
    ("get", "/v1/ingress", "List ingresses (roomName, ingressId)", None, IngressList, 200),
    ("get", "/v1/ingress/{id}", "Get an ingress", None, IngressInfo, 200),
    ("patch", "/v1/ingress/{id}", "Change an ingress between sessions", IngressUpdate, IngressInfo, 200),
    ("delete", "/v1/ingress/{id}", "Delete an ingress (a live session is stopped)", None, IngressInfo, 200),
]
QUERY_SCHEMAS = {"page": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                 "limit": {"type": "integer", "minimum": 1, "maximum": 100}}
QUERY = {"/v1/egress": ["roomName", "status", "page", "limit"],
         "/v1/recordings": ["roomName", "status", "page", "limit"], "/v1/ingress": ["roomName", "ingressId"]}


def _ref(model) -> dict:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model) -> dict:
    return {"application/json": {"schema": _ref(model) if model else {"type": "object"}}}


@cache
def openapi() -> dict:
    """The whole OpenAPI 3.1 document."""
    _, schemas = models_json_schema([(m, "validation") for m in REQUESTS] + [(m, "serialization") for m in RESPONSES],
                                    ref_template="#/components/schemas/{model}")
    paths: dict = {}
    for method, path, summary, req, resp, status in OPERATIONS:
        params = [{"name": p.strip("{}"), "in": "path", "required": True, "schema": {"type": "string"}}
                  for p in path.split("/") if p.startswith("{")]
        params += [{"name": q, "in": "query", "required": False,
                    "schema": QUERY_SCHEMAS.get(q, {"type": "string"})}
                   for q in QUERY.get(path, []) if method == "get"]
        op: dict = {"summary": summary, "parameters": params, "security": [{"bearer": []}],
                    "responses": {str(status): {"description": "OK", "content": _json(resp)},
                                  "default": {"description": "error", "content": _json(ErrorBody)}}}
        if req:
            op["requestBody"] = {"required": True, "content": _json(req)}
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "compositor egress API", "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
