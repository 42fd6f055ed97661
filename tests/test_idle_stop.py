"""Idle stop: a recording ends by itself (COMPLETE, stopped_by idle) once its room is idle, as Jibri's does."""

from __future__ import annotations

import json
import time

import pytest
from livekit.protocol import egress as lk

from compositor import analysis
from compositor.errors import InvalidRequest
from compositor.protocol import Status
from compositor.request import IdleStop, RecordRequest
from compositor.service.livekit_info import egress_info
from compositor.service.requests import ServerFacts, StartEgressRequest, StartRecordingRequest
from compositor.service.seams import EgressRecord

from .conftest import HttpReceiver, assert_color, free_port
from .test_service import Server

TINY = ["--width", "320", "--height", "180"]
A = "#e6194b"


def test_room_left_empty_ends_the_recording(record):
    # B is still to come, so the room is not over when A leaves at 2 s: only idle stop ends it, a second later.
    run = record(*TINY, "--layout", "grid", "--duration", "10", "--idle-empty", "1",
                 "--participant", f"name=A,color={A},leaves=2", "--participant", "name=B,joins=30")
    assert run.code == 0, run.stderr[-2000:]
    result = run.result
    assert result["status"] == "COMPLETE" and result["stopped_by"] == "idle", result
    assert result["reason"] == "no one in the room for 1 s"
    # A's leaving plus a second, give or take the encoder's start and the page's 250 ms watch.
    assert 2.3 <= result["file"]["duration"] <= 4.0, result["file"]
    assert analysis.facts(run.output).duration == pytest.approx(result["file"]["duration"], abs=0.2)
    assert_color(analysis.frame_at(run.output, 1.0), (0.3, 0.3, 0.7, 0.7), A)


def test_room_without_a_publisher_ends_the_recording(record):
    # B stays but publishes nothing (no camera, no voice): once A leaves, no one publishes; the room is not empty.
    run = record(*TINY, "--duration", "10", "--idle-no-publisher", "1", "--idle-empty", "5",
                 "--participant", f"name=A,color={A},leaves=2", "--participant", "name=B,video=off,tone=0")
    assert run.code == 0, run.stderr[-2000:]
    assert run.result["stopped_by"] == "idle" and run.result["reason"] == "no one published for 1 s", run.result
    assert 2.3 <= run.result["file"]["duration"] <= 4.0, run.result["file"]


def test_everyone_muted_ends_the_recording(record):
    # Cameras off; both talk until 2 s, when both mute their microphones: everyone muted, a second later it ends.
    run = record(*TINY, "--duration", "10", "--idle-all-muted", "1", "--idle-empty", "5",
                 "--participant", "name=A,video=off,tone=440,mutes=2-30",
                 "--participant", "name=B,video=off,tone=660,mutes=2-30")
    assert run.code == 0, run.stderr[-2000:]
    assert run.result["stopped_by"] == "idle" and run.result["reason"] == "everyone muted for 1 s", run.result
    duration = run.result["file"]["duration"]
    assert 2.3 <= duration <= 4.0, run.result["file"]
    # A mute silences: both are heard before it, neither after.
    pcm = analysis.audio_samples(run.output)
    for tone in (440, 660):
        assert analysis.tone_level(pcm, tone, 0.3, 1.4) > 0.02, tone
        assert analysis.tone_level(pcm, tone, 2.3, duration - 0.05) < 0.005, tone


def test_room_in_use_is_not_stopped(record):
    run = record(*TINY, "--duration", "4", "--idle-empty", "1", "--idle-no-publisher", "1", "--idle-all-muted", "1",
                 "--participant", f"name=A,color={A}")
    assert run.code == 0, run.stderr[-2000:]
    assert run.result["stopped_by"] == "limit" and "reason" not in run.result, run.result
    assert abs(run.result["file"]["duration"] - 4) <= 0.4


@pytest.mark.parametrize("args, words", [
    (["--idle-empty", "0"], "idle_stop.empty_seconds: Input should be greater than 0"),
    (["--idle-no-publisher", "-3"], "idle_stop.no_publisher_seconds: Input should be greater than 0"),
    (["--idle-all-muted", "1e9"], "idle_stop.all_muted_seconds: Input should be less than or equal to 86400"),
    (["--web-url", "https://example.com/", "--idle-empty", "5"], "idleStop watches a room"),
])
def test_bad_idle_stop_is_refused_naming_the_field(record, args, words):
    run = record(*args, timeout=30)
    assert run.code != 0
    assert run.error["code"] == "INVALID_ARGUMENT" and words in run.error["message"], run.error


def test_idle_stop_from_a_config_file_in_camel_case(record, tmp_path):
    config = tmp_path / "request.json"
    config.write_text(json.dumps({"idleStop": {"emptySeconds": 1, "allMutedSeconds": 0}}))
    run = record("--config", str(config), timeout=30)
    assert run.error["code"] == "INVALID_ARGUMENT", run.error
    assert "idleStop.allMutedSeconds: Input should be greater than 0" in run.error["message"]


def _api(body: dict, server: ServerFacts = ServerFacts()) -> RecordRequest:
    upload = {"storage": {"kind": "local"}, "staging": "/tmp/s"}
    return StartEgressRequest.model_validate({"roomName": "r", **body}).to_record_request(
        {"file": "/tmp/s/r.mp4"}, upload, server)


def test_api_request_fields_override_the_server_defaults_one_by_one():
    assert _api({}).idle_stop is None  # off unless the server or the request sets one
    server = ServerFacts(idle_stop=IdleStop(empty_seconds=300, no_publisher_seconds=600))
    idle = _api({"idleStop": {"emptySeconds": 20, "allMutedSeconds": 60}}, server).idle_stop
    assert (idle.empty_seconds, idle.no_publisher_seconds, idle.all_muted_seconds) == (20, 600, 60)
    # A web page has no room to watch: the server's defaults leave it be, a request's own idleStop is refused.
    assert _api({"webUrl": "https://example.com/"}, server).idle_stop is None
    with pytest.raises(InvalidRequest) as exc:
        _api({"webUrl": "https://example.com/", "idleStop": {"emptySeconds": 5}})
    assert exc.value.details == {"field": "idleStop"}


def test_service_shows_why_an_idle_egress_ended(tmp_path):
    # The server's default (COMPOSITOR_IDLE_EMPTY_S) applies to a request that sets none of its own.
    port = free_port()
    receiver = HttpReceiver(port)
    server = Server(tmp_path / "data", "--webhook-url", f"http://127.0.0.1:{port}/hooks",
                    env={"COMPOSITOR_IDLE_EMPTY_S": "1"})
    try:
        info = server.start(advanced={"width": 320, "height": 180}, room={"participants": [
            {"name": "A", "color": A, "tone": 450, "leaves": 2}, {"name": "B", "color": "#4363d8", "tone": 0,
                                                                  "joins": 30}]})
        done = server.wait_status(info["id"], "COMPLETE", "LIMIT_REACHED", "FAILED", timeout=60)
        assert done["status"] == "COMPLETE", done
        assert done["stoppedBy"] == "idle" and done["endReason"] == "no one in the room for 1 s", done
        assert 2.3 <= done["file"]["duration"] <= 4.0, done["file"]
        deadline = time.monotonic() + 20
        while len(receiver.posts) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        completed = json.loads(receiver.posts[-1][1])
        assert completed["event"] == "recording.completed", completed
        assert completed["data"]["stoppedBy"] == "idle"
        assert completed["data"]["endReason"] == "no one in the room for 1 s"
    finally:
        server.stop_server()
        receiver.close()


@pytest.mark.parametrize("stopped_by, reason, details", [
    ("idle", "no one published for 30 s", "End reason: no one published for 30 s"),
    ("room_ended", None, "End reason: Source closed"),  # LiveKit's words when the room closes
    ("stopped", None, "End reason: StopEgress API"),
])
def test_livekit_egress_info_says_why_it_ended_in_details(stopped_by, reason, details):
    rec = EgressRecord(id="EG_123456789012", room_name="r", mode="record", layout="grid", quality="720p",
                       request={"room_name": "r"}, status=Status.COMPLETE, stopped_by=stopped_by, end_reason=reason)
    info = egress_info(rec)
    assert info.status == lk.EGRESS_COMPLETE and info.details == details


def test_recordings_start_takes_idle_stop_too():
    body = StartRecordingRequest.model_validate({"roomName": "r", "idleStop": {"noPublisherSeconds": 45}})
    assert body.to_egress_request().idle_stop == IdleStop(no_publisher_seconds=45)
