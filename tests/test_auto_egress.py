"""Auto egress from LiveKit webhooks: the signed endpoint, the config's rules, and a real livekit-server whose
room gets recorded by itself once two people are in it, and stops being recorded when it is deleted."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
import urllib.request

from aiohttp.test_utils import TestClient
from livekit import api

from compositor import analysis
from tools.peers.livekit import API_KEY, API_SECRET, LiveKitServer, make_clip
from tools.peers.receivers import free_port

from .support.livekit import tools_or_skip
from .test_livekit import ALICE, BOB, near, publish, region
from .test_service import KEY, Server

WEBHOOK = "/v1/livekit/webhook"
BEARER = {"Authorization": f"Bearer {KEY}"}


def signed(event: dict | bytes, secret: str = API_SECRET) -> tuple[bytes, dict]:
    """The body and headers livekit-server sends: a JWT of its API key carrying the body's sha256."""
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    token = api.AccessToken(API_KEY, secret).with_sha256(digest).to_jwt()
    return body, {"Authorization": token, "Content-Type": "application/webhook+json"}


def event(name: str, room: str, who: str | None = None, room_sid: str = "", **participant) -> dict:
    """A LiveKit webhook event in its JSON shape (sids derived from the names unless given)."""
    out = {"id": f"EV_{time.monotonic_ns()}", "event": name,
           "room": {"sid": room_sid or f"RM_{room}", "name": room}}
    if who:
        out["participant"] = {"sid": f"PA_{who}", "identity": who, **participant}
    return out


async def post(client: TestClient, ev: dict) -> None:
    body, headers = signed(ev)
    resp = await client.post(WEBHOOK, data=body, headers=headers)
    assert resp.status == 200, await resp.text()


async def configure(client: TestClient, **config) -> None:
    resp = await client.put("/v1/egress/auto-egress", json=config, headers=BEARER)
    assert resp.status == 200, await resp.text()


def attempts(caplog, room: str) -> list[str]:
    """What came of the auto egresses tried for `room` (here: refused for capacity)."""
    return [r.getMessage() for r in caplog.records if f"room {room} " in r.getMessage()
            and "not started" in r.getMessage()]


def decided(caplog, room: str, words: str) -> bool:
    return any(f"room {room} " in r.getMessage() and words in r.getMessage() for r in caplog.records)


async def test_webhook_needs_livekit_signature(open_app):
    client, _ = await open_app()
    ev = event("room_started", "auto-x")
    body, headers = signed(ev)
    refused = [
        {"Content-Type": "application/webhook+json"},  # unsigned
        BEARER,  # our API key is not LiveKit's signature
        signed(ev, secret="another-secret-0123456789abcdef0123")[1],
        signed({**ev, "event": "room_finished"})[1],  # a signature of another body
    ]
    for bad in refused:
        resp = await client.post(WEBHOOK, data=body, headers=bad)
        err = await resp.json()
        assert resp.status == 401 and set(err["error"]) == {"code", "message", "details"}, err
        assert err["error"]["code"] == "UNAUTHENTICATED"
    resp = await client.post(WEBHOOK, data=body, headers=headers)
    assert resp.status == 200 and (await resp.json())["received"] == ev["id"]
    junk, junk_headers = signed(b"{not an event")
    resp = await client.post(WEBHOOK, data=junk, headers=junk_headers)
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "INVALID_ARGUMENT"

    unkeyed, _ = await open_app(livekit_api_key="", livekit_api_secret="", livekit_url="")
    resp = await unkeyed.post(WEBHOOK, data=body, headers=headers)
    err = await resp.json()
    assert resp.status == 409 and err["error"]["code"] == "LIVEKIT_NOT_CONFIGURED", err


async def test_only_enabled_matching_rooms_start(open_app, caplog):
    caplog.set_level(logging.INFO, logger="compositor.service.auto_egress")
    client, service = await open_app()
    await configure(client, enabled=True, roomNamePattern="auto-*", minParticipants=1, delaySeconds=0)
    await post(client, event("room_started", "other-1"))
    await post(client, event("participant_joined", "other-1", "alice"))
    await configure(client, enabled=False)
    await post(client, event("participant_joined", "auto-2", "alice"))
    await asyncio.sleep(0.5)
    assert decided(caplog, "other-1", "does not match 'auto-*'")
    assert decided(caplog, "auto-2", "auto egress is disabled")
    assert not attempts(caplog, "other-1") and not attempts(caplog, "auto-2")
    # The same sequence for a matching room, once enabled again, does try (and says why it failed).
    await configure(client, enabled=True)
    await post(client, event("participant_joined", "auto-3", "alice"))
    await asyncio.sleep(0.5)
    assert attempts(caplog, "auto-3") and "CAPACITY_EXCEEDED" in attempts(caplog, "auto-3")[0]
    assert (await service.store.list())[1] == 0


async def test_delay_needs_the_participants_throughout_and_recorders_do_not_count(open_app, caplog):
    caplog.set_level(logging.INFO, logger="compositor.service.auto_egress")
    client, service = await open_app()
    await configure(client, enabled=True, roomNamePattern="auto-*", minParticipants=2, delaySeconds=0.8)
    room = "auto-delay"
    await post(client, event("room_started", room))
    await post(client, event("participant_joined", room, "alice"))
    await post(client, event("participant_joined", room, "alice"))  # LiveKit retried the delivery
    # How livekit-server shows our recorder: hidden, with the recorder permission.
    await post(client, event("participant_joined", room, "EG_x", permission={"hidden": True, "recorder": True}))
    await post(client, event("participant_joined", room, "EG_y", kind="EGRESS"))
    await asyncio.sleep(1.2)
    assert not attempts(caplog, room)
    await post(client, event("participant_joined", room, "bob"))
    await asyncio.sleep(0.3)
    await post(client, event("participant_left", room, "bob"))
    await asyncio.sleep(1.2)
    assert decided(caplog, room, "called off") and not attempts(caplog, room)
    await post(client, event("participant_joined", room, "bob"))
    await asyncio.sleep(0.4)
    assert not attempts(caplog, room)  # still within the delay
    await asyncio.sleep(1.0)
    assert len(attempts(caplog, room)) == 1
    # A start waiting out its delay is called off by the shutdown, not left to fire.
    await post(client, event("participant_joined", "auto-late", "alice"))
    await post(client, event("participant_joined", "auto-late", "bob"))
    await service.shutdown()
    logged = len(caplog.records)
    await asyncio.sleep(1.2)
    assert decided(caplog, "auto-late", "auto egress in") and len(caplog.records) == logged


def test_auto_egress_started_and_stopped_by_real_livekit_webhooks(tmp_path):
    tools_or_skip()
    clips = {name: make_clip(tmp_path / "clips", *spec) for name, spec in (("alice", ALICE), ("bob", BOB))}
    port = free_port()  # the service's, so livekit-server knows where to post before the service is up
    livekit = LiveKitServer(tmp_path / "livekit", webhook_urls=[f"http://127.0.0.1:{port}{WEBHOOK}"])
    env = {"COMPOSITOR_LIVEKIT_URL": livekit.http_url, "COMPOSITOR_LIVEKIT_API_KEY": API_KEY,
           "COMPOSITOR_LIVEKIT_API_SECRET": API_SECRET}
    server = Server(tmp_path / "data", "--port", str(port), "-v", env=env)
    room = "auto-meeting"

    def egresses() -> list[dict]:
        return server.call("GET", f"/v1/egress?roomName={room}")[1]["items"]

    try:
        status, _, _ = server.call("PUT", "/v1/egress/auto-egress", {
            "enabled": True, "mode": "record", "layout": "grid", "quality": "480p", "minParticipants": 2,
            "delaySeconds": 2, "roomNamePattern": "auto-*"})
        assert status == 200
        publish(livekit, room, "alice", clips["alice"])
        livekit.wait_published(room, {"alice": 2})
        time.sleep(4)
        assert egresses() == []  # one participant is not enough
        publish(livekit, room, "bob", clips["bob"])
        livekit.wait_published(room, {"alice": 2, "bob": 2})
        deadline = time.monotonic() + 30
        while not egresses():
            assert time.monotonic() < deadline, f"no auto egress\n{server.log.read_text()[-3000:]}"
            time.sleep(0.3)
        egress_id = egresses()[0]["id"]
        server.wait_status(egress_id, "ACTIVE", timeout=90)
        # LiveKit retries a webhook it thinks failed: a second delivery of a join starts nothing more.
        room_sid = livekit.api(lambda lk: lk.room.list_rooms(api.ListRoomsRequest(names=[room]))).rooms[0].sid
        bob = livekit.api(lambda lk: lk.room.get_participant(api.RoomParticipantIdentity(room=room, identity="bob")))
        body, headers = signed(event("participant_joined", room, "bob", room_sid=room_sid, sid=bob.sid))
        urllib.request.urlopen(urllib.request.Request(server.base + WEBHOOK, body, headers), timeout=10).close()
        time.sleep(4)
        livekit.delete_room(room)
        done = server.wait_status(egress_id, "COMPLETE", "FAILED", timeout=90)
        assert done["status"] == "COMPLETE", done
        assert [e["id"] for e in egresses()] == [egress_id]
        path = done["file"]["location"]
        assert (done["file"]["width"], done["file"]["height"]) == (854, 480)
        assert near(region(path, 1.5, 0.2, 0.4), ALICE[0]) and near(region(path, 1.5, 0.7, 0.4), BOB[0])
        sound = analysis.audio_samples(path)
        assert analysis.loudest_level(sound, ALICE[1], 0.5) > 0.02
        assert analysis.loudest_level(sound, BOB[1], 0.5) > 0.02
    finally:
        server.stop_server()
        livekit.close()
