"""Stream URLs, redaction, FLV tags and playlists: the pure parts of live outputs (no processes)."""

from __future__ import annotations

import asyncio

import pytest

from compositor.destinations import parse_stream_url, parse_stream_urls, redact_url
from compositor.errors import InvalidRequest
from compositor.pipeline.hls import Playlist, Playlists
from compositor.pipeline.streams import FlvTag, classify
from compositor.plan import SegmentSettings, resolve
from compositor.request import RecordRequest


@pytest.mark.parametrize("url, shown", [
    ("rtmp://a.rtmp.youtube.com/live2/abcd-efgh-ijkl-mnop", "rtmp://a.rtmp.youtube.com/live2/***"),
    ("rtmp://live.twitch.tv/app/live_123456_AbCdEf", "rtmp://live.twitch.tv/app/***"),
    ("rtmps://live-api-s.facebook.com:443/rtmp/FB-123-0-Abc?s_bl=1&s_sc=9&a=Ab12",
     "rtmps://live-api-s.facebook.com:443/rtmp/***"),
    ("srt://ingest.example.com:9000?latency=200000&passphrase=longenoughpass&streamid=sid-42",
     "srt://ingest.example.com:9000?latency=200000&passphrase=***&streamid=***"),
    ("mux://mux-key-1234", "rtmps://global-live.mux.com:443/app/***"),
    ("rtmp://user:hunter22@host.example/app/key1234", "rtmp://user:***@host.example/app/***"),
])
def test_platform_urls_are_taken_as_given_and_shown_redacted(url, shown):
    target = parse_stream_url(url)
    assert target.redacted == shown
    secret = url.rsplit("/", 1)[-1].split("?")[0] if not url.startswith("srt") else "longenoughpass"
    assert secret not in target.redact(f"ffmpeg said: {target.url}: Input/output error; key {secret}")


@pytest.mark.parametrize("url, message", [
    ("http://example.com/live/key", "scheme must be one of"),
    ("rtmp:///live/key", "no host"),
    ("rtmp://example.com/live", "application and a stream key"),
    ("rtmp://example.com/live/ key", "spaces"),
    ("srt://example.com?passphrase=x", "needs a port"),
    ("srt://example.com:9000?passphrase=tooshort", "10 to 79"),
    ("mux://", "needs a stream key"),
])
def test_bad_urls_are_refused_without_showing_the_key(url, message):
    with pytest.raises(InvalidRequest) as err:
        parse_stream_url(url)
    assert message in err.value.message
    assert not any(secret in err.value.message for secret in ("tooshort", "/live/key", "/live/ key"))


def test_the_same_destination_twice_is_refused():
    with pytest.raises(InvalidRequest, match="given twice"):
        parse_stream_urls(["rtmp://h/app/k1", "rtmp://h/app/k1"])


def test_redaction_of_unparseable_text_keeps_nothing_secret():
    assert redact_url("rtmp://h/app/secret?x=1") == "rtmp://h/app/***"


def _tag(kind: int, ts: int, body: bytes) -> FlvTag:
    head = bytes([kind]) + len(body).to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big") + bytes([ts >> 24])
    return FlvTag(kind=kind, timestamp=ts, raw=head + b"\0\0\0" + body + (11 + len(body)).to_bytes(4, "big"))


def test_flv_tags_know_keyframes_config_and_retime():
    key = _tag(9, 40_000, b"\x17\x01rest")
    inter = _tag(9, 40_033, b"\x27\x01rest")
    avc_config = _tag(9, 0, b"\x17\x00cfg")
    aac_config = _tag(8, 0, b"\xaf\x00cfg")
    assert key.keyframe and not key.is_config and not inter.keyframe
    assert avc_config.is_config and aac_config.is_config and not avc_config.keyframe
    moved = inter.retimed(40_000)
    assert int.from_bytes(moved[4:7], "big") == 33 and moved[11:] == inter.raw[11:]
    big = _tag(9, 20_000_000, b"\x27\x01x")  # past 24 bits: the extended byte carries the rest
    assert int.from_bytes(big.retimed(0)[4:7], "big") | big.retimed(0)[7] << 24 == 20_000_000


def test_pusher_endings_are_named():
    from compositor.destinations import StreamTarget
    rtmp = StreamTarget("rtmp://h/app/k", "rtmp://h/app/***")
    srt = StreamTarget("srt://h:1", "srt://h:1")
    assert classify(rtmp, ["Connection to tcp://h failed: Connection refused"], False)[0] == "RTMP_CONNECTION_REFUSED"
    assert classify(rtmp, ["rtmp://h/app/***: Input/output error"], False)[0] == "RTMP_PUBLISH_REJECTED"
    assert classify(rtmp, ["Broken pipe"], True)[0] == "RTMP_DISCONNECTED"
    assert classify(rtmp, ["Peer certificate failed verification"], False)[0] == "RTMP_TLS_ERROR"
    assert classify(srt, ["Input/output error"], False)[0] == "SRT_CONNECTION_FAILED"


def test_live_playlist_is_a_window_of_the_last_segments(tmp_path):
    lines = ["#EXTM3U", "#EXT-X-VERSION:6", "#EXT-X-TARGETDURATION:2", "#EXT-X-MEDIA-SEQUENCE:0",
             "#EXT-X-PLAYLIST-TYPE:EVENT"]
    for i in range(8):
        lines += ["#EXTINF:2.000000,", f"#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:{2 * i:02d}.000+0000",
                  f"s_{i:05d}.ts"]
    (tmp_path / "p.m3u8").write_text("\n".join(lines) + "\n")
    playlist = Playlist.read(tmp_path / "p.m3u8")
    assert len(playlist.segments) == 8 and playlist.duration == 16.0 and not playlist.ended
    window = playlist.window(5, ended=False).splitlines()
    assert "#EXT-X-MEDIA-SEQUENCE:3" in window and "#EXT-X-PLAYLIST-TYPE:EVENT" not in window
    assert [ln for ln in window if ln.endswith(".ts")] == [f"s_{i:05d}.ts" for i in range(3, 8)]
    assert window[-1] != "#EXT-X-ENDLIST" and playlist.window(5, ended=True).rstrip().endswith("#EXT-X-ENDLIST")


def test_the_whole_playlist_is_kept_from_ffmpegs_sliding_one(tmp_path):
    # ffmpeg lists only its last segments (its muxer keeps ~10 KB per segment listed); the worker keeps them all.
    muxer = tmp_path / "work" / "window.m3u8"
    muxer.parent.mkdir()
    seg = SegmentSettings(directory=tmp_path, pattern="s_%05d.ts", playlist=tmp_path / "p.m3u8",
                          live_playlist=tmp_path / "live.m3u8", duration=2, timestamp=False)

    def ffmpeg_lists(first: int, last: int, ended: bool = False) -> None:
        lines = ["#EXTM3U", "#EXT-X-VERSION:6", "#EXT-X-TARGETDURATION:2", f"#EXT-X-MEDIA-SEQUENCE:{first}",
                 "#EXT-X-INDEPENDENT-SEGMENTS"]
        for i in range(first, last + 1):
            lines += [f"#EXTINF:{3.5 if i == 1 else 2.0:.6f},",
                      f"#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:{2 * i:02d}.000+0000", f"s_{i:05d}.ts"]
        muxer.write_text("\n".join(lines + (["#EXT-X-ENDLIST"] if ended else [])) + "\n")

    keeper = Playlists(seg, muxer)
    keeper.update()
    assert not seg.playlist.exists()  # nothing listed yet: no playlist at all
    for first, last in [(0, 0), (0, 2), (1, 3), (1, 3), (3, 6)]:
        ffmpeg_lists(first, last)
        keeper.update()
    ffmpeg_lists(5, 8, ended=True)
    asyncio.run(keeper.stop())
    lines = seg.playlist.read_text().splitlines()
    assert [ln for ln in lines if ln.endswith(".ts")] == [f"s_{i:05d}.ts" for i in range(9)]
    assert lines[:5] == ["#EXTM3U", "#EXT-X-VERSION:6", "#EXT-X-TARGETDURATION:4", "#EXT-X-MEDIA-SEQUENCE:0",
                         "#EXT-X-PLAYLIST-TYPE:EVENT"]
    assert "#EXT-X-INDEPENDENT-SEGMENTS" in lines and "#EXT-X-ENDLIST" not in lines  # finish_segments ends it
    assert sum(ln.startswith("#EXT-X-PROGRAM-DATE-TIME") for ln in lines) == 9
    assert Playlist.read(seg.playlist).duration == 19.5
    live = [ln for ln in seg.live_playlist.read_text().splitlines() if ln.endswith(".ts")]
    assert live == [f"s_{i:05d}.ts" for i in range(4, 9)]


def test_outputs_resolve_to_files_and_keyframes(tmp_path):
    req = RecordRequest.model_validate({
        "segments": {"filename_prefix": str(tmp_path / "hls") + "/", "segment_duration": 3,
                     "filename_suffix": "TIMESTAMP", "live_playlist_name": "live"},
        "images": {"filename_prefix": str(tmp_path / "img/shot"), "capture_interval": 5,
                   "filename_suffix": "IMAGE_SUFFIX_INDEX"},
        "stream": {"urls": ["rtmp://h/app/k"]}})
    cfg = resolve(req)
    assert cfg.output is None and cfg.video.codec == "h264" and cfg.audio.codec == "aac"
    assert cfg.segments.pattern == "segment_%Y%m%dT%H%M%S.ts" and cfg.segments.live_playlist.name == "live.m3u8"
    assert cfg.video.keyframe_interval == 1.5  # segments of 3 s cut on keyframes at most 2 s apart
    assert cfg.images.pattern == "shot_%05d.jpg" and cfg.images.directory == tmp_path / "img"


@pytest.mark.parametrize("body, message", [
    ({"file": {"filepath": "a.webm"}, "stream": {"urls": []}}, "H.264/AAC"),
    ({"file": {"filepath": "a.ogg"}, "images": {"filename_prefix": "i"}}, "audio only"),
    ({"file": {"filepath": "a|b.mp4"}, "stream": {"urls": []}}, "cannot contain"),
    ({"segments": {"filename_prefix": "s", "playlist_name": "x/y.m3u8"}}, "file name"),
])
def test_output_combinations_that_cannot_work_are_refused(body, message):
    with pytest.raises(InvalidRequest, match=message.replace("|", r"\|")):
        resolve(RecordRequest.model_validate(body))


def test_images_alone_are_not_an_egress():
    with pytest.raises(ValueError, match="at least one output"):
        RecordRequest.model_validate({"images": {"filename_prefix": "i"}})
