"""What the tests of the service without media share: a Redis for the cluster's backend, a webhook receiver
that keeps what it is sent, small start requests, and waiting for a condition."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from compositor.service.requests import StartEgressRequest
from compositor.service.webhooks import verify
from tools.peers.redis import RedisServer

HOOK_SECRET = "hook-secret"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A real redis-server (password, append-only) for the module's tests."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


class Receiver:
    """A webhook receiver on 127.0.0.1 that checks each signature and keeps each event."""

    def __init__(self):
        self.events: list[dict] = []
        app = web.Application()
        app.router.add_post("/hook", self._post)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def url(self) -> str:
        return str(self.server.make_url("/hook"))

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.read()
        assert verify(HOOK_SECRET, request.headers["X-Compositor-Signature"], body)
        self.events.append(json.loads(body))
        return web.json_response({})

    def final(self, egress_id: str) -> list[dict]:
        """The egress's final events (completed or failed)."""
        return [e for e in self.events if e["data"]["egressId"] == egress_id
                and e["event"].endswith((".completed", ".failed"))]


def small(**fields) -> StartEgressRequest:
    """A 480p start request (0.4 cores) for room `room`."""
    return StartEgressRequest.model_validate({"roomName": "room", "quality": "480p", **fields})


async def until(check, timeout: float = 10.0):
    """The first truthy result of the coroutine function `check`, tried every 20 ms."""
    for _ in range(int(timeout / 0.02)):
        if result := await check():
            return result
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened within {timeout} s")
