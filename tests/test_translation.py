"""A start request's one path to the worker's RecordRequest (StartEgressRequest.to_record_request), without
processes: the server's facts (room server, custom layouts, session limits) applied in one place."""

from __future__ import annotations

import pytest

from compositor.api.livekit_shape import from_livekit, from_livekit_track
from compositor.errors import InvalidRequest
from compositor.request import UploadSpec
from compositor.service.requests import ServerFacts, StartEgressRequest
from compositor.storage import LocalStorage

UPLOAD = UploadSpec(storage=LocalStorage(), staging="/data/recordings", local_root="/data/recordings")
PATHS = {"file": "/data/recordings/room-1.mp4"}


def translate(body: dict, server: ServerFacts = ServerFacts(), paths: dict = PATHS):
    return StartEgressRequest.model_validate({"roomName": "room-1", **body}).to_record_request(paths, UPLOAD, server)


def test_a_bare_room_name_is_a_room_of_the_configured_room_server():
    assert translate({}).room is None
    assert translate({}, ServerFacts(room_server=True)).room.kind == "livekit"
    # A web egress records its page, not a room.
    assert translate({"webUrl": "https://example.com/"}, ServerFacts(room_server=True)).room is None


def test_the_shortest_session_limit_of_its_outputs_applies():
    server = ServerFacts(max_file_duration_s=30, max_stream_duration_s=10)
    assert translate({}, server).duration == 30  # a file, no stream: the stream limit does not apply
    assert translate({"maxDuration": 20}, server).duration == 20
    streamed = translate({"mode": "both", "stream": {"urls": ["rtmp://example.com/app/key"]}}, server)
    assert streamed.duration == 10
    assert translate({}).duration is None


def test_a_custom_layout_is_found_in_the_layouts_dir_only(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "layout.html.j2").write_text("<div id=stage></div>")
    req = translate({"layout": "custom/mine"}, ServerFacts(layouts_dir=tmp_path))
    assert req.layout == str(folder)
    with pytest.raises(InvalidRequest, match="layouts_dir"):
        translate({"layout": "custom/mine"})


def test_what_the_workers_model_refuses_is_an_invalid_request():
    with pytest.raises(InvalidRequest, match="audio_only"):
        translate({"audioOnly": True, "videoOnly": True})


def test_outputs_go_where_the_service_placed_them():
    req = translate({"segments": {"filenamePrefix": "hls/x"}, "file": {"fileType": "WEBM"}},
                    paths={"file": "/s/room-1.webm", "segments": "/s/hls/x"})
    assert str(req.file.filepath) == "/s/room-1.webm" and req.file.file_type == "WEBM"
    assert str(req.segments.filename_prefix) == "/s/hls/x" and req.upload == UPLOAD


def test_livekit_track_egress_is_audio_from_the_room():
    body = from_livekit_track({"room_name": "room-1", "track_id": "TR_1", "file": {"filepath": "a.ogg"}})
    assert (body["track"], body["file"]["fileType"]) == ({"track_id": "TR_1"}, "OGG")
    req = translate({k: v for k, v in body.items() if k != "roomName"})
    assert req.audio_only and req.room.track_ids == ["TR_1"]
    # The room composite shape has no track: a track's field there is refused, not read as a room composite.
    with pytest.raises(InvalidRequest, match="track_id"):
        from_livekit({"room_name": "room-1", "track_id": "TR_1"})
