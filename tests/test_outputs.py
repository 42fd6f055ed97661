"""Live outputs through the real pipeline, against real receivers on 127.0.0.1.

nginx-rtmp (one app records, one refuses every key), RTMPS through stunnel
with a self-signed CA, an ffmpeg SRT listener with a passphrase. What the
receivers got is checked for content: codecs, size, duration, keyframe
spacing, the participants' tones.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from compositor import analysis
from compositor.request import PALETTE
from tools.peers.receivers import SrtListener, Stunnel, free_port, listening, wait_until

from .conftest import REPO, SMALL, Run, assert_color, parse_events, record_argv

TONES = (350, 450)
PEOPLE = [arg for i, tone in enumerate(TONES) for arg in ("--participant", f"name=P{i + 1},tone={tone}")]
# Stream keys and the SRT passphrase carry this word: it must never leave the worker.
SECRET = "Zq9SECRETkey"


@pytest.fixture(scope="module")
def stunnel(tmp_path_factory, nginx):
    tls = Stunnel(tmp_path_factory.mktemp("stunnel"), nginx.port)
    yield tls
    tls.close()


def assert_stream_content(path: Path, duration: float, tol: float = 0.6) -> None:
    """A received stream carries the room: H.264 640x360 + AAC, the whole duration, keyframes <= 2 s apart, tones."""
    facts = analysis.facts(path)
    assert (facts.video_codec, facts.audio_codec, facts.width, facts.height) == ("h264", "aac", 640, 360), facts
    assert abs(facts.duration - duration) <= tol, f"{path.name}: {facts.duration} s, expected ~{duration} s"
    keys = analysis.keyframe_times(path)
    gaps = [b - a for a, b in zip(keys, keys[1:])]
    assert keys and keys[0] - analysis.frame_times(path)[0] < 0.05, f"{path.name} does not start on a keyframe"
    assert max(gaps) <= 2.05, f"{path.name}: keyframes {keys}"
    samples = analysis.audio_samples(path)
    for tone in TONES:
        assert analysis.tone_level(samples, tone, 1.0, duration - 1.0) > 0.02, f"{path.name}: no {tone} Hz"


def assert_continuous(path: Path, max_gap: float = 0.25) -> None:
    times = analysis.frame_times(path)
    gaps = times[1:] - times[:-1]
    assert gaps.max() <= max_gap, f"{path.name}: a {gaps.max():.2f} s hole in the picture at {times[gaps.argmax()]:.2f}"


@pytest.fixture(scope="module")
def fanout_run(tmp_path_factory, nginx, stunnel):
    """One 8 s egress into a file, HLS, thumbnails and five destinations (one refuses its key)."""
    out = tmp_path_factory.mktemp("fanout")
    srt = SrtListener(out / "srt.ts", passphrase=f"pass-{SECRET}")
    request = {
        "file": {"filepath": str(out / "room.mp4")},
        "segments": {"filename_prefix": str(out / "hls/seg"), "live_playlist_name": "live.m3u8"},
        "images": {"filename_prefix": str(out / "thumbs/thumb"), "capture_interval": 2, "width": 320},
        "stream": {"urls": [nginx.url("live", f"a-{SECRET}"), nginx.url("reject", f"b-{SECRET}"),
                            f"rtmps://127.0.0.1:{stunnel.port}/live/c-{SECRET}", srt.url(f"sid-{SECRET}")],
                   "retry_window": 2, "ca_file": str(stunnel.ca)},
    }
    (out / "request.json").write_text(json.dumps(request))
    argv = record_argv([*SMALL, "--layout", "grid", "--duration", "8", *PEOPLE, "--config", str(out / "request.json"),
                        "-v"], None)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)
    srt.finish()
    yield {"run": Run(proc.returncode, parse_events(proc.stdout), proc.stderr, out / "room.mp4"), "dir": out,
           "srt": srt.out, "raw": proc.stdout + proc.stderr}
    srt.close()


def test_every_destination_gets_the_room(fanout_run, nginx):
    run = fanout_run["run"]
    assert run.code == 0, run.stderr[-3000:]
    file_facts = analysis.facts(run.output)
    assert_stream_content(run.output, file_facts.duration)
    received = [*nginx.recordings(f"a-{SECRET}"), *nginx.recordings(f"c-{SECRET}"), fanout_run["srt"]]
    assert len(received) == 3, received
    for path in received:
        assert_stream_content(path, file_facts.duration)


def test_a_refused_key_fails_alone(fanout_run):
    run = fanout_run["run"]
    streams = {s["url"].split("/")[-2] if "rtmp" in s["url"] else "srt": s for s in run.result["streams"]}
    assert streams["reject"]["status"] == "FAILED" and streams["reject"]["error_code"] == "RTMP_PUBLISH_REJECTED"
    assert streams["reject"]["retries"] >= 1 and "stream key" in streams["reject"]["error"]
    others = [s for s in run.result["streams"] if s is not streams["reject"]]
    assert [s["status"] for s in others] == ["FINISHED"] * 3, others
    assert all(s["retries"] == 0 for s in others), others
    assert run.result["status"] == "COMPLETE"


def test_hls_playlists(fanout_run):
    run, folder = fanout_run["run"], fanout_run["dir"] / "hls"
    duration = analysis.facts(run.output).duration
    playlist = (folder / "seg.m3u8").read_text().splitlines()
    segments = [line for line in playlist if line.endswith(".ts")]
    extinf = [float(line.split(":")[1].rstrip(",")) for line in playlist if line.startswith("#EXTINF")]
    assert playlist[-1] == "#EXT-X-ENDLIST" and len(segments) == len(extinf) >= 4
    assert sum(1 for line in playlist if line.startswith("#EXT-X-PROGRAM-DATE-TIME")) == len(segments)
    assert abs(sum(extinf) - duration) <= 0.5, (extinf, duration)
    assert max(extinf[:-1]) <= 2.05
    for name in segments:
        keys = analysis.keyframe_times(folder / name)
        assert keys and abs(keys[0] - analysis.frame_times(folder / name)[0]) < 0.01, f"{name} starts mid-GOP"
    assert abs(analysis.facts(folder / "seg.m3u8").duration - duration) <= 0.5
    live = (folder / "live.m3u8").read_text().splitlines()
    live_segments = [line for line in live if line.endswith(".ts")]
    assert live_segments == segments[-5:] and live[-1] == "#EXT-X-ENDLIST"
    assert f"#EXT-X-MEDIA-SEQUENCE:{len(segments) - len(live_segments)}" in live
    assert run.result["segments"]["segment_count"] == len(segments)


def test_thumbnails(fanout_run):
    run, folder = fanout_run["run"], fanout_run["dir"] / "thumbs"
    images = sorted(folder.glob("thumb_*.jpg"))
    # The picture's length (its frames at 30 fps): the container's may run a fraction of an audio frame longer.
    duration = len(analysis.frame_times(run.output)) / 30
    assert len(images) in (math.ceil(duration / 2), math.ceil(duration / 2) + 1), images
    assert run.result["images"]["count"] == len(images)
    for image in images:
        assert analysis.video_size(image) == (320, 180)
    # The room, not a black frame: the first person's tile is in the thumbnail, in their colour.
    assert_color(analysis.frame_at(images[-1], 0), (0.15, 0.4, 0.15, 0.2), PALETTE[0], tol=50)


def test_an_overwritten_thumbnail_is_always_the_latest_picture(record, tmp_path):
    # LiveKit's IMAGE_SUFFIX_NONE_OVERWRITE: one file, replaced at each capture. The picture changes halfway.
    request = {"images": {"filename_prefix": str(tmp_path / "thumbs/now"), "capture_interval": 1,
                          "filename_suffix": "IMAGE_SUFFIX_NONE_OVERWRITE"},
               "room": {"participants": [{"name": "A", "color": PALETTE[0], "tone": 350, "leaves": 2},
                                         {"name": "B", "color": PALETTE[1], "tone": 450, "joins": 1}]}}
    (tmp_path / "request.json").write_text(json.dumps(request))
    run = record("--width", "320", "--height", "180", "--layout", "grid", "--duration", "4",
                 "--config", str(tmp_path / "request.json"))
    assert run.code == 0, run.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "thumbs").iterdir()) == ["now.jpeg"]
    assert_color(analysis.frame_at(tmp_path / "thumbs/now.jpeg", 0), (0.4, 0.4, 0.2, 0.2), PALETTE[1], tol=50)
    # Every capture counts, though one file holds only the last.
    duration = len(analysis.frame_times(run.output)) / 30
    assert run.result["images"]["count"] in (math.ceil(duration), math.ceil(duration) + 1), run.result["images"]


def test_secrets_never_leave_the_worker(fanout_run):
    raw = fanout_run["raw"]
    assert "rtmp://" in raw and "***" in raw  # destinations were reported (and debug logs written)...
    assert SECRET not in raw  # ...with every key and passphrase redacted


def test_a_dropped_destination_reconnects_and_the_rest_carry_on(nginx, start_record, tmp_path):
    live = start_record(*SMALL, "--layout", "grid", "--duration", "10", *PEOPLE,
                        "--stream", nginx.url("live", "drop-a"), "--stream", nginx.url("live", "keep-b"))
    live.wait_for(lambda e: e["type"] == "stream" and e["status"] == "ACTIVE" and e["index"] == 0, 30, "A active")
    time.sleep(2.5)
    nginx.drop("drop-a")
    dropped = live.wait_for(lambda e: e["type"] == "stream" and e["index"] == 0 and e["status"] == "RECONNECTING",
                            10, "A reconnecting")
    assert dropped["error_code"] == "RTMP_DISCONNECTED"
    back = live.wait_for(lambda e: e["type"] == "stream" and e["index"] == 0 and e["status"] == "ACTIVE", 10,
                         "A back")
    assert back["retries"] == 1 and back["last_retry_at"]
    run = live.finish()
    assert run.code == 0, run.stderr[-2000:]
    duration = analysis.facts(run.output).duration
    a_parts = nginx.recordings("drop-a")
    assert len(a_parts) == 2, a_parts  # before the drop, and after the reconnect
    assert sum(analysis.facts(p).duration for p in a_parts) >= duration - 3.0  # lost at most the retry gap
    (b,) = nginx.recordings("keep-b")
    assert_stream_content(b, duration)
    assert_continuous(b)
    assert_continuous(run.output)
    assert all(s["status"] == "FINISHED" for s in run.result["streams"]), run.result["streams"]


def test_a_stalled_destination_is_cut_off_without_slowing_the_rest(nginx, start_record, tmp_path):
    port = free_port()
    # Noise as a camera keeps the stream at its full bitrate, so the socket buffers between the pusher and a
    # receiver that stopped reading (megabytes on loopback) fill within seconds, as they would on a real link.
    noise = tmp_path / "noise.webm"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    "nullsrc=s=640x360:r=30:d=2,geq=random(1)*255:128:128",
                    "-c:v", "libvpx", "-b:v", "4M", str(noise)], check=True)
    receiver = subprocess.Popen(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-listen", "1", "-i",
                                 f"rtmp://127.0.0.1:{port}/app/stall", "-c", "copy", str(tmp_path / "stalled.flv")],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        wait_until(lambda: listening(port), 10, "ffmpeg rtmp listener")
        live = start_record(*SMALL, "--video-bitrate", "6000", "--layout", "grid", "--duration", "20",
                            "--participant", f"name=N,tone=0,video={noise}",
                            *PEOPLE, "--stream-retry-window", "2",
                            "--stream", f"rtmp://127.0.0.1:{port}/app/stall", "--stream", nginx.url("live", "steady"))
        live.wait_for(lambda e: e["type"] == "stream" and e["index"] == 0 and e["status"] == "ACTIVE", 30, "active")
        time.sleep(1.0)
        os.killpg(receiver.pid, signal.SIGSTOP)
        cut = live.wait_for(lambda e: e["type"] == "stream" and e["index"] == 0 and e["status"] != "ACTIVE", 18,
                            "stall noticed")
        assert cut["error_code"] == "RTMP_STALLED", cut
        run = live.finish(timeout=40)
    finally:
        os.killpg(receiver.pid, signal.SIGCONT)
        os.killpg(receiver.pid, signal.SIGKILL)
        receiver.wait()
    assert run.code == 0, run.stderr[-2000:]
    stalled = run.result["streams"][0]
    assert stalled["status"] == "FAILED" and stalled["retries"] >= 1, stalled
    duration = analysis.facts(run.output).duration
    assert duration > 19
    (steady,) = nginx.recordings("steady")
    assert_stream_content(steady, duration)
    assert_continuous(steady)
    assert_continuous(run.output)


def test_destinations_added_and_removed_while_live(nginx, start_record):
    live = start_record(*SMALL, "--layout", "grid", "--duration", "10", *PEOPLE,
                        "--stream", nginx.url("live", "first"), control=True)
    live.wait_for(lambda e: e["type"] == "stream" and e["status"] == "ACTIVE", 30, "first active")
    time.sleep(3.0)
    added_at = time.time()
    live.send({"op": "update_streams", "id": 1, "add": [nginx.url("live", "second")]})
    reply = live.wait_for(lambda e: e["type"] == "command", 10, "reply")
    assert reply["ok"] and [s["status"] for s in reply["streams"]] == ["ACTIVE", "STARTING"], reply
    second = live.wait_for(lambda e: e["type"] == "stream" and e["index"] == 1 and e["status"] == "ACTIVE", 5,
                           "second active")
    assert second["time"] - added_at < 2.0
    time.sleep(2.0)
    live.send({"op": "update_streams", "id": 2, "remove": [nginx.url("live", "first")]})
    removed = live.wait_for(lambda e: e["type"] == "command", 10, "reply")
    assert removed["ok"] and removed["streams"][0]["status"] == "FINISHED", removed
    live.send({"op": "update_streams", "id": 3, "add": ["rtmp://127.0.0.1/nokey"]})
    bad = live.wait_for(lambda e: e["type"] == "command", 10, "reply")
    assert not bad["ok"] and bad["code"] == "INVALID_ARGUMENT" and "stream key" in bad["message"]
    run = live.finish()
    assert run.code == 0, run.stderr[-2000:]
    duration = analysis.facts(run.output).duration
    (first,) = nginx.recordings("first")
    (second_file,) = nginx.recordings("second")
    # The first ran from the start until it was removed (~6 s); the second from the last keyframe before it
    # was added (~3.5 s in: the one at 2 s) to the end.
    first_facts, second_facts = analysis.facts(first), analysis.facts(second_file)
    assert 4.5 <= first_facts.duration <= duration - 2.0, first_facts
    assert duration - 3.6 < second_facts.duration <= duration - 1.0, second_facts
    keys = analysis.keyframe_times(second_file)
    assert keys and keys[0] == pytest.approx(analysis.frame_times(second_file)[0], abs=0.01)
    assert_continuous(second_file)


def test_stream_only_egress_ends_when_its_last_destination_is_removed(nginx, start_record):
    live = start_record(*SMALL, "--layout", "grid", *PEOPLE, "--stream", nginx.url("live", "only"), output=None,
                        control=True)
    live.wait_for(lambda e: e["type"] == "stream" and e["status"] == "ACTIVE", 30, "active")
    time.sleep(1.5)
    live.send({"op": "update_streams", "remove": [nginx.url("live", "only")]})
    run = live.finish(timeout=20)
    assert run.code == 0, run.stderr[-2000:]
    assert run.result["stopped_by"] == "streams_removed" and "file" not in run.result
    (received,) = nginx.recordings("only")
    assert analysis.facts(received).duration > 1.0


def test_stream_only_egress_fails_when_every_destination_has(record):
    dead = f"rtmp://127.0.0.1:{free_port()}/live/{SECRET}"
    run = record(*SMALL, "--stream", dead, "--stream-retry-window", "1", "--duration", "30", output=None)
    assert run.code != 0
    assert run.error["code"] == "RTMP_CONNECTION_REFUSED" and run.error["status"] == "FAILED"
    assert "every stream destination failed" in run.error["message"] and SECRET not in json.dumps(run.events)
    assert run.error["details"]["streams"][0]["retries"] >= 1


@pytest.mark.parametrize("url,message", [
    ("http://example.com/live/key", "scheme must be one of"),
    ("rtmp:///live/key", "has no host"),
    ("rtmp://127.0.0.1/live", "needs an application and a stream key"),
    ("srt://127.0.0.1?passphrase=short", "SRT needs a port"),
    ("srt://127.0.0.1:9000?passphrase=short", "10 to 79 characters"),
    ("srt://127.0.0.1:9000?mode=listener", "mode=caller"),
])
def test_bad_destinations_are_refused_before_anything_starts(record, url, message):
    run = record("--stream", url, "--duration", "1", output=None, timeout=30)
    assert run.code == 2 and run.error["code"] == "INVALID_ARGUMENT" and message in run.error["message"]
    assert "short" not in run.error["message"]  # the passphrase is redacted even in the error


def test_webm_with_streams_is_refused(record):
    run = record("--stream", "rtmp://127.0.0.1/live/key", "--duration", "1", output="out.webm", timeout=30)
    assert run.code == 2 and "H.264/AAC" in run.error["message"]
