"""Benchmark of `compositor record`: what a recording costs and how right it is.

Four participants with camera-like looping clips (VP8, like a room's
tracks) at 720p30 and 1080p30, and two 720p30 jobs at once (or four:
`--only four-720p`, issue 22's density target). For each run:
cores per media second split by process, distinct frames / expected frames,
ffmpeg dup/drop counts, A/V offset (sync markers), start latency (command ->
START_RECORDING -> first frame) and stop latency (SIGINT -> finalized file).

    .venv/bin/python bench/record.py [--seconds 30] [--only 720p]

Prints a table and writes bench/results/record.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from compositor import analysis  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
#: runs of several 720p jobs at once, and how many
AT_ONCE = {"two-720p": 2, "four-720p": 4}
HUES = [0, 90, 180, 270]


def make_clips(folder: Path, seconds: int = 10) -> list[Path]:
    """Camera-like clips: moving test pictures in four hues, VP8 640x360."""
    clips = []
    for i, hue in enumerate(HUES):
        clip = folder / f"cam{i}.webm"
        if not clip.exists():
            subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=s=640x360:r=30:d={seconds}",
                            "-vf", f"hue=h={hue}", "-c:v", "libvpx", "-b:v", "800k", "-deadline", "good",
                            "-cpu-used", "4", "-y", str(clip)], check=True)
        clips.append(clip)
    return clips


def proc_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (ppid, name, cpu seconds) for every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return table


def classify(root: int, table) -> dict[str, float]:
    """CPU seconds of root's descendants, grouped by which child of root they hang under."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    groups: dict[str, float] = {"worker": table.get(root, (0, "", 0.0))[2]}

    def walk(pid: int) -> float:
        return table[pid][2] + sum(walk(c) for c in children.get(pid, []))

    for child in children.get(root, []):
        name = table[child][1].lower()
        group = next((g for g in ("chromium", "xvfb", "pulseaudio", "ffmpeg") if g in name), "worker")
        groups[group] = groups.get(group, 0.0) + walk(child)
    return groups


class CpuMarks:
    """CPU seconds of a worker's process tree, by process, at named moments."""

    def __init__(self, root: int):
        self.root = root
        self.marks: dict[str, dict[str, float]] = {}

    def mark(self, name: str) -> None:
        self.marks[name] = dict(classify(self.root, proc_table()))


def run_job(out: Path, args: list[str], seconds: float, results: dict, key: str) -> None:
    """Record until `seconds` of media, SIGINT, and collect every figure."""
    argv = [sys.executable, "-m", "compositor", "record", "--events", "json", "-o", str(out), *args]
    launched = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    sampler = CpuMarks(proc.pid)
    events, last_progress, sigint_at = [], {}, None
    for line in proc.stdout:
        event = json.loads(line)
        events.append(event)
        if event["type"] == "status" and event["status"] == "ACTIVE":
            sampler.mark("active")
        if event["type"] == "progress":
            last_progress = event
            if sigint_at is None and event["elapsed"] >= seconds:
                sampler.mark("stop")
                stop_media = event["elapsed"]
                sigint_at = time.time()
                proc.send_signal(signal.SIGINT)
    proc.wait()
    exited_at = time.time()
    result = next((e for e in events if e["type"] == "result"), None)
    if result is None:
        results[key] = {"error": next((e for e in events if e["type"] == "error"), proc.stderr.read()[-2000:])}
        return
    t = result["timings"]
    start, stop = sampler.marks["active"], sampler.marks["stop"]
    # ACTIVE comes with the first frame, so the media between the marks is
    # what the encoder had written when the stop mark was taken.
    cores = {g: round((stop.get(g, 0) - start.get(g, 0)) / stop_media, 3) for g in stop}
    f = result["file"]
    fps = f.get("fps") or 30
    offsets = analysis.av_offsets(out)
    results[key] = {
        "file": {k: f[k] for k in ("width", "height", "fps", "duration", "size")},
        "cores": {**cores, "total": round(sum(cores.values()), 3)},
        # Marker flashes are identical white frames by design: leave them out.
        "distinct_frames": round(analysis.distinct_frame_ratio(
            out, skip=[(t - 0.04, t + 0.17) for t in analysis.flash_onsets(out)]), 4),
        "frames": len(analysis.frame_times(out)),
        "expected_frames": round(f["duration"] * fps),
        "dup_frames": last_progress.get("dup_frames"),
        "drop_frames": last_progress.get("drop_frames"),
        "speed": last_progress.get("speed"),
        "av_offset_ms": {"mean": round(1000 * sum(offsets) / len(offsets), 1) if offsets else None,
                         "max": round(1000 * max(map(abs, offsets)), 1) if offsets else None,
                         "markers": len(offsets)},
        "start_s": {"to_start_recording": round(t["start_recording"] - launched, 3),
                    "to_first_frame": round(t["first_frame"] - launched, 3)},
        "stop_s": round(t["finalized"] - sigint_at, 3),
        "stop_s_process_exit": round(exited_at - sigint_at, 3),
        # Where the page's frames landed against the grabs (pipeline/grab_clock): the median distance, and the
        # share close enough to show a frame late or early.
        "landing_to_grab_ms": t.get("landing_to_grab_ms"),
        "landings_near_grab": t.get("landings_near_grab"),
        # where in Chromium's tick they landed, and how far from where the grabs were aimed (later is +)
        "landing_phase_ms": t.get("landing_phase_ms"),
        "landing_concentration": t.get("landing_concentration"),
        "landing_shift_ms": t.get("landing_shift_ms"),
        # how long the page's frames waited for the grab that showed them, on average, and how far that moved the
        # sound in the file (MP4)
        "picture_wait_ms": t.get("picture_wait_ms"),
        "sound_shift_ms": t.get("sound_shift_ms"),
        # where they landed, when steady: the next run of the frame is aimed by it (as the service does)
        "landing_ms": result.get("landing_ms"),
    }


def participants(clips: list[Path]) -> list[str]:
    names = ["Ada", "Grace", "Linus", "Margaret"]
    speaks = ["0-8;24-40", "8-16", "16-24", ""]
    args = []
    for name, clip, talk in zip(names, clips, speaks):
        args += ["--participant", f"name={name},video={clip},speaks={talk}"]
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--only", choices=["720p", "1080p", *AT_ONCE], action="append")
    parser.add_argument("--x264-preset", help="override the encoder preset for every run")
    parser.add_argument("--keep", type=Path, help="keep the recordings in this folder")
    parser.add_argument("--runs", type=int, default=1,
                        help="run each this many times; from the second on, aimed by where the last run's frames "
                             "landed (--landing-ms, as the service aims its next job of a frame)")
    parser.add_argument("--unaimed", action="store_true", help="with --runs: never pass --landing-ms")
    opts = parser.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-record-") as tmp:
        folder = opts.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        clips = make_clips(folder)
        common = ["--layout", "grid", "--sync-markers", *participants(clips)]
        if opts.x264_preset:
            common += ["--x264-preset", opts.x264_preset]
        runs = opts.only or ["720p", "1080p", "two-720p"]
        landed: dict[str, float] = {}  # by preset: where the last run's frames landed
        for name, n in itertools.product(runs, range(opts.runs)):
            print(f"running {name} ...", file=sys.stderr, flush=True)
            preset = "720p" if name in AT_ONCE else name
            aim = ["--landing-ms", str(landed[preset])] if preset in landed and not opts.unaimed else []
            label = f"{name}/{n + 1}" if opts.runs > 1 else name
            if name in AT_ONCE:
                keys = [f"{label}#{i + 1}" for i in range(AT_ONCE[name])]
                threads = [threading.Thread(target=run_job, args=(folder / f"{name}-{i}.mp4",
                                                                  ["--preset", preset, *common, *aim],
                                                                  opts.seconds, results, key))
                           for i, key in enumerate(keys)]
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
            else:
                keys = [label]
                run_job(folder / f"{name}.mp4", ["--preset", preset, *common, *aim], opts.seconds, results, label)
            steady = [results[k]["landing_ms"] for k in keys if results[k].get("landing_ms") is not None]
            if steady:
                landed[preset] = steady[0]
    print_table(results)
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "record.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results))


def print_table(results: dict) -> None:
    cols = ["run", "cores", "chromium", "ffmpeg", "xvfb", "pulse", "worker", "distinct", "dup/drop", "speed",
            "A/V mean", "A/V max", "start", "1st frame", "stop", "landing-grab", "near grab", "shift", "wait",
            "sound shift"]
    print(" | ".join(cols))
    for name, r in results.items():
        if "error" in r:
            print(f"{name} | ERROR {r['error']}")
            continue
        c = r["cores"]
        print(" | ".join(str(x) for x in [
            name, c["total"], c.get("chromium"), c.get("ffmpeg"), c.get("xvfb"), c.get("pulseaudio"), c.get("worker"),
            f"{r['distinct_frames']:.1%}", f"{r['dup_frames']}/{r['drop_frames']}", r["speed"],
            f"{r['av_offset_ms']['mean']} ms", f"{r['av_offset_ms']['max']} ms",
            f"{r['start_s']['to_start_recording']} s", f"{r['start_s']['to_first_frame']} s", f"{r['stop_s']} s",
            f"{r['landing_to_grab_ms']} ms", r["landings_near_grab"], f"{r['landing_shift_ms']} ms",
            f"{r['picture_wait_ms']} ms", f"{r['sound_shift_ms']} ms"]))


if __name__ == "__main__":
    main()
