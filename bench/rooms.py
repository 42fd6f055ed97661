"""Benchmark of recording a real LiveKit room: what it costs, and how fast a layout change shows.

- cores: a 720p30 grid of a room with four publishers (camera clips in four
  colours, each with its tone) on a livekit-server on 127.0.0.1, recorded
  to an MP4; CPU cores per process of the worker's tree, over the media
  recorded. LiveKit Egress budgets 4 cores for one room composite.
- layout switch: mid-recording, `update_layout` (UpdateLayout) from grid to
  single-speaker; the time until the worker answers (the page has painted
  it: the display shows it, and the capture takes it within a frame), and
  until the recording shows it (first frame whose right half is no longer
  the grid's second tile), an upper bound: the file's clock starts at its
  first captured frame, known only to lie between START_RECORDING and the
  encoder's first report.

    .venv/bin/python bench/rooms.py [--seconds 20]

Needs `make livekit-tools`. Prints a table and writes bench/results/rooms.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from outputs import record  # noqa: E402

from compositor import analysis  # noqa: E402
from tools.peers.livekit import BIN, WHY_MISSING, LiveKitServer, make_clip  # noqa: E402

PEOPLE = [("alice", "#e6194b", 350), ("bob", "#3cb44b", 450), ("carol", "#4363d8", 550), ("dave", "#f58231", 650)]


def record_room(server: LiveKitServer, out: Path, seconds: float, switch_at: float) -> dict:
    """Record the room at 720p30 for `seconds` of media, switching the layout at `switch_at`."""
    switch = {"op": "update_layout", "id": 1, "layout": "single-speaker"}
    run = record(["--room", "livekit", "--room-name", "bench", "--layout", "grid", "--preset", "720p"], out,
                 stop_after=seconds, env=server.env, commands=[(switch_at, switch)])
    result, (sent,) = run["result"], run["sent"]
    reply = next(e for e in run["events"] if e["type"] == "command" and e.get("id") == 1)
    start, stop = run["cpu"].marks["active"], run["cpu"].marks["stop"]
    cores = {g: round((stop.get(g, 0) - start.get(g, 0)) / seconds, 3) for g in stop}
    # The file's time 0 is its first captured frame: after START_RECORDING, and before the encoder first
    # reported a frame. Placing the command by the later instant gives an upper bound of the delay.
    shown = shown_at(out, sent - result["timings"]["start_recording"])
    return {"cores": {**cores, "total": round(sum(cores.values()), 3)},
            "layout_switch_s": {"answered": round(reply["at"] - sent, 3),
                                "in_recording_at_most": None if shown is None else
                                round(shown - (sent - result["timings"]["first_frame"]), 3)}}


def shown_at(path: Path, near: float) -> float | None:
    """File time of the first frame from `near` - 1 s on whose right half stopped showing bob (the grid's
    second tile)."""
    times = analysis.frame_times(path)
    for t in times[(times >= near - 1) & (times <= near + 3)]:
        rgb = analysis.region_color(analysis.frame_at(path, float(t)), 0.6, 0.3, 0.1, 0.1)
        if analysis.color_distance(rgb, PEOPLE[1][1]) > 60:
            return float(t)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    if not (BIN / "livekit-server").exists():
        sys.exit(WHY_MISSING)
    with tempfile.TemporaryDirectory(prefix="bench-livekit-") as tmp:
        work = Path(tmp)
        server = LiveKitServer(work / "livekit")
        try:
            for identity, color, tone in PEOPLE:
                clip = make_clip(work / "clips", color, tone, seconds=int(args.seconds) + 30, size="640x360")
                server.publish("bench", identity, clip.video, clip.audio)
                server.wait_published("bench", {identity: 2})  # join order: alice, bob, carol, dave
            results = record_room(server, work / "room.mp4", args.seconds, args.seconds / 2)
        finally:
            server.close()
    out = REPO / "bench" / "results" / "rooms.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"720p30 grid of a 4-publisher LiveKit room, {args.seconds:g} s")
    print("cores:", "  ".join(f"{k} {v}" for k, v in results["cores"].items()), " (LiveKit Egress budgets 4)")
    switch = results["layout_switch_s"]
    print(f"layout switch: answered (painted) after {switch['answered']} s, in the recording after at most "
          f"{switch['in_recording_at_most']} s")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
