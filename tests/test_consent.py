"""Who is recorded (consent): a request includes or excludes identities, and whoever it leaves out is neither
seen nor heard; the filter changes while recording (the worker's control channel, the service's endpoint)."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from compositor import analysis
from compositor.cli.main import main
from compositor.errors import InvalidRequest
from compositor.plan import resolve
from compositor.protocol import COMMAND, UpdateParticipants
from compositor.request import RecordRequest, first_error
from compositor.service.requests import ServerFacts, StartEgressRequest, UpdateParticipantsRequest
from tools.peers.livekit import make_clip

from .conftest import HttpReceiver
from .test_service import Server

TINY = ["--width", "320", "--height", "180"]
ADA, BOB = ("Ada", "#e6194b", 450), ("Bob", "#4363d8", 650)
PEOPLE = [a for name, color, tone in (ADA, BOB) for a in ("--participant", f"name={name},color={color},tone={tone}")]
HEARD, SILENT = 0.02, 0.003  # a tone's RMS where it plays, and at most where it must not
CENTRE = (0.3, 0.3, 0.4, 0.4)  # one person alone fills the frame; two side by side leave a gap here


def colour_share(frame: np.ndarray, color: str, tol: float = 40) -> float:
    """The fraction of the frame's pixels within `tol` of `color`."""
    return float((np.abs(frame.astype(float) - analysis.hex_rgb(color)).max(axis=2) <= tol).mean())


def assert_only(path, t: float, who: tuple, other: tuple, window: tuple[float, float]) -> None:
    """At `t` only `who` is on screen (alone, filling the frame), and during `window` only their tone plays."""
    frame = analysis.frame_at(path, t)
    assert analysis.color_distance(analysis.region_color(frame, *CENTRE), who[1]) <= 40, f"{who[0]} alone at {t}"
    assert colour_share(frame, other[1]) < 0.001, f"{other[0]} is on screen at {t}"
    pcm = analysis.audio_samples(path)
    assert analysis.tone_level(pcm, who[2], *window) > HEARD, f"{who[0]} not heard in {window}"
    assert analysis.tone_level(pcm, other[2], *window) < SILENT, f"{other[0]} heard in {window}"


# --- the request ---------------------------------------------------------------------------------------------

def egress(**body) -> StartEgressRequest:
    return StartEgressRequest.model_validate({"roomName": "r", **body})


@pytest.mark.parametrize(("participants", "message"), [
    ({"include": ["a"], "exclude": ["b"]}, "participants: give include or exclude (a list of identities), not both"),
    ({}, "participants: give include or exclude (a list of identities)"),
    ({"include": ["x"] * 101}, "participants.include: List should have at most 100 items"),
    ({"exclude": ["x" * 257]}, "participants.exclude.0: String should have at most 256 characters"),
    ({"exclude": [""]}, "participants.exclude.0: String should have at least 1 character"),
    ({"exclude": "bob"}, "participants.exclude: Input should be a valid list"),
    ({"exclude": ["bob"], "also": ["x"]}, "participants.also: Extra inputs are not permitted"),
])
def test_a_bad_filter_is_refused_naming_the_field(participants, message):
    with pytest.raises(ValueError) as caught:
        egress(participants=participants)
    assert first_error(caught.value).startswith(message), first_error(caught.value)


@pytest.mark.parametrize("body", [{"participant": {"identity": "bob"}}, {"track": {"trackId": "TR_x"}},
                                  {"web_url": "https://example.com/"}])
def test_participant_track_and_web_egresses_take_no_filter(body):
    # A participant or track egress already picks whom it records; a web page has no participants.
    with pytest.raises(InvalidRequest) as caught:
        egress(participants={"exclude": ["bob"]}, **body)
    assert caught.value.details["field"] == "participants"


def test_a_template_page_takes_no_filter(monkeypatch):
    for name, value in (("LIVEKIT_URL", "ws://127.0.0.1:7880"), ("LIVEKIT_API_KEY", "k"),
                        ("LIVEKIT_API_SECRET", "s" * 32)):
        monkeypatch.setenv(name, value)
    req = RecordRequest.model_validate({"room": {"kind": "livekit"}, "template_url": "https://example.com/t",
                                        "participants": {"exclude": ["bob"]}, "file": {"filepath": "o.mp4"}})
    with pytest.raises(InvalidRequest) as caught:
        resolve(req)
    assert caught.value.details["field"] == "participants"


def test_the_filter_reaches_the_worker_and_its_plan_as_given():
    req = egress(participants={"include": ["ada", "<b>bob</b>"]}).to_record_request({"file": "o.mp4"}, None,
                                                                                     ServerFacts())
    assert req.participants.include == ["ada", "<b>bob</b>"] and req.participants.exclude is None
    assert resolve(req).participant_filter == req.participants
    assert resolve(RecordRequest.model_validate({"file": {"filepath": "o.mp4"}})).participant_filter is None


def test_record_takes_include_or_exclude_not_both(capsys):
    # (Each flag alone is recorded through the pipeline below.)
    with pytest.raises(SystemExit):
        main(["record", "--include", "Ada", "--exclude", "Bob"])
    assert "argument --exclude: not allowed with argument --include" in capsys.readouterr().err


def test_the_command_is_typed():
    cmd = COMMAND.validate_python({"op": "update_participants", "id": 3, "participants": {"exclude": ["bob"]}})
    assert isinstance(cmd, UpdateParticipants) and cmd.participants.exclude == ["bob"]
    with pytest.raises(ValueError):
        COMMAND.validate_python({"op": "update_participants", "participants": {"include": [], "exclude": []}})
    assert UpdateParticipantsRequest.model_validate({"include": []}).include == []


# --- through the real pipeline -------------------------------------------------------------------------------

def test_an_excluded_participant_is_neither_seen_nor_heard(record):
    run = record(*TINY, "--layout", "grid", "--duration", "3", *PEOPLE, "--exclude", "Bob")
    assert run.code == 0, run.stderr[-2000:]
    assert_only(run.output, 1.5, ADA, BOB, (0.5, 2.5))


def test_include_records_only_those_named(record):
    run = record(*TINY, "--layout", "speaker", "--duration", "3", *PEOPLE, "--include", "Bob")
    assert run.code == 0, run.stderr[-2000:]
    assert_only(run.output, 1.5, BOB, ADA, (0.5, 2.5))


def test_the_filter_changes_while_recording(start_record):
    run = start_record(*TINY, "--layout", "grid", *PEOPLE, "--exclude", "Bob", control=True)
    run.wait_for_status("ACTIVE", timeout=60)
    time.sleep(2.5)
    run.send({"op": "update_participants", "id": 1, "participants": {"include": ["Ada"], "exclude": ["Bob"]}})
    refused = run.wait_for(lambda e: e["type"] == "command" and e.get("id") == 1)
    assert not refused["ok"] and refused["code"] == "INVALID_ARGUMENT"
    assert refused["message"].startswith("participants: give include or exclude"), refused
    sent = time.time()
    run.send({"op": "update_participants", "id": 2, "participants": {"exclude": ["Ada"]}})
    reply = run.wait_for(lambda e: e["type"] == "command" and e.get("id") == 2)
    assert reply["ok"] and reply["participants"] == {"exclude": ["Ada"]}, reply
    done_at = reply["at"]
    time.sleep(2.5)
    run.proc.send_signal(signal.SIGINT)
    done = run.finish()
    assert done.code == 0, done.stderr[-2000:]
    t0 = done.result["timings"]["start_recording"]
    before, after = sent - t0, done_at - t0
    # Before the change Ada alone; from the moment the worker answers, Bob alone (Ada not heard at all).
    assert_only(done.output, before - 0.5, ADA, BOB, (before - 1.5, before - 0.1))
    assert_only(done.output, after + 0.5, BOB, ADA, (after + 0.05, after + 2.0))


# --- through the service -------------------------------------------------------------------------------------

ROOM = {"room": {"participants": [{"name": n, "color": c, "tone": t} for n, c, t in (ADA, BOB)]},
        "advanced": {"width": 320, "height": 180}}


def test_the_endpoint_changes_a_running_egress_and_refuses_an_ended_one(tmp_path):
    server = Server(tmp_path / "data")
    try:
        status, info, _ = server.call("POST", "/v1/egress/start", {"roomName": "r", **ROOM, "layout": "grid",
                                                                   "participants": {"exclude": ["Bob"]}})
        assert status == 201, info
        assert info["participants"] == {"exclude": ["Bob"]}
        server.wait_status(info["id"], "ACTIVE")
        time.sleep(2)
        path = f"/v1/egress/{info['id']}/participants"
        status, body, _ = server.call("POST", path, {"include": ["Ada"], "exclude": []})
        assert status == 400 and "give include or exclude" in body["error"]["message"], body
        status, body, _ = server.call("POST", path, {"include": ["x" * 300]})
        assert status == 400 and body["error"]["details"]["field"] == "include.0", body
        status, changed, _ = server.call("POST", path, {"include": ["Bob"]})
        assert status == 200 and changed["participants"] == {"include": ["Bob"]}, changed
        assert server.call("GET", f"/v1/egress/{info['id']}")[1]["participants"] == {"include": ["Bob"]}
        time.sleep(2)
        assert server.call("POST", f"/v1/egress/{info['id']}/stop")[0] == 200
        ended = server.wait_status(info["id"], "COMPLETE")
        status, body, _ = server.call("POST", path, {"exclude": []})
        assert status == 409 and body["error"]["code"] == "EGRESS_NOT_ACTIVE", body
        assert server.call("GET", f"/v1/egress/{info['id']}")[1]["participants"] == {"include": ["Bob"]}
        # The file: Ada alone first, Bob alone at its end.
        out = ended["file"]["location"]
        assert_only(out, 1.0, ADA, BOB, (0.6, 1.4))
        duration = analysis.facts(out).duration
        assert_only(out, duration - 0.5, BOB, ADA, (duration - 1.0, duration - 0.2))
        # A web egress records a page: it has no participants to filter, running or not.
        page = HttpReceiver(page="<!doctype html><body style='background:#888'></body>")
        try:
            status, web, _ = server.call("POST", "/v1/egress/start", {"webUrl": page.url})
            assert status == 201, web
            status, body, _ = server.call("POST", f"/v1/egress/{web['id']}/participants", {"exclude": ["Bob"]})
            assert status == 409 and body["error"]["code"] == "NOT_FILTERABLE", body
            server.call("POST", f"/v1/egress/{web['id']}/stop")
            server.wait_status(web["id"], "COMPLETE", "ABORTED", "FAILED")
        finally:
            page.close()
    finally:
        server.stop_server()


# --- a LiveKit room ------------------------------------------------------------------------------------------

def test_a_livekit_room_drops_whom_the_filter_leaves_out_at_once(livekit, start_record, tmp_path):
    alice, bob = ("alice", "#e6194b", 350), ("bob", "#3cb44b", 650)
    room = "consent-room"
    for identity, color, tone in (alice, bob):
        clip = make_clip(tmp_path / "clips", color, tone)
        livekit.publish(room, identity, clip.video, clip.audio)
    livekit.wait_published(room, {"alice": 2, "bob": 2})
    run = start_record("--room", "livekit", "--room-name", room, "--layout", "grid", *TINY, "--exclude", "bob",
                       control=True, env=livekit.env)
    run.wait_for_status("ACTIVE", timeout=40)
    time.sleep(3)
    run.send({"op": "update_participants", "id": 1, "participants": {"include": ["bob"]}})
    reply = run.wait_for(lambda e: e["type"] == "command" and e.get("id") == 1)
    assert reply["ok"], reply
    time.sleep(4)
    run.proc.send_signal(signal.SIGINT)
    done = run.finish()
    assert done.code == 0, done.stderr[-2000:]
    at = reply["at"] - done.result["timings"]["start_recording"]
    assert_only(done.output, at - 0.5, alice, bob, (at - 2.0, at - 0.1))
    # Alice is silent from the answer on; bob comes back once his tracks are subscribed again.
    pcm = analysis.audio_samples(done.output)
    assert analysis.tone_level(pcm, alice[2], at + 0.05, at + 3.5) < SILENT
    assert_only(done.output, at + 3.0, bob, alice, (at + 2.0, at + 3.5))


def test_a_page_that_does_not_apply_the_filter_records_nothing(record, tmp_path):
    # A custom template that skips our boot(): it signals START_RECORDING but would show everyone.
    page = tmp_path / "own.html.j2"
    page.write_text("<!doctype html><body><script>console.log('START_RECORDING')</script></body>")
    run = record(*TINY, "--layout", str(page), "--duration", "2", *PEOPLE, "--exclude", "Bob")
    assert run.code != 0 and run.error["code"] == "TEMPLATE_ERROR", run.stderr[-2000:]
    assert "participant filter" in run.error["message"]
    assert not run.output.exists()
