"""Idle stop: a recording ends by itself (COMPLETE, stopped_by idle) once its room is idle, as Jibri's does."""

from __future__ import annotations

import json

import pytest

from compositor import analysis
from compositor.errors import InvalidRequest
from compositor.request import IdleStop, RecordRequest
from compositor.service.requests import ServerFacts, StartEgressRequest

from .conftest import assert_color

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
