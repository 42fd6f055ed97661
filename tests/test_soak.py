"""The soak benchmark's mechanisms, compressed to a minute: a LiveKit room where people join, leave and share a
screen, recorded to a file, HLS and RTMP at once, told in windows. Run as a user runs it (a process, its JSON);
the figures' values are the benchmark's business, so no timing is asserted here: only that every figure is
measured and the file is whole."""

from __future__ import annotations

import json
import subprocess
import sys

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
        assert 0 < w["distinct"] <= 1 and w["hls_ms"] is not None, w
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
