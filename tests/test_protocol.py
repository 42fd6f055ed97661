"""The service–worker protocol and the store's outbox, without processes: fast checks of pure logic."""

from __future__ import annotations

import io
import json

import pytest

from compositor.events import EventSink
from compositor.protocol import (
    COMMAND,
    CommandReply,
    ErrorEvent,
    JobCommand,
    ResultEvent,
    Status,
    StatusEvent,
    StreamEvent,
    StreamStatus,
    UpdateLayout,
    UpdateStreams,
    WarmEvent,
    parse_event,
)
from compositor.service.store import EgressRecord, OutboxEvent, SqliteStore
from compositor.service.webhooks import Webhooks


def wire(event) -> dict:
    sink = EventSink("json", stream=io.StringIO())
    sink.emit(event)
    (line,) = sink.stream.getvalue().splitlines()
    return json.loads(line)


def test_every_event_reads_back_as_the_model_it_was():
    events = [WarmEvent(width=640, height=360),
              StatusEvent(egress_id="EG_1", status=Status.ENDING, message="storing the outputs", storing=True),
              StreamEvent(egress_id="EG_1", index=1, url="rtmp://h/app/***", status=StreamStatus.RECONNECTING,
                          retries=2, error="gone", error_code="CONNECTION_REFUSED"),
              ResultEvent(egress_id="EG_1", file={"path": "/r/a.mp4", "size": 10}, stopped_by="limit"),
              ErrorEvent(egress_id="EG_1", status=Status.ABORTED, code="ABORTED", message="stopped"),
              CommandReply(id=3, ok=False, code="INVALID_ARGUMENT", message="no")]
    for event in events:
        line = event.wire()
        back = parse_event(line)
        assert type(back) is type(event) and back == event, line


def test_the_wire_keeps_the_shape_scripts_read():
    status = wire(StatusEvent(egress_id="EG_1", status=Status.ACTIVE))
    assert status["type"] == "status" and status["status"] == "ACTIVE" and "storing" not in status
    # A destination shows every field, null ones too.
    stream = wire(StreamEvent(index=0, url="rtmp://h/app/***", status=StreamStatus.ACTIVE))
    assert stream["error"] is None and stream["index"] == 0 and stream["status"] == "ACTIVE"
    assert wire(ResultEvent(file={"path": "x"}))["status"] == "COMPLETE"


@pytest.mark.parametrize("line", [b"not json", b"[1]", b'{"type":"future_kind","x":1}', b'{"type":"status"}',
                                  b'{"type":"status","status":"DANCING"}'])
def test_what_is_not_an_event_is_skipped(line):
    assert parse_event(line) is None


def test_a_newer_workers_extra_fields_are_kept_not_refused():
    event = parse_event(b'{"type":"progress","elapsed":1,"frames":30,"fps":30,"bitrate_kbps":900,"size":5,"gpu":1}')
    assert event.frames == 30 and event.model_extra == {"gpu": 1}


def test_commands_by_op():
    assert COMMAND.validate_python({"op": "update_streams", "id": 2, "add": ["rtmp://h/a/k"]}) == \
        UpdateStreams(id=2, add=["rtmp://h/a/k"])
    assert isinstance(COMMAND.validate_json(JobCommand(egress_id="EG_1", request={"duration": 2}).wire()), JobCommand)
    assert COMMAND.validate_json(UpdateLayout(layout="grid").wire()).layout == "grid"
    for bad in ({"op": "dance"}, {"op": "update_layout"}, {"op": "update_streams", "add": "rtmp://x"}):
        with pytest.raises(ValueError):
            COMMAND.validate_python(bad)


def test_status_is_a_string_where_strings_are_expected():
    assert Status.ACTIVE == "ACTIVE" and json.dumps({"s": Status.FAILED}) == '{"s": "FAILED"}'


# The outbox: a change and the webhook events it causes commit together, or neither does.

def record(store: SqliteStore, mode: str = "record") -> EgressRecord:
    rec = EgressRecord(id="EG_1", room_name="room", mode=mode, layout="grid", quality="720p", request={})
    store.create(rec)
    return rec


def test_a_status_change_and_its_webhooks_commit_together(tmp_path):
    store = SqliteStore(tmp_path / "c.db")
    hooks = Webhooks(store, ["http://a.test/hook", "http://b.test/hook"], "secret", formats=("baxcloud", "livekit"))
    record(store)
    rec = store.update("EG_1", events=hooks.for_change, status=Status.ACTIVE, started_at=1.0)
    assert rec.status is Status.ACTIVE
    due = store.due_events(float("inf"))
    # recording.started (baxcloud) and egress_started (livekit), each for both receivers; one at a time per receiver
    assert sorted((e.url, e.format) for e in due) == [("http://a.test/hook", "baxcloud"),
                                                      ("http://b.test/hook", "baxcloud")]
    assert json.loads(due[0].body)["event"] == "recording.started"
    assert store.event_backlog() == 4
    # Unchanged status: no events.
    store.update("EG_1", events=hooks.for_change, worker_pid=42)
    assert store.event_backlog() == 4


def test_a_change_whose_events_fail_is_not_kept(tmp_path):
    store = SqliteStore(tmp_path / "c.db")
    record(store)

    def broken(before, after):
        raise RuntimeError("composing the events failed")

    with pytest.raises(RuntimeError):
        store.update("EG_1", events=broken, status=Status.ACTIVE)
    assert store.get("EG_1").status is Status.STARTING and store.event_backlog() == 0


def test_outbox_order_and_retries(tmp_path):
    store = SqliteStore(tmp_path / "c.db")
    record(store)

    def one(name):
        return lambda before, after: [OutboxEvent(name, "EG_1", "http://a.test/", "baxcloud", name, created_at=1.0)]

    store.update("EG_1", events=one("first"), status=Status.ACTIVE)
    store.update("EG_1", events=one("second"), status=Status.COMPLETE)
    (head,) = store.due_events(2.0)
    assert head.event_id == "first"
    store.event_retry(head.seq, 1, next_at=100.0, error="HTTP 500")
    assert store.due_events(2.0) == [] and store.next_event_at() == 100.0
    (again,) = store.due_events(100.0)
    assert again.event_id == "first" and again.attempts == 1
    store.event_delivered(again.seq, 2)
    (then,) = store.due_events(100.0)
    assert then.event_id == "second"
    store.event_given_up(then.seq, 1, "gone")
    assert store.event_backlog() == 0 and store.next_event_at() is None


def test_a_destinations_change_reports_its_own_transition(tmp_path):
    store = SqliteStore(tmp_path / "c.db")
    hooks = Webhooks(store, ["http://a.test/"], "secret")
    record(store, mode="stream")
    store.update("EG_1", streams=[{"url": "rtmp://h/a/***", "status": "ACTIVE", "retries": 0}])
    failed = {"url": "rtmp://h/a/***", "status": "FAILED", "retries": 3, "error": "refused",
              "error_code": "RTMP_PUBLISH_REJECTED"}
    store.update("EG_1", events=hooks.for_stream(0), streams=[failed])
    (event,) = store.due_events(float("inf"))
    body = json.loads(event.body)
    assert body["event"] == "stream.failed" and body["data"]["errorCode"] == "RTMP_PUBLISH_REJECTED"
    # The same state again is no news.
    store.update("EG_1", events=hooks.for_stream(0), streams=[failed])
    assert store.event_backlog() == 1
