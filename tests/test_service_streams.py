"""Live outputs through the service: start, watch, change and end destinations over HTTP, with webhooks."""

from __future__ import annotations

import json
import time

from compositor import analysis
from compositor.service.webhooks import SIGNATURE_HEADER, verify

from .conftest import HttpReceiver
from .test_service import ROOM, SMALL, Server

SECRET = "Kx7SECRETstream"


def _wait(server: Server, egress_id: str, check, what: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, info, _ = server.call("GET", f"/v1/egress/{egress_id}")
        if check(info):
            return info
        time.sleep(0.2)
    raise AssertionError(f"{what} never happened: {info}")


def _status(info: dict, index: int) -> str:
    return info["streams"][index]["status"] if len(info["streams"]) > index else "-"


def test_stream_egress_over_http(tmp_path, nginx):
    hooks = HttpReceiver()
    server = Server(tmp_path / "data", "--webhook-url", hooks.url + "hooks",
                    env={"COMPOSITOR_WEBHOOK_SECRET": "whsec"})
    try:
        a, b, c = (nginx.url("live", f"svc-a-{SECRET}"), nginx.url("reject", f"svc-b-{SECRET}"),
                   nginx.url("live", f"svc-c-{SECRET}"))
        status, info, _ = server.call("POST", "/v1/egress/start", {
            "roomName": "live-room", "mode": "both", **SMALL, **ROOM,
            "stream": {"urls": [a, b], "retryWindow": 2}, "segments": {"filenamePrefix": "hls/live"}})
        assert status == 201, info
        egress = info["id"]
        assert [s["url"] for s in info["streams"]] == [f"rtmp://127.0.0.1:{nginx.port}/live/***",
                                                        f"rtmp://127.0.0.1:{nginx.port}/reject/***"]
        info = _wait(server, egress, lambda i: _status(i, 0) == "ACTIVE" and _status(i, 1) == "FAILED",
                     "a active, b failed")
        assert info["status"] == "ACTIVE" and info["streams"][1]["errorCode"] == "RTMP_PUBLISH_REJECTED"

        status, info, _ = server.call("POST", f"/v1/egress/{egress}/streams", {"add_output_urls": [c]})
        assert status == 200, info
        _wait(server, egress, lambda i: _status(i, 2) == "ACTIVE", "c active")
        status, bad, _ = server.call("POST", f"/v1/egress/{egress}/streams", {"add": ["rtmp://127.0.0.1/x"]})
        assert status == 400 and bad["error"]["code"] == "INVALID_ARGUMENT"
        time.sleep(1.0)
        status, info, _ = server.call("POST", f"/v1/egress/{egress}/streams", {"remove": [a]})
        assert status == 200 and info["streams"][0]["status"] == "FINISHED", info

        server.call("POST", f"/v1/egress/{egress}/stop")
        done = server.wait_status(egress, "COMPLETE")
        assert [s["status"] for s in done["streams"]] == ["FINISHED", "FAILED", "FINISHED"], done["streams"]
        assert done["file"]["size"] > 0 and done["segments"]["segmentCount"] >= 2
        assert abs(done["segments"]["duration"] - done["file"]["duration"]) <= 0.5
        for key in (f"svc-a-{SECRET}", f"svc-c-{SECRET}"):
            (received,) = nginx.recordings(key)
            facts = analysis.facts(received)
            assert facts.video_codec == "h264" and facts.duration > 1.0, facts
        status, conflict, _ = server.call("POST", f"/v1/egress/{egress}/streams", {"add": [c]})
        assert status == 409 and conflict["error"]["code"] == "EGRESS_NOT_ACTIVE"

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "recording.completed" not in [
                json.loads(b)["event"] for _, b in hooks.posts]:
            time.sleep(0.2)
        events = [json.loads(body) for _, body in hooks.posts]
        names = [e["event"] for e in events]
        for name in ("recording.started", "stream.started", "stream.updated", "stream.failed",
                     "recording.completed", "stream.completed"):
            assert name in names, names
        failed = next(e["data"] for e in events if e["event"] == "stream.failed")
        assert failed["errorCode"] == "RTMP_PUBLISH_REJECTED" and failed["destination"].endswith("/reject/***")
        started = next(e["data"] for e in events if e["event"] == "stream.started")
        assert len(started["destinations"]) == 2 and all(d.endswith("/***") for d in started["destinations"])
        assert all(verify("whsec", h[SIGNATURE_HEADER], body) for h, body in hooks.posts)
        everything = json.dumps(events) + json.dumps(done) + server.log.read_text()
        assert SECRET not in everything
    finally:
        server.stop_server()
        hooks.close()


def test_destinations_of_a_record_only_egress_cannot_change(tmp_path):
    server = Server(tmp_path / "data")
    try:
        info = server.start()
        server.wait_status(info["id"], "ACTIVE")
        status, err, _ = server.call("POST", f"/v1/egress/{info['id']}/streams",
                                     {"add": ["rtmp://127.0.0.1/live/key"]})
        assert status == 409 and err["error"]["code"] == "NO_STREAM_OUTPUT"
        status, err, _ = server.call("POST", f"/v1/egress/{info['id']}/streams", {})
        assert status == 400
        server.call("POST", f"/v1/egress/{info['id']}/stop")
        server.wait_status(info["id"], "COMPLETE")
    finally:
        server.stop_server()


def test_stream_only_egress_fails_when_its_destinations_do(tmp_path, nginx):
    server = Server(tmp_path / "data")
    try:
        status, info, _ = server.call("POST", "/v1/egress/start", {
            "roomName": "r", "mode": "stream", **SMALL, **ROOM,
            "stream": {"urls": [nginx.url("reject", f"k-{SECRET}")], "retryWindow": 1}})
        assert status == 201, info
        done = server.wait_status(info["id"], "FAILED", timeout=40)
        assert done["errorCode"] == "RTMP_PUBLISH_REJECTED" and done["file"] is None
        assert done["streams"][0]["status"] == "FAILED" and SECRET not in json.dumps(done)
    finally:
        server.stop_server()
