"""Soak benchmark: a long recording of a LiveKit room, told in windows, to see what drifts or grows.

A room on a livekit-server on 127.0.0.1 holds, all along, a publisher of sync
markers (a white flash and a 3 kHz click at the same instant, once a second
of the publisher's clock, stepped through a captured frame's time so that
four markers in a row average out where the capture falls) and one of a
moving test picture; in every window `bob` joins and leaves and `dave`
shares a screen for a while. The worker records it at 720p30 to an MP4, HLS
and one RTMP destination (nginx-rtmp) at once. Printed per window:

- av_ms: mean and worst offset of the markers in the file (sound minus
  picture; positive: sound late); stray: flashes paired with a click more
  than 150 ms away, left out of the mean (a layout change can look like a
  flash: the marker's tile moves, or a share covers it);
- clock_ms: where the window's markers fall in the file against where the
  publisher's clock put them (media time minus wall time, from the first
  marker): a recording whose media clock drifts from the wall clock shows it
  here;
- gaps: gaps in bob's steady tone while he is there (a cut, or silence put in): where the sound's way out of
  Chromium ran late, every voice in the room jumps by that much; a jump of the markers' A/V without a gap is
  their own jitter buffer's;
- distinct: share of frames that differ from the one before (the moving
  picture changes every frame it has, 15 fps of 30); freeze_s: the longest
  time without any visible change;
- worker_mb, chromium_mb, ffmpeg_mb: mean RSS of the worker (Python, Xvfb,
  PulseAudio) and of Chromium's and ffmpeg's processes; cores: CPU of the
  whole tree;
- hls_ms: when each HLS segment was finished (its file's time) minus where
  its EXT-X-PROGRAM-DATE-TIME says it ends, against the first window's: the
  HLS clock drifting from the wall clock.

And once: whether the file seeks to every minute (a frame decodes there).
Targets (issue 22): offset at the end within 20 ms of the start; RSS after
the first window grows at most 5 %; no second without a new frame; HLS time
within 100 ms of the wall clock.

    .venv/bin/python bench/soak.py [--minutes 120] [--window 10] [--preset 720p]

Needs `make livekit-tools`. Prints a table and writes bench/results/soak.json
(or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import numpy as np  # noqa: E402
from outputs import record  # noqa: E402
from record import proc_table  # noqa: E402

from compositor import analysis  # noqa: E402
from compositor.protocol import grab_figures  # noqa: E402
from tools.peers.livekit import (  # noqa: E402
    BIN,
    WHY_MISSING,
    LiveKitServer,
    clock_residuals,
    make_clip,
    make_marker_clip,
)
from tools.peers.receivers import NginxRtmp  # noqa: E402

ROOM = "soak"
PAGE = os.sysconf("SC_PAGE_SIZE")
# Each window: bob is there from 10 % to 90 % of it, dave shares a screen from 40 % to 70 %.
SCHEDULE = [(0.1, "bob", "join"), (0.4, "dave", "share"), (0.7, "dave", "unshare"), (0.9, "bob", "leave")]
# Analysed a minute at a time (at most): a window's frames at once would need gigabytes.
CHUNK_S = 60.0
GRAY = (160, 90)
BOB_TONE = 450
# A marker's flash and click are never this far apart: a pair farther apart is a layout change taken for a flash.
STRAY_S = 0.15


def make_mover(folder: Path, seconds: int) -> Path:
    """A moving picture, VP8 320x240 at 15 fps: every frame differs from the one before, and the frame's mean
    brightness stays the same (a black square crossing grey), so the sync flashes stand out."""
    clip = folder / f"mover-{seconds}.ivf"
    if not clip.exists():
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                        f"color=c=gray:s=320x240:r=15:d={seconds}[bg];color=c=black:s=40x40:r=15[box];"
                        "[bg][box]overlay=x='mod(t*97,280)':y='mod(t*61,200)':shortest=1", "-c:v", "libvpx",
                        "-deadline", "realtime",
                        "-cpu-used", "8", "-b:v", "300k", "-g", "15", "-auto-alt-ref", "0", "-y", str(clip)],
                       check=True)
    return clip


class Sampler(threading.Thread):
    """Every few seconds: RSS (MB) and CPU seconds of the worker's tree, by group, at a wall time."""

    def __init__(self, root: int, every_s: float = 5.0):
        super().__init__(daemon=True)
        self.root, self.every_s = root, every_s
        self.samples: list[dict] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            self.samples.append(self.sample())

    def sample(self) -> dict:
        table = proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        tree, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo += children.get(pid, [])
        out = {"t": time.time(), "cpu": sum(table[p][2] for p in tree if p in table),
               "worker_mb": 0.0, "chromium_mb": 0.0, "ffmpeg_mb": 0.0, "worker_parts_mb": {}}
        for pid in tree:
            group = {"chromium": "chromium_mb", "ffmpeg": "ffmpeg_mb"}.get(
                next((g for g in ("chromium", "ffmpeg") if g in table.get(pid, (0, ""))[1].lower()), ""),
                "worker_mb")
            rss = _rss_mb(pid)
            out[group] += rss
            if group == "worker_mb":  # which of the worker's processes grows
                name = table.get(pid, (0, "?"))[1]
                out["worker_parts_mb"][name] = out["worker_parts_mb"].get(name, 0.0) + rss
        return out


def _rss_mb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2 ** 20
    except (OSError, IndexError):
        return 0.0


def run_room(server: LiveKitServer, clips: dict, seconds: float, window_s: float, stop: threading.Event,
             log: list) -> None:
    """Play the schedule in the room until `stop`: who joins, leaves and shares, when (wall time)."""
    bob, share = clips["bob"], clips["share"]
    pubs: dict[str, object] = {}
    start = time.time()
    for k in range(int(np.ceil(seconds / window_s))):
        for frac, who, what in SCHEDULE:
            at = start + (k + frac) * window_s
            if stop.wait(max(at - time.time(), 0)):
                break
            if what in ("join", "share"):
                files = (bob.video, bob.audio) if who == "bob" else (share.video,)
                pubs[who] = server.publish(ROOM, who, *files, source="screen_share" if what == "share" else "")
            else:
                pubs.pop(who).stop()
            log.append({"t": time.time(), "who": who, "what": what})
        if stop.is_set():
            break
    for pub in pubs.values():
        pub.stop()


def chunk(path: Path, start: float, length: float, out: Path) -> Path:
    """`length` seconds of the file from `start`, decoded from there (exact, not from a keyframe)."""
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-ss", f"{start:.3f}", "-i", str(path),
                    "-t", f"{length:.3f}", "-vf", f"scale={GRAY[0]}:{GRAY[1]}", "-c:v", "ffv1", "-c:a", "pcm_s16le",
                    "-y", str(out)], check=True)
    return out


def analyse_chunk(path: Path, start: float, length: float, tmp: Path) -> dict:
    """A chunk's markers (file time of the flash, offset), gaps in bob's tone, changes and freezes."""
    part = chunk(path, start, length, tmp / f"chunk-{start:.0f}.mkv")
    samples = analysis.audio_samples(part)
    markers = [(start + f, offset) for f, offset in analysis.marker_pairs(part, samples)]
    frames = analysis.gray_frames(part, GRAY).astype(np.int16)
    times = analysis.frame_times(part)[: len(frames)]
    part.unlink()
    changed = (np.abs(np.diff(frames, axis=0)) > 24).sum(axis=(1, 2)) >= 8
    change_times = [float(times[0])] + [float(t) for t, c in zip(times[1:], changed) if c] + [float(times[-1])]
    return {"markers": markers, "gaps": len(analysis.tone_gaps(samples, BOB_TONE)),
            "frames": len(changed), "distinct": int(changed.sum()),
            "freeze_s": float(np.max(np.diff(change_times))) if len(change_times) > 1 else length}


def hls_clock(playlist: Path) -> list[tuple[float, float]]:
    """(media end of each segment, its finish time minus where its program date time says it ends)."""
    out, pdt, length, media = [], None, 0.0, 0.0
    for line in playlist.read_text().splitlines():
        if line.startswith("#EXT-X-PROGRAM-DATE-TIME:"):
            pdt = datetime.fromisoformat(line.split(":", 1)[1].replace("Z", "+00:00")).timestamp()
        elif line.startswith("#EXTINF:"):
            length = float(line[8:].split(",")[0])
        elif line and not line.startswith("#"):
            media += length
            segment = playlist.parent / line.strip()
            if pdt is not None and segment.exists():
                out.append((media, segment.stat().st_mtime - (pdt + length)))
            pdt = None
    return out


def seeks(path: Path, duration: float) -> list[float]:
    """The minutes (s) where no frame decodes."""
    bad = []
    for t in np.arange(0.0, duration - 1, 60.0):
        out = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-ss", f"{t:.1f}", "-i", str(path),
                              "-frames:v", "1", "-f", "null", "-"], capture_output=True)
        if out.returncode != 0:
            bad.append(float(t))
    return bad


def summarise(args, run: dict, chunks: list[dict], playlist: Path, samples: list[dict], wall0: float) -> dict:
    """The windows' figures and the run's, with the targets met or not."""
    window_s, windows = args.window * 60, []
    hls = hls_clock(playlist)
    markers = [m for c in chunks for m in c["markers"] if abs(m[1]) <= STRAY_S]
    # The publisher flashes once a second of its wall clock (plus its steps): in a file whose clock keeps to the
    # wall's, each flash lies where the publisher put it, counted from the first one.
    flashes = [f for f, _ in markers]
    clock = list(zip(flashes, clock_residuals(flashes)))
    # (A last window of a few frames past the asked length is not one.)
    for k in range(max(int(np.ceil((run["media"] - 1) / window_s)), 1)):
        a, b = k * window_s, min((k + 1) * window_s, run["media"])
        mine = [c for c in chunks if a <= c["start"] < b]
        offsets = [o for f, o in markers if a <= f < b]
        here = [r for f, r in clock if a <= f < b]
        ticks = [s for s in samples if wall0 + a <= s["t"] < wall0 + b]
        frames = sum(c["frames"] for c in mine)
        hls_here = [d for m, d in hls if a < m <= b]
        windows.append({
            "window": f"{a / 60:g}-{round(b / 60, 2):g} min",
            "av_ms": _ms(np.mean(offsets)) if offsets else None,
            "av_worst_ms": _ms(max(offsets, key=abs)) if offsets else None,
            "markers": len(offsets),
            "stray": sum(abs(o) > STRAY_S for c in mine for _, o in c["markers"]),
            "clock_ms": _ms(np.mean(here)) if here else None,
            "gaps": sum(c["gaps"] for c in mine),
            "distinct": round(sum(c["distinct"] for c in mine) / frames, 3) if frames else None,
            "freeze_s": round(max((c["freeze_s"] for c in mine), default=0.0), 2),
            **{g: round(float(np.mean([s[g] for s in ticks])), 1) if ticks else None
               for g in ("worker_mb", "chromium_mb", "ffmpeg_mb")},
            "worker_parts_mb": {name: round(float(np.mean([s["worker_parts_mb"].get(name, 0.0) for s in ticks])), 1)
                                for name in (ticks[-1]["worker_parts_mb"] if ticks else {})},
            "cores": round((ticks[-1]["cpu"] - ticks[0]["cpu"]) / (ticks[-1]["t"] - ticks[0]["t"]), 3)
            if len(ticks) > 1 else None,
            "hls_ms": _ms(np.mean(hls_here)) if hls_here else None,
        })
    return {"windows": windows, "targets": targets(windows), "seek_failures": seeks(run["file"], run["media"]),
            "media_s": round(run["media"], 1), "preset": args.preset, "room": run["room_log"]}


def targets(windows: list[dict]) -> dict:
    """Issue 22's targets, each as (figure, met)."""
    def drift(key: str) -> float | None:
        vals = [w[key] for w in windows if w[key] is not None]
        return round(vals[-1] - vals[0], 1) if len(vals) > 1 else None

    rss = [(w["worker_mb"] or 0) + (w["chromium_mb"] or 0) + (w["ffmpeg_mb"] or 0) for w in windows]
    growth = round((max(rss[1:]) / rss[1] - 1) * 100, 1) if len(rss) > 2 and rss[1] else None
    av, hls = drift("av_ms"), [w["hls_ms"] for w in windows if w["hls_ms"] is not None]
    hls_drift = round(max(abs(h - hls[0]) for h in hls), 1) if hls else None
    freeze = max(w["freeze_s"] for w in windows) if windows else None
    return {"av_drift_ms": (av, av is not None and abs(av) <= 20),
            "rss_growth_pct_after_first_window": (growth, growth is not None and growth <= 5),
            "longest_freeze_s": (freeze, freeze is not None and freeze < 1),
            "hls_drift_ms": (hls_drift, hls_drift is not None and hls_drift <= 100)}


def _ms(seconds: float) -> float:
    return round(float(seconds) * 1000, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=120)
    parser.add_argument("--window", type=float, default=10, help="minutes a line of the table covers")
    parser.add_argument("--preset", default="720p")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/soak.json")
    parser.add_argument("--keep", type=Path, help="copy the recording and its HLS here")
    args = parser.parse_args()
    if not (BIN / "livekit-server").exists():
        raise SystemExit(WHY_MISSING)
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp_name:
        tmp = Path(tmp_name)
        markers = make_marker_clip(tmp / "clips", seconds=int(seconds) + 60, stepped=True)
        mover = make_mover(tmp / "clips", int(seconds) + 60)
        clips = {"bob": make_clip(tmp / "clips", "#3cb44b", BOB_TONE, seconds=int(seconds) + 60),
                 "share": make_clip(tmp / "clips", "#f58231", 650, seconds=int(seconds) + 60, size="640x360")}
        server, nginx = LiveKitServer(tmp / "lk"), NginxRtmp(tmp / "nginx")
        stop, room_log = threading.Event(), []
        try:
            server.publish(ROOM, "markers", markers.video, markers.audio, fps=markers.fps)
            server.publish(ROOM, "mover", mover)
            server.wait_published(ROOM, {"markers": 2, "mover": 1})
            hls = tmp / "hls"
            hls.mkdir()
            room = threading.Thread(target=run_room, args=(server, clips, seconds, args.window * 60, stop,
                                                           room_log), daemon=True)
            sampler: list[Sampler] = []
            active_at: list[float] = []
            minutes: list[float] = []

            grabs: dict = {}

            def on_event(event: dict) -> None:
                if event["type"] == "result":
                    grabs.update(grab_figures(event.get("timings")))
                if event["type"] == "status" and event["status"] == "ACTIVE" and not sampler:
                    active_at.append(time.time())
                    room.start()
                    sampler.append(Sampler(_worker_pid()))
                    sampler[0].start()
                if event["type"] == "progress" and event["elapsed"] // 60 > len(minutes):
                    minutes.append(event["elapsed"])
                    print(f"  {len(minutes)} min recorded", file=sys.stderr, flush=True)

            out = tmp / "soak.mp4"
            # A grid keeps the markers' tile large (half the frame) but while a screen is shared.
            record(["--room", "livekit", "--room-name", ROOM, "--preset", args.preset, "--layout", "grid",
                          "--duration", str(seconds), "--segments", str(hls / "seg"),
                          "--stream", nginx.url("live", "soak")], out, on_event=on_event, env=server.env)
            stop.set()
            samples = sampler[0].samples if sampler else []
            if sampler:
                sampler[0].done.set()
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                subprocess.run(["cp", "-r", str(out), str(hls), str(args.keep)], check=True)
            media = analysis.facts(out).duration
            step = min(CHUNK_S, args.window * 60)
            starts = [float(t) for t in np.arange(0.0, media, step) if media - t > 2]
            # Two at a time (the recording is over: nothing left to disturb), or a 2-hour file takes ~50 minutes.
            with ThreadPoolExecutor(2) as pool:
                chunks = [{"start": t, **c} for t, c in zip(starts, pool.map(
                    lambda t: analyse_chunk(out, t, min(step, media - t), tmp), starts))]
            wall0 = active_at[0] if active_at else time.time()
            result = summarise(args, {"media": media, "file": out, "room_log": [
                {**e, "t": round(e["t"] - wall0, 1)} for e in room_log]}, chunks,
                next(hls.glob("*.m3u8")), samples, wall0)
            result["grabs"] = grabs
        finally:
            stop.set()
            server.close()
            nginx.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print_table(result)
    return 0


def _worker_pid() -> int:
    """The `compositor record` child of this process (the worker whose tree is sampled)."""
    for pid, (ppid, name, _) in proc_table().items():
        if ppid == os.getpid() and "python" in name.lower():
            return pid
    return os.getpid()


def print_table(result: dict) -> None:
    keys = ["window", "av_ms", "av_worst_ms", "markers", "stray", "clock_ms", "gaps", "distinct", "freeze_s",
            "worker_mb", "chromium_mb", "ffmpeg_mb", "cores", "hls_ms"]
    print(" ".join(f"{k:>12}" for k in keys))
    for w in result["windows"]:
        print(" ".join(f"{'-' if w[k] is None else w[k]!s:>12}" for k in keys))
    print(f"media {result['media_s']} s ({result['preset']}); seek failures at {result['seek_failures'] or 'none'}")
    print(f"frames against the grabs: {result.get('grabs')}")
    for name, (value, met) in result["targets"].items():
        print(f"  {name}: {value} {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
