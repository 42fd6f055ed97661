"""The soak benchmark's mechanisms, compressed to a minute: a LiveKit room where people join, leave and share a
screen, recorded to a file, HLS and RTMP at once, told in windows. Run as a user runs it (a process, its JSON);
the figures' values are the benchmark's business, so no timing is asserted here: only that every figure is
measured and the file is whole."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from compositor import analysis
from tools.peers.livekit import STEPPED_FPS, STEPS, clock_residuals, make_marker_clip

from .conftest import REPO
from .support.livekit import tools_or_skip


def test_the_soak_benchmark_measures_every_window(tmp_path):
    tools_or_skip()
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, str(REPO / "bench/soak.py"), "--minutes", "1", "--window", "0.5",
                          "--preset", "480p", "--out", str(out), "--keep", str(tmp_path / "kept")],
                         capture_output=True, text=True, timeout=900, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["media_s"] >= 59 and result["seek_failures"] == []
    windows = result["windows"]
    assert [w["window"] for w in windows] == ["0-0.5 min", "0.5-1 min"]
    for w in windows:
        # What a window is made of was measured: processes sampled, frames compared, HLS segments dated.
        assert w["worker_mb"] > 0 and w["chromium_mb"] > 0 and w["ffmpeg_mb"] > 0 and w["cores"] > 0, w
        assert 0 < w["distinct"] <= 1 and w["hls_ms"] is not None and w["gaps"] >= 0, w
    # The publisher's sync markers were found and paired, flash with click.
    assert sum(w["markers"] for w in windows) > 0 and any(w["av_ms"] is not None for w in windows)
    # The room's schedule ran: bob came and went, dave shared a screen and stopped.
    assert [(e["who"], e["what"]) for e in result["room"]][:4] == [
        ("bob", "join"), ("dave", "share"), ("dave", "unshare"), ("bob", "leave")]
    assert set(result["targets"]) == {"av_drift_ms", "rss_growth_pct_after_first_window", "longest_freeze_s",
                                      "hls_drift_ms"}
    kept = tmp_path / "kept"
    assert (kept / "soak.mp4").exists() and list((kept / "hls").glob("*.m3u8"))


def test_stepped_markers_fall_where_the_publisher_put_them(tmp_path):
    """The soak's markers step through a captured frame's time, flash and click together; taking the steps out
    puts each flash back on the publisher's second, whichever marker a recording begins with."""
    clip = make_marker_clip(tmp_path, seconds=12, stepped=True)
    late = tmp_path / "late.mkv"
    # A recording that begins 2.5 s into the publisher's clock: its first marker is the third, two steps in.
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-ss", "2.5", "-i", str(clip.video), "-ss", "2.5",
                    "-i", str(clip.audio), "-c:v", "ffv1", "-c:a", "pcm_s16le", str(late)], check=True)
    pairs = analysis.marker_pairs(late)
    flashes = [f for f, _ in pairs]
    assert len(pairs) >= 8 and all(abs(offset) < 0.005 for _, offset in pairs), pairs
    # Four places in a captured frame's time, one frame of the clip apart.
    assert len({round((f - flashes[0]) % 1 * STEPPED_FPS) for f in flashes}) == STEPS, flashes
    assert max(abs(r) for r in clock_residuals(flashes)) < 0.002, clock_residuals(flashes)


def test_a_gap_in_a_steady_tone_is_found_and_a_pause_is_not():
    """What a late audio output leaves in a recording: a cut (the tone jumps ahead) or silence put in. A voice
    that stops for a while has not glitched."""
    rate = analysis.AUDIO_RATE
    t = np.arange(int(4 * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 450 * t)
    tone[int(1.0 * rate):int(1.03 * rate)] = 0  # 30 ms of silence put in
    tone[int(2.0 * rate):] = 0.3 * np.sin(2 * np.pi * 450 * (t[int(2.0 * rate):] + 0.03))  # 30 ms cut
    tone[int(3.0 * rate):int(3.5 * rate)] = 0  # a pause
    gaps = analysis.tone_gaps(tone.astype(np.float32), 450)
    assert [round(start, 1) for start, _ in gaps] == [1.0, 2.0], gaps
    assert 0.025 <= gaps[0][1] <= 0.045, gaps
    assert analysis.tone_gaps(0.3 * np.sin(2 * np.pi * 450 * t).astype(np.float32), 450) == []


def test_no_gaps_are_found_in_a_tone_that_is_not_there():
    """A minute of the soak when bob is away: only the markers' clicks, whose onsets leak a blip into bob's
    frequency once a second. The quiet between the blips is not a gap in his tone."""
    rate = analysis.AUDIO_RATE
    t = np.arange(int(6 * rate)) / rate
    clicks = (0.6 * np.sin(2 * np.pi * 3000 * t) * (np.mod(t, 1) < 0.1)).astype(np.float32)
    assert analysis.tone_gaps(clicks, 450) == []


def test_flashes_are_found_when_the_picture_around_them_darkens(tmp_path):
    """A tile leaving darkens the picture by more than a marker's flash lifts it: flashes after it are found
    all the same, and paired with their clicks."""
    clip = tmp_path / "markers.mkv"
    flash = "between(mod(t,1),0,0.1)*gte(t,1)"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "color=c=0x202020:s=320x180:r=30:d=10,"
                    "drawbox=x=0:y=0:w=160:h=180:c=0xc8c8c8:t=fill:enable='lt(t,5.5)',"
                    f"drawbox=x=160:y=0:w=160:h=90:c=white:t=fill:enable='{flash}'",
                    "-f", "lavfi", "-i", f"aevalsrc='0.6*sin(2*PI*3000*t)*{flash}':s=48000:d=10",
                    "-c:v", "ffv1", "-c:a", "pcm_s16le", str(clip)], check=True)
    pairs = analysis.marker_pairs(clip)
    assert [round(f) for f, _ in pairs] == list(range(1, 10)), pairs
    assert all(abs(offset) < 0.04 for _, offset in pairs), pairs
