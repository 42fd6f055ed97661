"""The egress service through real HTTP, with real workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from compositor import analysis
from compositor.service.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, verify

from .conftest import KEY, REPO, HttpReceiver, _cmdline, _parent, _pids, free_port

SMALL = {"advanced": {"width": 640, "height": 360}}
ROOM = {"room": {"participants": [{"name": "A", "color": "#4363d8", "tone": 450}]}}


class Server:
    """`compositor serve` on a free port of 127.0.0.1. The tests' receivers (RTMP, storage, WebSocket, pages) are on
    127.0.0.1 too: the server is told to allow that host, as an operator would (`local=False`: it is not)."""

    def __init__(self, data_dir: Path, *extra: str, env: dict | None = None, local: bool = True):
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        # The server's log, kept to read when a test fails.
        self.log = data_dir.parent / "server.log"
        allow = ["--allow-host", "127.0.0.1"] if local else []
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "compositor", "serve", "--port", "0", "--data-dir",
                                          str(data_dir), "--api-key", KEY, *allow, *extra], cwd=REPO,
                                         stdout=subprocess.PIPE, stderr=log, text=True,
                                         env={**os.environ, **(env or {})})
        line = self.proc.stdout.readline()
        assert "listening on" in line, line + self.log.read_text()
        self.base = line.split("listening on ")[1].split()[0]

    def call(self, method: str, path: str, body: dict | None = None, key: str | None = KEY) -> tuple[int, dict, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read()), dict(resp.headers)
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read()), dict(err.headers)

    def wait_status(self, egress_id: str, *statuses: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # A 503 (a cluster node whose Redis connections are being re-made) is asked again, as a client would.
            code, info, _ = self.call("GET", f"/v1/egress/{egress_id}")
            if code != 503 and info["status"] in statuses:
                return info
            time.sleep(0.2)
        raise AssertionError(f"{egress_id} never reached {statuses}: {info}")

    def start(self, **body) -> dict:
        status, info, _ = self.call("POST", "/v1/egress/start", {"roomName": "room-1", **SMALL, **ROOM, **body})
        assert status == 201, info
        return info

    def stop_server(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "data")
    yield s
    s.stop_server()


def test_health_is_open_and_everything_else_needs_a_key(server):
    assert server.call("GET", "/healthz", key=None)[0] == 200
    status, body, headers = server.call("GET", "/v1/egress", key=None)
    assert status == 401 and body["error"]["code"] == "UNAUTHENTICATED"
    assert headers.get("WWW-Authenticate") == "Bearer"
    assert server.call("GET", "/v1/egress", key="wrong")[0] == 401
    assert server.call("GET", "/v1/egress")[0] == 200


def test_record_start_stop_complete_list_delete(server):
    info = server.start()
    assert info["id"].startswith("EG_") and info["status"] == "STARTING"
    active = server.wait_status(info["id"], "ACTIVE")
    assert active["startedAt"]
    status, body, _ = server.call("DELETE", f"/v1/egress/{info['id']}")
    assert status == 409 and body["error"]["code"] == "EGRESS_ACTIVE"
    time.sleep(2.5)
    status, stopping, _ = server.call("POST", f"/v1/egress/{info['id']}/stop")
    assert status == 200 and stopping["status"] in ("ENDING", "COMPLETE")
    done = server.wait_status(info["id"], "COMPLETE")
    f = done["file"]
    assert (f["width"], f["height"], f["videoCodec"], f["audioCodec"]) == (640, 360, "h264", "aac")
    assert 2 <= done["durationSec"] <= 6 and done["endedAt"]
    frame = analysis.frame_at(f["location"], 1.0)
    assert analysis.color_distance(analysis.region_color(frame, 0, 0, 1, 1), "#4363d8") <= 40
    assert analysis.tone_level(analysis.audio_samples(f["location"]), 450, 0.5, 1.5) > 0.05

    _, listed, _ = server.call("GET", "/v1/egress?roomName=room-1&status=COMPLETE&page=1&limit=5")
    assert listed["total"] == 1 and listed["items"][0]["id"] == info["id"]
    assert server.call("GET", "/v1/egress?roomName=other")[1]["total"] == 0
    assert server.call("POST", f"/v1/egress/{info['id']}/stop")[0] == 409
    assert server.call("DELETE", f"/v1/egress/{info['id']}")[0] == 200
    assert server.call("GET", f"/v1/egress/{info['id']}")[0] == 404


def _worker_argv(egress_id: str) -> list[str]:
    """The command line of the worker recording `egress_id`."""
    found = [_cmdline(pid).split() for pid in _pids() if f"--egress-id {egress_id} " in _cmdline(pid)]
    assert found, f"no worker for {egress_id}"
    return found[0]


def test_the_next_job_of_a_frame_is_aimed_by_where_the_last_ones_frames_landed(tmp_path):
    """A room page starts too fast to measure where its frames land: the service tells a job's worker where
    they landed in the last job of its frame (its result's landing_ms), to aim the grabs by. Its log (-v) says
    where each job's frames landed against the grabs: an aim that missed shows there."""
    server = Server(tmp_path / "data", "-v")
    aims, ids = [], []
    try:
        for _ in range(2):
            info = server.start()
            ids.append(info["id"])
            server.wait_status(info["id"], "ACTIVE")
            argv = _worker_argv(info["id"])
            aims.append(argv[argv.index("--landing-ms") + 1] if "--landing-ms" in argv else None)
            time.sleep(1.5)
            server.call("POST", f"/v1/egress/{info['id']}/stop")
            server.wait_status(info["id"], "COMPLETE")
    finally:
        server.stop_server()
    assert aims[0] is None and 0 <= float(aims[1]) < 16.666, aims
    logged = [line for line in server.log.read_text().splitlines() if "its frames against the grabs" in line]
    assert [next(i for i in ids if i in line) for line in logged] == ids, logged
    assert all("'landing_phase_ms'" in line and "'sound_shift_ms'" in line for line in logged), logged


def test_stop_before_start_aborts(server):
    info = server.start()
    server.call("POST", f"/v1/egress/{info['id']}/stop")
    done = server.wait_status(info["id"], "ABORTED", "COMPLETE")
    assert done["status"] == "ABORTED", done


def test_a_stop_while_the_workers_browser_driver_loads_aborts_it(server):
    # The service's SIGINT once went to the worker's whole process group: Playwright's driver, still loading (it
    # ignores SIGINT once up), died of it, and the egress FAILED with BROWSER_FAILED instead of ending ABORTED.
    info = server.start()
    deadline = time.monotonic() + 30
    while not any("run-driver" in _cmdline(p) and f"--egress-id {info['id']}" in _cmdline(_parent(p))
                  for p in _pids()):
        assert time.monotonic() < deadline, "the worker never started Playwright's driver"
        time.sleep(0.01)
    server.call("POST", f"/v1/egress/{info['id']}/stop")
    done = server.wait_status(info["id"], "ABORTED", "COMPLETE", "FAILED")
    assert done["status"] == "ABORTED", done


def test_max_duration_ends_limit_reached(server):
    info = server.start(maxDuration=2)
    done = server.wait_status(info["id"], "LIMIT_REACHED", "COMPLETE", "FAILED")
    assert done["status"] == "LIMIT_REACHED", done
    assert abs(done["file"]["duration"] - 2) <= 0.3


def test_worker_crash_fails_with_reason_and_keeps_the_file(server):
    info = server.start()
    server.wait_status(info["id"], "ACTIVE")
    time.sleep(2.5)
    worker = next(p for p in _pids() if "--egress-id " + info["id"] in _cmdline(p))
    os.kill(worker, signal.SIGKILL)
    done = server.wait_status(info["id"], "FAILED")
    assert done["errorCode"] == "WORKER_CRASHED" and "SIGKILL" in done["error"]
    assert done["file"] and done["file"]["size"] > 0
    time.sleep(1)  # its children finish the partial file as they die
    assert analysis.frame_at(done["file"]["location"], 1.0).shape == (360, 640, 3)


@pytest.mark.parametrize("body, code, field", [
    ({"roomName": ""}, "INVALID_ARGUMENT", "roomName"),
    ({"roomName": "r", "layout": "mosaic"}, "INVALID_ARGUMENT", "layout"),
    ({"roomName": "r", "room": {"participants": [{"name": "A", "color": "red", "tone": 1}]}},
     "INVALID_ARGUMENT", "room.participants.0.color"),
    ({"roomName": "r", "mode": "stream", "stream": {"urls": ["http://127.0.0.1/live/key"]}}, "INVALID_ARGUMENT",
     "stream.urls.0"),
    ({"roomName": "r", "mode": "record", "stream": {"urls": []}}, "INVALID_ARGUMENT", ""),
    ({"roomName": "r", "file": {"fileType": "MP4", "filepath": "/etc/passwd"}}, "INVALID_ARGUMENT", "file.filepath"),
])
def test_bad_requests_name_the_field(server, body, code, field):
    status, err, _ = server.call("POST", "/v1/egress/start", body)
    assert status == 400, err
    assert err["error"]["code"] == code
    assert field in err["error"]["details"].get("field", "") + err["error"]["message"], err


def test_over_capacity_gets_503_with_retry_after(tmp_path):
    server = Server(tmp_path / "data", "--capacity", "0.5")  # one 360p egress costs 0.4
    try:
        first = server.start()
        status, err, headers = server.call("POST", "/v1/egress/start", {"roomName": "r2", **SMALL, **ROOM})
        assert status == 503 and err["error"]["code"] == "CAPACITY_EXCEEDED"
        assert headers.get("Retry-After") == "10"
        server.wait_status(first["id"], "ACTIVE")
        server.call("POST", f"/v1/egress/{first['id']}/stop")
        server.wait_status(first["id"], "COMPLETE")
        assert server.call("GET", "/readyz", key=None)[1]["freeCapacity"] == 0.5
    finally:
        server.stop_server()


def test_memory_is_admitted_as_cores_are(tmp_path):
    # Cores for ten, memory for one: a 360p egress holds 850 MB of the 1000 this node gives.
    server = Server(tmp_path / "data", "--capacity", "4", "--memory-mb", "1000")
    try:
        assert server.call("GET", "/readyz", key=None)[1]["freeMemoryMb"] == 1000
        first = server.start()
        status, err, _ = server.call("POST", "/v1/egress/start", {"roomName": "r2", **SMALL, **ROOM})
        assert (status, err["error"]["code"]) == (503, "CAPACITY_EXCEEDED"), err
        assert "850 MB of memory, 150 MB free" in err["error"]["message"]
        status, err, _ = server.call("POST", "/v1/egress/start", {"roomName": "r3", "quality": "1080p", **ROOM})
        assert (status, err["error"]["details"]) == (400, {"field": "quality", "needed": 1.3,
                                                           "neededMemoryMb": 1050}), err
        server.call("POST", f"/v1/egress/{first['id']}/stop")
        server.wait_status(first["id"], "COMPLETE", "ABORTED")  # ABORTED when stopped before it recorded
        assert server.call("GET", "/readyz", key=None)[1]["freeMemoryMb"] == 1000
    finally:
        server.stop_server()


def recording_server(tmp_path, seconds: float, **body) -> tuple[Server, dict]:
    """A server with one egress (of these `body` fields) that has been recording for `seconds`."""
    server = Server(tmp_path / "data")
    info = server.start(**body)
    server.wait_status(info["id"], "ACTIVE")
    time.sleep(seconds)
    return server, info


def test_sigterm_drains_running_egresses_to_complete_files(tmp_path):
    server, info = recording_server(tmp_path, 2)
    server.stop_server(signal.SIGTERM)
    assert server.proc.returncode == 0
    again = Server(tmp_path / "data")
    try:
        done = again.call("GET", f"/v1/egress/{info['id']}")[1]
        assert done["status"] == "COMPLETE", done
        assert analysis.frame_at(done["file"]["location"], 1.0).shape == (360, 640, 3)
    finally:
        again.stop_server()


def test_kill_9_of_the_service_is_settled_on_restart(tmp_path):
    # A receiver of the request's own: the receivers it names are kept with the egress, and the restarted
    # service tells them how it ended. (Its delivery also gives the service threads of its own, each of whose
    # ends is a parent-death signal to the worker: many signals, still one clean finish.)
    receiver = HttpReceiver()
    server, info = recording_server(tmp_path, 3, webhooks=[{"url": receiver.url,
                                                            "excludeEvents": ["recording.started"]}])
    server.proc.kill()
    server.proc.wait()
    time.sleep(2)  # the orphaned worker is told its service died (PDEATHSIG) and closes its file
    again = Server(tmp_path / "data")
    try:
        done = again.call("GET", f"/v1/egress/{info['id']}")[1]
        assert done["status"] == "FAILED" and done["errorCode"] == "SERVICE_RESTARTED", done
        # The orphaned worker finished its file (not only the crash-safe partial one), and the record says
        # what it holds and when it ended.
        f = done["file"]
        assert not f["location"].endswith(".partial.mp4") and f["size"] == os.path.getsize(f["location"]), f
        facts = analysis.facts(f["location"])
        assert (f["videoCodec"], f["audioCodec"], f["width"]) == ("h264", "aac", 640), f
        assert 2.5 < f["duration"] < 8 and abs(f["duration"] - facts.duration) < 0.1, (f, facts)
        recorded = (datetime.fromisoformat(done["endedAt"]) - datetime.fromisoformat(done["startedAt"]))
        assert abs(recorded.total_seconds() - f["duration"]) < 1.0, done
        assert analysis.frame_at(f["location"], 1.0).shape == (360, 640, 3)
        # It is the recording as far as it went: downloadable, and the webhook says where it is.
        status, link, _ = again.call("GET", f"/v1/recordings/rec_{info['id'][3:]}/download-url")
        assert status == 200, link
        with urllib.request.urlopen(link["downloadUrl"], timeout=10) as resp:
            assert len(resp.read()) == f["size"]
        deadline = time.monotonic() + 20
        while not receiver.posts and time.monotonic() < deadline:
            time.sleep(0.2)
        (event,) = [json.loads(b) for _, b in receiver.posts]
        assert (event["event"], event["data"]["egressId"], event["data"]["errorCode"]) == (
            "recording.failed", info["id"], "SERVICE_RESTARTED"), event
        assert (event["data"]["fileUrl"], event["data"]["fileSize"]) == (f["location"], f["size"]), event
        assert not [p for p in _pids() if info["id"] in _cmdline(p)]
    finally:
        again.stop_server()
        receiver.close()


def test_webhooks_are_signed_ordered_and_survive_a_receiver_outage(tmp_path):
    port = free_port()  # nothing listens here yet: the receiver is down
    secret = "whsec-test"
    server = Server(tmp_path / "data", "--webhook-url", f"http://127.0.0.1:{port}/hooks",
                    env={"COMPOSITOR_WEBHOOK_SECRET": secret, "COMPOSITOR_WEBHOOK_RETRY_BASE_S": "0.3"})
    receiver = None
    try:
        info = server.start()
        server.wait_status(info["id"], "ACTIVE")
        time.sleep(1.5)
        server.call("POST", f"/v1/egress/{info['id']}/stop")
        server.wait_status(info["id"], "COMPLETE")
        time.sleep(1)
        receiver = HttpReceiver(port)  # back up: everything queued arrives, in order
        deadline = time.monotonic() + 30
        while len(receiver.posts) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        events = [json.loads(body) for _, body in receiver.posts]
        assert [e["event"] for e in events] == ["recording.started", "recording.completed"], events
        for headers, body in receiver.posts:
            assert verify(secret, headers[SIGNATURE_HEADER], body)
            assert not verify("wrong-secret", headers[SIGNATURE_HEADER], body)
        assert len({h[EVENT_ID_HEADER] for h, _ in receiver.posts}) == 2
        started, completed = (e["data"] for e in events)
        assert started == {"recordingId": "rec_" + info["id"][3:], "egressId": info["id"], "roomName": "room-1",
                           "type": "record", "quality": "720p", "layout": "default"}
        assert completed["status"] == "COMPLETED" and completed["fileSize"] > 0 and completed["durationSec"] > 1
    finally:
        server.stop_server()
        if receiver:
            receiver.close()


def test_recordings_api_and_signed_download(server):
    status, rec, _ = server.call("POST", "/v1/recordings/start",
                                 {"roomName": "rec-room", "fileType": "WEBM", **SMALL, **ROOM})
    assert status == 201 and rec["id"].startswith("rec_") and rec["egressId"].startswith("EG_"), rec
    server.wait_status(rec["egressId"], "ACTIVE")
    status, err, _ = server.call("GET", f"/v1/recordings/{rec['id']}/download-url")
    assert status == 409 and err["error"]["code"] == "NOT_READY"
    time.sleep(2)
    assert server.call("POST", f"/v1/recordings/{rec['egressId']}/stop")[0] == 200
    server.wait_status(rec["egressId"], "COMPLETE")
    _, got, _ = server.call("GET", f"/v1/recordings/{rec['id']}")
    assert got["fileType"] == "WEBM" and got["file"]["videoCodec"] == "vp8"
    _, listed, _ = server.call("GET", "/v1/recordings?roomName=rec-room")
    assert [r["id"] for r in listed["items"]] == [rec["id"]]

    _, link, _ = server.call("GET", f"/v1/recordings/{rec['id']}/download-url")
    assert link["downloadUrl"].startswith(server.base) and link["expiresAt"]
    with urllib.request.urlopen(link["downloadUrl"], timeout=30) as resp:  # no API key: the URL is the grant
        assert resp.read() == Path(got["file"]["location"]).read_bytes()
    tampered = link["downloadUrl"].replace("expires=", "expires=9")
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(tampered, timeout=30)
    assert denied.value.code == 403


def test_a_both_mode_egress_is_a_recording(server, nginx):
    """It writes a file beside its live stream: listed, gettable, stoppable and downloadable as a recording,
    under the id its recording.* webhooks carry; a stream-only egress is not one."""
    both = server.start(roomName="both-room", mode="both", stream={"urls": [nginx.url("live", "both-rec")]})
    live = server.start(roomName="both-room", mode="stream", stream={"urls": [nginx.url("live", "only-live")]})
    rec_id = "rec_" + both["id"][3:]
    server.wait_status(both["id"], "ACTIVE")
    _, listed, _ = server.call("GET", "/v1/recordings?roomName=both-room")
    assert [r["id"] for r in listed["items"]] == [rec_id] and listed["total"] == 1, listed
    assert server.call("GET", f"/v1/recordings/rec_{live['id'][3:]}")[0] == 404
    time.sleep(2)
    assert server.call("POST", f"/v1/recordings/{both['id']}/stop")[0] == 200
    server.call("POST", f"/v1/egress/{live['id']}/stop")
    server.wait_status(both["id"], "COMPLETE")
    status, got, _ = server.call("GET", f"/v1/recordings/{rec_id}")
    assert status == 200 and got["egressId"] == both["id"] and got["file"]["videoCodec"] == "h264", got
    _, link, _ = server.call("GET", f"/v1/recordings/{rec_id}/download-url")
    with urllib.request.urlopen(link["downloadUrl"], timeout=30) as resp:
        assert resp.read() == Path(got["file"]["location"]).read_bytes()


def test_an_mp3_recording_holds_the_rooms_sound(server):
    status, err, _ = server.call("POST", "/v1/recordings/start", {"roomName": "r", "fileType": "MP3", **ROOM})
    assert status == 400 and err["error"]["details"]["field"] == "file.fileType", err
    status, rec, _ = server.call("POST", "/v1/recordings/start", {"roomName": "mp3-room", "fileType": "MP3",
                                                                   "audioOnly": True, "layout": "audio-only", **ROOM})
    assert status == 201, rec
    server.wait_status(rec["egressId"], "ACTIVE")
    time.sleep(2)
    server.call("POST", f"/v1/recordings/{rec['egressId']}/stop")
    server.wait_status(rec["egressId"], "COMPLETE")
    _, got, _ = server.call("GET", f"/v1/recordings/{rec['id']}")
    f = got["file"]
    assert got["fileType"] == "MP3" and f["audioCodec"] == "mp3" and f.get("videoCodec") is None, got
    assert f["location"].endswith(".mp3") and 1.5 <= f["duration"] <= 5, f
    assert analysis.tone_level(analysis.audio_samples(f["location"]), 450, 0.3, 1.3) > 0.05
    _, link, _ = server.call("GET", f"/v1/recordings/{rec['id']}/download-url")
    with urllib.request.urlopen(link["downloadUrl"], timeout=30) as resp:
        assert resp.headers["Content-Type"] == "audio/mpeg"


def test_auto_egress_config_is_validated_and_kept(server):
    _, default, _ = server.call("GET", "/v1/egress/auto-egress")
    assert default == {"enabled": False, "mode": "record", "layout": "default", "quality": "720p",
                       "minParticipants": 1, "delaySeconds": 0, "roomNamePattern": "*"}
    status, saved, _ = server.call("PUT", "/v1/egress/auto-egress", {
        "enabled": True, "layout": "speaker", "minParticipants": 2, "delaySeconds": 10,
        "roomNamePattern": "meeting-*"})
    assert status == 200 and saved["enabled"] and saved["minParticipants"] == 2
    assert server.call("GET", "/v1/egress/auto-egress")[1] == saved
    for bad, field in [({"minParticipants": 0}, "minParticipants"), ({"quality": "8k"}, "quality"),
                       ({"layout": "mosaic"}, "layout"), ({"mode": "party"}, "mode")]:
        status, err, _ = server.call("PUT", "/v1/egress/auto-egress", bad)
        assert status == 400 and field in json.dumps(err), err
    assert server.call("GET", "/v1/egress/auto-egress")[1] == saved


def test_metrics_count_egresses_and_capacity(server):
    info = server.start(maxDuration=1)
    server.wait_status(info["id"], "LIMIT_REACHED")
    req = urllib.request.Request(server.base + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    assert 'compositor_egresses{status="LIMIT_REACHED",type="record"} 1' in text
    assert "compositor_egresses_active 0" in text
    assert "compositor_capacity_free_cores" in text and "compositor_webhook_backlog 0" in text
    assert "compositor_capacity_memory_mb" in text and "compositor_capacity_free_memory_mb" in text


def test_openapi_is_generated_from_the_models(server):
    status, spec, _ = server.call("GET", "/openapi.json", key=None)
    assert status == 200 and spec["openapi"].startswith("3.")
    assert {"/v1/egress/start", "/v1/egress/{id}", "/v1/recordings/{id}/download-url",
            "/v1/egress/auto-egress"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    refs = {ref.split("/")[-1] for ref in _refs(spec)}
    assert refs <= set(schemas), refs - set(schemas)
    start = schemas["StartEgressRequest"]
    # A room, or a web page (which has none).
    assert start["anyOf"] == [{"required": ["roomName"]}, {"required": ["webUrl"]}]
    assert "maxDuration" in start["properties"]
    assert set(schemas["EgressInfo"]["properties"]) >= {"id", "status", "startedAt", "durationSec", "errorCode"}


def _refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_livekit_shaped_request_records_the_same(server):
    status, info, _ = server.call("POST", "/v1/egress/start", {
        "room_name": "lk-room", "layout": "grid", "preset": "H264_720P_30",
        "advanced": {"width": 640, "height": 360, "framerate": 30, "video_codec": "H264_MAIN", "depth": 24},
        "file_outputs": [{"file_type": "MP4", "filepath": "lk/out.mp4"}],
        **ROOM})
    assert status == 201, info
    assert (info["roomName"], info["layout"], info["quality"]) == ("lk-room", "grid", "H264_720P_30")
    server.wait_status(info["id"], "ACTIVE")
    time.sleep(1.5)
    server.call("POST", f"/v1/egress/{info['id']}/stop")
    done = server.wait_status(info["id"], "COMPLETE")
    assert done["file"]["location"].endswith("recordings/lk/out.mp4")
    assert (done["file"]["width"], done["file"]["height"]) == (640, 360)
    status, err, _ = server.call("POST", "/v1/egress/start", {"room_name": "x", "segment_outputs": [{}]})
    assert status == 400 and err["error"]["details"]["field"] == "segments.filenamePrefix", err
    status, err, _ = server.call("POST", "/v1/egress/start",
                                 {"room_name": "x", "segment_outputs": [{"filename_prefix": "s", "s3": {}}]})
    assert status == 400 and err["error"]["details"]["field"] == "storage.s3.bucket", err


def test_yaml_config_with_env_and_flags_on_top(tmp_path, monkeypatch):
    from compositor.errors import InvalidRequest
    from compositor.service import load_settings

    config = tmp_path / "serve.yaml"
    config.write_text(f"data_dir: {tmp_path / 'yaml-data'}\napi_keys: [from-yaml]\ncapacity: 1.5\n"
                      "webhook_urls: [http://127.0.0.1:9/hook]\ndownload_url_ttl_s: 60\n")
    s = load_settings(config)
    assert (s.data_dir, s.api_keys, s.capacity, s.webhook_urls, s.download_url_ttl_s) == (
        tmp_path / "yaml-data", ["from-yaml"], 1.5, ["http://127.0.0.1:9/hook"], 60)
    monkeypatch.setenv("COMPOSITOR_API_KEYS", "env-a, env-b")
    monkeypatch.setenv("COMPOSITOR_CAPACITY", "0.75")
    s = load_settings(config, capacity=2.0)
    assert s.api_keys == ["env-a", "env-b"] and s.capacity == 2.0
    monkeypatch.delenv("COMPOSITOR_CAPACITY")
    config.write_text("capacity: lots\n")
    with pytest.raises(InvalidRequest, match="capacity"):
        load_settings(config)
    config.write_text("colour: blue\n")
    with pytest.raises(InvalidRequest, match="colour"):
        load_settings(config)


def test_queued_requests_wait_their_turn_with_a_visible_position(tmp_path):
    server = Server(tmp_path / "data", "--capacity", "0.5")  # room for one 360p egress
    try:
        first = server.start()
        second = server.start(queue=True)
        third = server.start(queue=True)
        assert (second["queuePosition"], third["queuePosition"]) == (1, 2)
        assert second["status"] == "STARTING"
        # The third gives up; the second moves up and starts when the first ends.
        assert server.call("POST", f"/v1/egress/{third['id']}/stop")[1]["status"] == "ABORTED"
        server.wait_status(first["id"], "ACTIVE")
        server.call("POST", f"/v1/egress/{first['id']}/stop")
        server.wait_status(first["id"], "COMPLETE")
        active = server.wait_status(second["id"], "ACTIVE")
        assert active["queuePosition"] is None
        server.call("POST", f"/v1/egress/{second['id']}/stop")
        assert server.wait_status(second["id"], "COMPLETE")["file"]["size"] > 0
    finally:
        server.stop_server()


def test_wrong_method_names_the_allowed_ones(server):
    req = urllib.request.Request(server.base + "/v1/egress", method="PATCH",
                                 headers={"Authorization": f"Bearer {KEY}"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 405 and "GET" in err.value.headers["Allow"]
    assert json.loads(err.value.read())["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_server_session_limit_ends_file_egresses_limit_reached(tmp_path):
    server = Server(tmp_path / "data", env={"COMPOSITOR_MAX_FILE_DURATION_S": "2"})
    try:
        info = server.start()  # asks for no limit of its own
        done = server.wait_status(info["id"], "LIMIT_REACHED", "COMPLETE", "FAILED")
        assert done["status"] == "LIMIT_REACHED" and abs(done["file"]["duration"] - 2) <= 0.3, done
    finally:
        server.stop_server()


def test_contradicting_options_are_a_400_not_a_crash(server):
    status, err, _ = server.call("POST", "/v1/egress/start", {"roomName": "r", "audioOnly": True, "videoOnly": True})
    assert status == 400 and "exclude each other" in err["error"]["message"], err


LK_KEY, LK_SECRET = "APIdevkey", "a-livekit-secret-of-some-length-0123456789"


def both_formats_server(tmp_path, path: str) -> tuple[Server, HttpReceiver]:
    """A server sending its webhooks in both formats (LiveKit's signed with LK_KEY and LK_SECRET) to a receiver,
    at `path` of it."""
    receiver = HttpReceiver()
    server = Server(tmp_path / "data", "--webhook-url", receiver.url + path,
                    env={"COMPOSITOR_WEBHOOK_FORMAT": "both", "COMPOSITOR_LIVEKIT_API_KEY": LK_KEY,
                         "COMPOSITOR_LIVEKIT_API_SECRET": LK_SECRET})
    return server, receiver


def test_webhooks_in_livekit_format_verify_with_livekits_receiver(tmp_path):
    from livekit.api import TokenVerifier, WebhookReceiver
    from livekit.protocol.egress import EGRESS_ACTIVE, EGRESS_LIMIT_REACHED

    key, secret = LK_KEY, LK_SECRET
    server, receiver = both_formats_server(tmp_path, "lk")
    try:
        info = server.start(maxDuration=2)
        server.wait_status(info["id"], "LIMIT_REACHED")
        deadline = time.monotonic() + 20
        livekit = lambda: [(h, b) for h, b in receiver.posts if h.get("Content-Type") == "application/webhook+json"]  # noqa: E731
        while b"egress_ended" not in b"".join(b for _, b in livekit()) and time.monotonic() < deadline:
            time.sleep(0.2)
        check = WebhookReceiver(TokenVerifier(key, secret))
        events = [check.receive(body.decode(), headers["Authorization"]) for headers, body in livekit()]
        names = [e.event for e in events]
        assert names[0] == "egress_started" and names[-1] == "egress_ended", names
        assert set(names[1:-1]) <= {"egress_updated"}, names  # ENDING on the way
        started, ended = events[0].egress_info, events[-1].egress_info
        assert started.egress_id == info["id"] and started.status == EGRESS_ACTIVE
        assert ended.status == EGRESS_LIMIT_REACHED and ended.file_results[0].size > 0
        assert ended.file_results[0].duration > 1_500_000_000  # nanoseconds, as LiveKit counts
        # The same EgressInfo the Twirp API answers: the request it was started with, the single file result.
        assert ended.room_composite.room_name == "room-1" and ended.file.size == ended.file_results[0].size
        with pytest.raises(Exception):
            WebhookReceiver(TokenVerifier(key, "wrong-secret-wrong-secret-wrong-secret")).receive(
                livekit()[0][1].decode(), livekit()[0][0]["Authorization"])
        seed = [json.loads(b)["event"] for h, b in receiver.posts if h.get("Content-Type") == "application/json"]
        assert seed == ["recording.started", "recording.completed"]
    finally:
        server.stop_server()
        receiver.close()


def test_a_requests_own_webhooks_get_its_events_filtered_signed_and_retried(tmp_path):
    from livekit.api import TokenVerifier, WebhookReceiver

    key, secret, hook_secret = "APIdevkey", "a-livekit-secret-of-some-length-0123456789", "whsec-test"
    ours, mine = HttpReceiver(), HttpReceiver()
    mine.post_status = 500  # down at first: what it misses is retried
    server = Server(tmp_path / "data", "--webhook-url", ours.url + "server",
                    env={"COMPOSITOR_WEBHOOK_SECRET": hook_secret, "COMPOSITOR_WEBHOOK_RETRY_BASE_S": "0.3",
                         "COMPOSITOR_LIVEKIT_API_KEY": key, "COMPOSITOR_LIVEKIT_API_SECRET": secret})
    try:
        info = server.start(maxDuration=2, webhooks=[
            {"url": mine.url + "lk?token=QUERY-SECRET", "format": "livekit", "signingKey": key,
             "excludeEvents": ["egress_updated"]},
            {"url": mine.url + "bax", "includeEvents": ["recording.completed", "recording.failed"]}])
        other = server.start()  # another egress: none of its events reach the first one's receivers
        server.call("POST", f"/v1/egress/{other['id']}/stop")
        server.wait_status(info["id"], "LIMIT_REACHED")
        server.wait_status(other["id"], "ABORTED", "COMPLETE")
        deadline = time.monotonic() + 30
        while not mine.refused and time.monotonic() < deadline:
            time.sleep(0.1)
        mine.post_status = 200  # back up
        while len(mine.posts) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # nothing more comes
        lk = [(h, b) for h, b in mine.posts if h["Content-Type"] == "application/webhook+json"]
        events = [WebhookReceiver(TokenVerifier(key, secret)).receive(b.decode(), h["Authorization"]) for h, b in lk]
        assert [e.event for e in events] == ["egress_started", "egress_ended"], events
        assert {e.egress_info.egress_id for e in events} == {info["id"]}
        bax = [(h, b) for h, b in mine.posts if h["Content-Type"] == "application/json"]
        assert [(json.loads(b)["event"], json.loads(b)["data"]["egressId"]) for _, b in bax] == [
            ("recording.completed", info["id"])]
        assert all(verify(hook_secret, h[SIGNATURE_HEADER], b) for h, b in bax)
        assert mine.refused >= 1 and len(mine.posts) == 3
        # The server's own receiver still gets everything, of both egresses, with the same event ids.
        while len(ours.posts) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        theirs = [json.loads(b) for _, b in ours.posts]
        assert [e["event"] for e in theirs if e["data"]["egressId"] == info["id"]] == [
            "recording.started", "recording.completed"], theirs
        assert other["id"] in {e["data"]["egressId"] for e in theirs}
        assert json.loads(bax[0][1])["id"] in {e["id"] for e in theirs}
        # The receiver's URL is the caller's: never shown, never logged whole.
        assert "QUERY-SECRET" not in json.dumps(server.call("GET", f"/v1/egress/{info['id']}")[1])
        assert "QUERY-SECRET" not in server.log.read_text()
    finally:
        server.stop_server()
        ours.close()
        mine.close()


def test_livekit_webhooks_need_the_api_key(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "compositor", "serve", "--port", "0", "--data-dir",
                           str(tmp_path / "d")], env={**os.environ, "COMPOSITOR_WEBHOOK_FORMAT": "livekit"},
                          capture_output=True, text=True, timeout=30, cwd=REPO)
    assert proc.returncode != 0 and "livekit_api_key" in proc.stderr


def _warm_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "compositor record .*--warm"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def test_a_warm_worker_takes_the_job_and_another_warms_up(tmp_path):
    server = Server(tmp_path / "data", env={"COMPOSITOR_WARM_WORKERS": "1", "COMPOSITOR_WARM_SIZE": "640x360"})

    def warm_ready(timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while server.call("GET", "/readyz", key=None)[1]["warm"] < 1:
            assert time.monotonic() < deadline, "no warm worker came up"
            time.sleep(0.2)

    try:
        warm_ready()
        (first,) = _warm_pids()
        info = server.start()
        server.wait_status(info["id"], "ACTIVE")
        server.call("POST", f"/v1/egress/{info['id']}/stop")
        done = server.wait_status(info["id"], "COMPLETE")
        assert analysis.facts(done["file"]["location"]).width == 640
        # The job ran on the warm worker (which ends with its job), and a new one warms up for the next.
        warm_ready()
        deadline = time.monotonic() + 15
        while first in _warm_pids() and time.monotonic() < deadline:
            time.sleep(0.1)  # it exits just after its result
        assert first not in _warm_pids() and len(_warm_pids()) == 1, _warm_pids()
        # A frame the warm workers do not render starts cold, as before; the warm one stays.
        (second,) = _warm_pids()
        other = server.start(advanced={"width": 480, "height": 270})
        server.wait_status(other["id"], "ACTIVE")
        server.call("POST", f"/v1/egress/{other['id']}/stop")
        assert analysis.facts(server.wait_status(other["id"], "COMPLETE")["file"]["location"]).width == 480
        assert _warm_pids() == {second}
    finally:
        server.stop_server()
    assert not _warm_pids()  # drained with the service
