"""Schema-driven fuzzing of the HTTP API (schemathesis against /openapi.json): no 5xx, no hang.

The server runs with (almost) no capacity and no wait queue, so valid start
requests are refused with 503 CAPACITY_EXCEEDED instead of launching workers:
that answer is the one 5xx allowed.
"""

from __future__ import annotations

import json
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import response_schema_conformance

from compositor.api.openapi import openapi

from .test_service import KEY, Server


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("fuzz") / "data", "--capacity", "0.01",
                    env={"COMPOSITOR_MAX_QUEUE": "0"})
    # The document the server serves is the one generated here.
    status, served, _ = server.call("GET", "/openapi.json", key=None)
    assert status == 200 and served == json.loads(json.dumps(openapi()))
    yield server
    server.stop_server()
    assert server.proc.returncode == 0


schema = schemathesis.openapi.from_dict(openapi())


@schema.parametrize()
@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 60)), deadline=None, suppress_health_check=list(HealthCheck))
def test_api_answers_every_request_without_server_errors(case, api_server):
    response = case.call(base_url=api_server.base, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    body = response.json()
    if response.status_code >= 500:
        assert response.status_code == 503 and body["error"]["code"] == "CAPACITY_EXCEEDED", body
    if response.status_code >= 400:
        assert set(body["error"]) == {"code", "message", "details"}, body
    else:
        case.validate_response(response, checks=[response_schema_conformance])
