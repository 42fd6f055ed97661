"""The participants and speakers sidecars: who was in the room when and who spoke when, written next to the
file on its timeline. A scripted synthetic room recorded through the real pipeline, checked against the
script and against the media itself; the page's reports bounded; the requests that may ask for them."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from compositor import analysis
from compositor.api.livekit_shape import from_livekit
from compositor.errors import InvalidRequest
from compositor.pipeline.delivery import build_manifest
from compositor.pipeline.sidecars import (
    MAX_IDENTITY,
    ClockSample,
    MediaClock,
    RoomEvent,
    RoomEventKind,
    RoomLog,
    build_sidecars,
)
from compositor.plan import resolve
from compositor.protocol import Status
from compositor.request import PALETTE, RecordRequest
from compositor.service.livekit_info import egress_info as livekit_egress_info
from compositor.service.requests import StartEgressRequest
from compositor.service.seams import EgressRecord
from compositor.service.webhooks import events_for
from compositor.storage.manifest import keys_by_kind, result_of

from .conftest import SMALL, assert_color

A, B = PALETTE[0], PALETTE[1]
A_HZ, B_HZ = 440, 660
# Room time (from START_RECORDING): A is there throughout and speaks 1.5-3; B joins at 2.5, speaks 3.5-4.5 and
# leaves at 5.
SCRIPT = [f"name=A,color={A},tone={A_HZ},speaks=1.5-3",
          f"name=B,color={B},tone={B_HZ},joins=2.5,leaves=5,speaks=3.5-4.5"]
# Grid: one tile fills the frame; two sit side by side (B on the right).
RIGHT_HALF = (0.5, 0.25, 0.5, 0.5)
TOLERANCE_S = 0.5  # about correctness (which second), not speed
NEAR_S = 0.2  # how far from an edge the media is sampled (a frame or two of rendering either side)


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_sidecars_follow_the_script_and_agree_with_the_media(record):
    run = record(*SMALL, "--layout", "grid", "--duration", "7", *(a for s in SCRIPT for a in ("--participant", s)))
    assert run.code == 0, run.stderr[-2000:]
    f = run.result["file"]
    paths = {kind: Path(f["sidecars"][kind]) for kind in ("participants", "speakers")}
    assert paths == {kind: run.output.with_name(f"out.mp4.{kind}.json") for kind in paths}
    people, speakers = (json.loads(paths[kind].read_text()) for kind in ("participants", "speakers"))
    for doc in (people, speakers):
        assert (doc["file"], doc["truncated"], doc["duration"]) == ("out.mp4", False, f["duration"])
    # The file's time 0 is some tenths of a second after START_RECORDING (ffmpeg starting): room time is an
    # offset plus that lead.
    lead = epoch(people["started_at"]) - run.result["timings"]["start_recording"]
    assert 0 <= lead < 1.5, lead

    a, b = people["participants"]
    assert (a["identity"], a["from_start"], a["until_end"]) == ("A", True, True)
    assert (a["start"]["offset"], a["end"]["offset"]) == (0.0, f["duration"])
    assert (b["identity"], b["from_start"], b["until_end"]) == ("B", False, False)
    assert abs(b["start"]["offset"] + lead - 2.5) < TOLERANCE_S, (b, lead)
    assert abs(b["end"]["offset"] + lead - 5) < TOLERANCE_S, (b, lead)
    # Wall clock and offset say the same moment.
    assert abs(epoch(b["start"]["at"]) - epoch(people["started_at"]) - b["start"]["offset"]) < 0.002

    sa, sb = speakers["speakers"]
    assert [sa["identity"], sb["identity"]] == ["A", "B"]
    for span, (start, end) in ((sa, (1.5, 3)), (sb, (3.5, 4.5))):
        assert abs(span["start"]["offset"] + lead - start) < TOLERANCE_S, (span, lead)
        assert abs(span["end"]["offset"] + lead - end) < TOLERANCE_S, (span, lead)

    # In the media: B's tile appears at B's join and goes at B's leave; each voice starts and stops at its span.
    def frame(t: float):
        return analysis.frame_at(run.output, t)

    assert_color(frame(b["start"]["offset"] - NEAR_S), RIGHT_HALF, A)
    assert_color(frame(b["start"]["offset"] + NEAR_S), RIGHT_HALF, B)
    assert_color(frame(b["end"]["offset"] - NEAR_S), RIGHT_HALF, B)
    assert_color(frame(b["end"]["offset"] + NEAR_S), RIGHT_HALF, A)
    # (The voice is scheduled on the audio clock, the speaking state on a timer that a busy page may run late.)
    samples = analysis.audio_samples(run.output)
    for span, hz in ((sa, A_HZ), (sb, B_HZ)):
        start, end = span["start"]["offset"], span["end"]["offset"]
        assert analysis.tone_level(samples, hz, start - 0.45, start - NEAR_S) < 0.02, span
        assert analysis.tone_level(samples, hz, start + NEAR_S, start + 0.45) > 0.1, span
        assert analysis.tone_level(samples, hz, end - 0.45, end - NEAR_S) > 0.1, span
        assert analysis.tone_level(samples, hz, end + NEAR_S, end + 0.45) < 0.02, span


# -- the page's reports, bounded ------------------------------------------------------------------------------

def line(kind: str, identity: str, at: float, name: str | None = None) -> str:
    return json.dumps({"kind": kind, "identity": identity, "name": name or identity, "at": at})


def test_a_room_log_keeps_at_most_its_cap_and_drops_what_is_malformed_or_oversized():
    log = RoomLog(limit=3)
    for text in (line("joined", "A", 1), "not json", json.dumps({"kind": "danced", "identity": "A", "at": 1}),
                 line("joined", "x" * (MAX_IDENTITY + 1), 2), line("joined", "B", float("nan")),
                 line("speaking", "A", 2) + " " * 4096, line("speaking", "A", 3), line("left", "A", 4),
                 line("joined", "C", 5)):
        log.add(text)
    assert [(e.kind, e.identity) for e in log.events] == [("joined", "A"), ("speaking", "A"), ("left", "A")]
    assert (log.dropped, log.malformed, log.truncated) == (1, 5, True)


def clock(duration: float = 10.0) -> MediaClock:
    """Page time 1000 ms is wall time 100.0, and the file's time 0 is at wall time 101.0."""
    return MediaClock((ClockSample(1000, 100.0),), zero_epoch=101.0, duration=duration)


def test_spans_start_at_zero_for_those_there_before_the_first_frame_and_end_at_the_end():
    ev = [RoomEvent(RoomEventKind(k), who, who, at) for k, who, at in (
        ("joined", "A", 0), ("speaking", "A", 500),       # before the first frame (page 2000 ms)
        ("joined", "B", 3000), ("speaking", "B", 4000),   # offsets 1.0 and 2.0
        ("left", "B", 5000),                              # speaking ends with the leave, at 3.0
        ("silent", "A", 6000),                            # 4.0
        ("joined", "C", 2500), ("left", "C", 2500),       # no time in the room: left out
        ("speaking", "D", 3000),                          # never joined: left out
    )]
    people, speakers = build_sidecars(ev, clock())
    assert [(p["identity"], p["start"]["offset"], p["end"]["offset"], p["from_start"], p["until_end"])
            for p in people] == [("A", 0.0, 10.0, True, True), ("B", 1.0, 3.0, False, False)]
    assert [(s["identity"], s["start"]["offset"], s["end"]["offset"]) for s in speakers] == \
        [("A", 0.0, 4.0), ("B", 2.0, 3.0)]
    assert people[1]["start"]["at"] == "1970-01-01T00:01:42.000Z"  # wall time 102.0


def test_the_page_clock_is_interpolated_between_its_readings():
    # The page's clock ran 1 ms per second slow against the wall clock.
    c = MediaClock((ClockSample(0, 100.0), ClockSample(100_000, 200.1)), zero_epoch=100.0, duration=300)
    assert c.epoch(50_000) == pytest.approx(150.05)
    assert c.offset(100_000) == pytest.approx(100.1)


def test_a_paused_span_is_left_out_of_the_timeline_as_out_of_the_file():
    # Captured 0–3 s kept, 3–6 s paused (left out), kept again from the keyframe at 6.5 s: a 7.5 s file.
    c = MediaClock((ClockSample(1000, 101.0),), zero_epoch=101.0, duration=7.5, pieces=((None, 3.0), (6.5, None)))
    ev = [RoomEvent(RoomEventKind(k), who, who, at) for k, who, at in (
        ("joined", "A", 1000), ("speaking", "A", 2000), ("silent", "A", 4000),  # silent while paused: at 3.0
        ("joined", "B", 4000), ("left", "B", 5000),                             # only while paused: never there
        ("joined", "C", 5000), ("left", "C", 8500),                             # came while paused: 3.0–4.0
    )]
    people, speakers = build_sidecars(ev, c)
    assert [(p["identity"], p["start"]["offset"], p["end"]["offset"]) for p in people] == \
        [("A", 0.0, 7.5), ("C", 3.0, 4.0)]
    assert [(s["identity"], s["start"]["offset"], s["end"]["offset"]) for s in speakers] == [("A", 1.0, 3.0)]
    # Wall times stay the room's: C came at 105.0 and the file ended at wall time 112.0 (3.5 s of pause in it).
    assert people[1]["start"]["at"] == "1970-01-01T00:01:45.000Z"
    assert people[0]["end"]["at"] == "1970-01-01T00:01:52.000Z"


# -- who asks for them ---------------------------------------------------------------------------------------

def test_on_by_default_for_a_room_into_a_file_off_for_a_web_page_and_when_asked():
    room = {"file": {"filepath": "/tmp/x.mp4"}}
    assert resolve(RecordRequest.model_validate(room)).sidecars
    assert not resolve(RecordRequest.model_validate({**room, "sidecars": False})).sidecars
    assert not resolve(RecordRequest.model_validate({**room, "web_url": "https://example.org/"})).sidecars
    assert not resolve(RecordRequest.model_validate({"stream": {"urls": ["rtmp://h/app/k"]}})).sidecars
    with pytest.raises(ValueError, match="sidecars"):
        RecordRequest.model_validate({**room, "web_url": "https://example.org/", "sidecars": True})


def test_the_api_refuses_them_where_there_is_no_room_or_no_file_and_the_livekit_shape_not_at_all():
    with pytest.raises(InvalidRequest) as web:
        StartEgressRequest.model_validate({"webUrl": "https://example.org/", "sidecars": True})
    assert web.value.details["field"] == "sidecars"
    with pytest.raises(InvalidRequest) as stream:
        StartEgressRequest.model_validate({"roomName": "r", "mode": "stream", "stream": {"urls": []},
                                           "sidecars": True})
    assert stream.value.details["field"] == "sidecars"
    assert StartEgressRequest.model_validate({"roomName": "r", "sidecars": False}).sidecars is False
    for value in (True, False):
        with pytest.raises(InvalidRequest) as lk:
            from_livekit({"room_name": "r", "file_outputs": [{"filepath": "x.mp4"}], "sidecars": value})
        assert lk.value.details["field"] == "sidecars"


def test_the_manifest_lists_them_with_the_file_and_the_result_says_where(tmp_path):
    file = tmp_path / "rec" / "x.mp4"
    file.parent.mkdir()
    file.write_bytes(b"media")
    sidecars = [file.with_name(f"x.mp4.{kind}.json") for kind in ("participants", "speakers")]
    for path in sidecars:
        path.write_text("{}")
    manifest = build_manifest(egress_id="EG_1", room_name="r", staging=tmp_path,
                              file={"path": str(file), "size": 5, "duration": 1.0}, playlist=None,
                              live_playlist=None, images=[], sidecars=sidecars)
    assert [(s["key"], s["kind"]) for s in manifest["sidecars"]] == \
        [("rec/x.mp4.participants.json", "participants"), ("rec/x.mp4.speakers.json", "speakers")]
    # They go where the file goes (its storage).
    assert keys_by_kind(manifest)["file"] == ["rec/x.mp4", "rec/x.mp4.participants.json", "rec/x.mp4.speakers.json"]
    located = {**manifest, "location": "m", "storage": "s3",
               "files": [{**manifest["files"][0], "location": "s3://b/rec/x.mp4"}],
               "sidecars": [{**s, "location": f"s3://b/{s['key']}"} for s in manifest["sidecars"]]}
    assert result_of(located)["file"]["sidecars"] == {"participants": "s3://b/rec/x.mp4.participants.json",
                                                      "speakers": "s3://b/rec/x.mp4.speakers.json"}


def test_recording_webhooks_say_where_they_are_and_livekit_file_results_leave_them_out():
    sidecars = {"participants": "https://s/x.mp4.participants.json", "speakers": "https://s/x.mp4.speakers.json"}
    rec = EgressRecord(id="EG_123456789012", room_name="r", mode="record", layout="grid", quality="720p",
                       request={"file": {"filepath": "x.mp4"}}, status=Status.COMPLETE, started_at=1.0, ended_at=3.0,
                       file={"location": "https://s/x.mp4", "key": "x.mp4", "size": 5, "duration": 2.0,
                             "sidecars": sidecars})
    [(name, data)] = events_for(rec, Status.ACTIVE)
    assert (name, data["fileUrl"], data["sidecars"]) == ("recording.completed", "https://s/x.mp4", sidecars)
    # LiveKit's clients take file_results (and `file`) as the recording itself: only the file is there.
    info = livekit_egress_info(rec)
    assert [r.location for r in info.file_results] == ["https://s/x.mp4"]
