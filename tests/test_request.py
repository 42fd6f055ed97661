"""Requests and participant specs resolve to exactly the job asked for."""

from __future__ import annotations

import pytest

from compositor.errors import InvalidRequest
from compositor.plan import resolve
from compositor.request import PALETTE, TONES, RecordRequest, parse_participant


def test_spec_fills_gaps_from_the_palette():
    p = parse_participant("", 2)
    assert (p.name, p.color, p.tone, p.speaks) == ("P3", PALETTE[2], TONES[2], None)


def test_spec_reads_every_key():
    p = parse_participant("name=Ann,color=#AABBCC,tone=0,speaks=0-2;4.5-6,screenshare=1-3:#010203,"
                          "joins=0.5,leaves=9,video=off,freezes=2-4;5-7")
    assert p.color == "#aabbcc" and p.tone == 0
    assert [(w.start, w.end) for w in p.speaks] == [(0, 2), (4.5, 6)]
    assert [(w.start, w.end) for w in p.freezes] == [(2, 4), (5, 7)]
    assert (p.screenshare.start, p.screenshare.end, p.screenshare.color) == (1, 3, "#010203")
    assert (p.joins, p.leaves, p.has_camera) == (0.5, 9, False)


def test_empty_speaks_means_never():
    assert parse_participant("speaks=").speaks == []


@pytest.mark.parametrize("spec", ["leaves=1,joins=2", "tone=5", "screenshare=2", "name"])
def test_bad_specs_are_refused(spec):
    with pytest.raises(InvalidRequest):
        parse_participant(spec)


def test_names_are_on_unless_a_request_turns_them_off():
    def names(**body) -> bool:
        return RecordRequest.model_validate({"roomName": "r", "file": {"filepath": "a.mp4"}, **body}).overlays.names

    assert names() is True and names(overlays={"clock": True}) is True
    assert names(overlays={"names": False}) is False


@pytest.mark.parametrize(("flags", "names"), [([], None), (["--names"], True), (["--no-names"], False)])
def test_names_flags_fold_into_the_overlays(flags, names):
    import argparse

    from compositor.cli.args import add_page_flags, fold_page_flags

    parser = argparse.ArgumentParser()
    add_page_flags(parser)
    data: dict = {}
    fold_page_flags(parser.parse_args(flags), data)
    assert data.get("overlays", {}).get("names") == names


def test_camel_and_snake_case_requests_are_the_same():
    a = RecordRequest.model_validate({"roomName": "r", "file": {"filepath": "x.webm", "fileType": "webm"},
                                      "quality": "1080p", "syncMarkers": True})
    b = RecordRequest.model_validate({"room_name": "r", "file": {"filepath": "x.webm", "file_type": "WEBM"},
                                      "preset": "1080p", "sync_markers": True})
    assert a == b


def test_preset_and_advanced_resolve_to_encoder_settings():
    cfg = resolve(RecordRequest.model_validate({"file": {"filepath": "a.mp4"}, "preset": "H264_1080P_30",
                                                "advanced": {"framerate": 25, "x264Preset": "superfast"}}))
    v = cfg.video
    assert (v.width, v.height, v.fps, v.bitrate_kbps, v.codec, v.x264_preset) == (1920, 1080, 25, 4500, "h264",
                                                                                 "superfast")
    assert cfg.audio.codec == "aac" and cfg.container == "mp4"


def test_ogg_is_audio_only_and_webm_refuses_h264():
    assert resolve(RecordRequest.model_validate({"file": {"filepath": "a.ogg"}})).video is None
    with pytest.raises(InvalidRequest, match="WebM"):
        resolve(RecordRequest.model_validate({"file": {"filepath": "a.webm"}, "advanced": {"videoCodec": "H264"}}))


def test_layout_themes_are_parameters():
    cfg = resolve(RecordRequest.model_validate({"file": {"filepath": "a.mp4"}, "layout": "speaker-light"}))
    assert (cfg.layout.name, cfg.layout.theme) == ("speaker", "light")
