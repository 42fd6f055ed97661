"""Benchmark of live outputs: what a destination costs, how late it shows, how fast it comes back.

- cores: a 720p30 room (four camera clips) recorded to a file with 0, 1 and
  3 RTMP destinations (nginx-rtmp on 127.0.0.1); extra cores per destination
  (one encode feeds them all, so the target is ~0).
- latency: glass to glass, from the page's sync flash (room time k s after
  START_RECORDING) to the decoded frame at an RTMP receiver (ffmpeg
  listening, decoding as frames arrive); target < 1 s.
- recovery: nginx is killed mid-stream and started again on the same port;
  the time from it listening again to the destination ACTIVE again.

    .venv/bin/python bench/outputs.py [--seconds 20]

Prints a table and writes bench/results/outputs.json.
"""

from __future__ import annotations

import argparse
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
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import numpy as np  # noqa: E402
from record import CpuMarks, make_clips, participants  # noqa: E402

from tools.peers.receivers import NginxRtmp, free_port, listening, wait_until  # noqa: E402

GRAY = (64, 36)


def record(args: list[str], out: Path | None, on_event=None, stop_after: float | None = None,
           env: dict | None = None, commands: list[tuple[float, dict]] = ()) -> dict:
    """Run `compositor record`; returns the result event, the events, CPU marks (active -> stop), and when each
    of `commands` (media time, command) went to the worker's stdin."""
    argv = [sys.executable, "-m", "compositor", "record", "--events", "json", *(["-o", str(out)] if out else []),
            *(["--control", "stdin"] if commands else []), *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            stdin=subprocess.PIPE if commands else None, env={**os.environ, **(env or {})})
    cpu = CpuMarks(proc.pid)
    events, media, sent = [], 0.0, []
    for line in proc.stdout:
        event = json.loads(line)
        events.append(event)
        if event["type"] == "status" and event["status"] == "ACTIVE":
            cpu.mark("active")
        if event["type"] == "progress":
            media = event["elapsed"]
            if len(sent) < len(commands) and media >= commands[len(sent)][0]:
                sent.append(time.time())
                proc.stdin.write(json.dumps(commands[len(sent) - 1][1]) + "\n")
                proc.stdin.flush()
            if stop_after and media >= stop_after and "stop" not in cpu.marks:
                cpu.mark("stop")
                proc.send_signal(signal.SIGINT)
        if on_event:
            on_event(event)
    proc.wait()
    result = next((e for e in events if e["type"] == "result"), None)
    if result is None:
        errors = [e for e in events if e['type'] == 'error']
        raise SystemExit(f"recording failed: {errors} {proc.stderr.read()[-2000:]}")
    return {"result": result, "events": events, "cpu": cpu, "media": media, "sent": sent}


def cores(folder: Path, people: list[str], nginx: NginxRtmp, seconds: float) -> dict:
    out = {}
    for count in (0, 1, 3):
        urls = [arg for i in range(count) for arg in ("--stream", nginx.url("live", f"cost{count}-{i}"))]
        run = record(["--preset", "720p", "--layout", "grid", *people, *urls], folder / f"cost{count}.mp4",
                     stop_after=seconds)
        start, stop = run["cpu"].marks["active"], run["cpu"].marks["stop"]
        used = {g: (stop.get(g, 0) - start.get(g, 0)) / seconds for g in stop}
        out[count] = round(sum(used.values()), 3)
        print(f"  {count} destinations: {out[count]} cores", file=sys.stderr)
    extra = [(out[n] - out[0]) / n for n in (1, 3)]
    return {"total_cores": out, "extra_cores_per_destination": [round(x, 3) for x in extra]}


class FlashWatcher:
    """An RTMP receiver that decodes as frames arrive and notes when each white flash shows."""

    def __init__(self, port: int):
        self.onsets: list[float] = []
        self.proc = subprocess.Popen(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-fflags", "nobuffer", "-flags", "low_delay",
             "-probesize", "32", "-analyzeduration", "0", "-listen", "1", "-i", f"rtmp://127.0.0.1:{port}/live/lat",
             "-vf", f"scale={GRAY[0]}:{GRAY[1]},format=gray", "-f", "rawvideo", "pipe:1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        wait_until(lambda: listening(port), 10, "ffmpeg receiver")
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        size = GRAY[0] * GRAY[1]
        white = False
        while True:
            frame = self.proc.stdout.read(size)
            if len(frame) < size:
                return
            now = time.time()
            bright = np.frombuffer(frame, np.uint8).mean() > 200
            if bright and not white:
                self.onsets.append(now)
            white = bright

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def latency(folder: Path, people: list[str], seconds: float) -> dict:
    port = free_port()
    watcher = FlashWatcher(port)
    run = record(["--preset", "720p", "--layout", "grid", "--sync-markers", *people,
                  "--stream", f"rtmp://127.0.0.1:{port}/live/lat"], folder / "latency.mp4", stop_after=seconds)
    watcher.close()
    start = run["result"]["timings"]["start_recording"]
    # Flash k shows at room time k s; room time 0 is START_RECORDING.
    delays = [onset - (start + round(onset - start)) for onset in watcher.onsets]
    delays = [d for d in delays if 0 < d < 5]
    return {"flashes": len(delays), "mean_s": round(float(np.mean(delays)), 3) if delays else None,
            "max_s": round(float(np.max(delays)), 3) if delays else None,
            "min_s": round(float(np.min(delays)), 3) if delays else None}


def recovery(folder: Path, people: list[str]) -> dict:
    nginx = NginxRtmp(folder / "nginx-recovery")
    port, http_port = nginx.port, nginx.http_port
    back: dict = {}
    state = {"killed": False}

    def on_event(event: dict) -> None:
        if event["type"] != "stream":
            return
        if event["status"] == "ACTIVE" and state["killed"] and "active_again" not in back:
            back["active_again"] = event["time"]
            back["retries"] = event["retries"]

    def outage() -> None:
        time.sleep(6)
        nginx.close()
        state["killed"] = True
        time.sleep(5)
        restarted = NginxRtmp(folder / "nginx-recovery", port=port, http_port=http_port)
        back["listening_again"] = time.time()
        back["server"] = restarted

    threading.Thread(target=outage, daemon=True).start()
    record(["--preset", "720p", "--layout", "grid", *people, "--duration", "24",
            "--stream", nginx.url("live", "recover")], folder / "recovery.mp4", on_event=on_event)
    if "server" in back:
        back.pop("server").close()
    if "active_again" not in back:
        return {"recovered": False}
    return {"recovered": True, "recovery_s": round(back["active_again"] - back["listening_again"], 3),
            "retries": back["retries"], "outage_s": 5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-outputs-") as tmp:
        folder = Path(tmp)
        people = participants(make_clips(folder))
        nginx = NginxRtmp(folder / "nginx")
        try:
            print("cores per destination ...", file=sys.stderr, flush=True)
            results = {"cores": cores(folder, people, nginx, opts.seconds)}
        finally:
            nginx.close()
        print("glass-to-glass latency ...", file=sys.stderr, flush=True)
        results["latency"] = latency(folder, people, opts.seconds)
        print("recovery ...", file=sys.stderr, flush=True)
        results["recovery"] = recovery(folder, people)
    c, lat, rec = results["cores"], results["latency"], results["recovery"]
    print("| measure | value |\n|---|---|")
    print(f"| cores, file only / +1 / +3 destinations (720p30) | {c['total_cores'][0]} / {c['total_cores'][1]} / "
          f"{c['total_cores'][3]} |")
    print(f"| extra cores per destination (1, 3) | {c['extra_cores_per_destination'][0]}, "
          f"{c['extra_cores_per_destination'][1]} |")
    print(f"| glass-to-glass (flash -> decoded at receiver) mean / min / max | {lat['mean_s']} / {lat['min_s']} / "
          f"{lat['max_s']} s ({lat['flashes']} flashes) |")
    print(f"| recovery after the server returns | {rec.get('recovery_s')} s ({rec.get('retries')} retries, "
          f"{rec.get('outage_s')} s outage) |")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "outputs.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
