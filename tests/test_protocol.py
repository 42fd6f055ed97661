"""The service–worker protocol, without processes: fast checks of pure logic."""

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
