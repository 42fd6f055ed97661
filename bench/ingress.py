"""Benchmark of RTMP ingress: what a 720p30 push costs, how soon a subscriber sees it, and A/V sync in the room.

- cores: ffmpeg pushes a 720p30 H.264 + AAC test pattern (with a white flash and a 3 kHz click once a second)
  to `compositor serve`'s RTMP ingest; the ingress publishes it into a livekit-server on 127.0.0.1 as LiveKit's
  default preset (720p, 3 simulcast layers). CPU cores of the ingress worker's process tree while it publishes
  (LiveKit Ingress budgets 2 per transcoding session; the target is 0.5).
- first frame: from the push's start to the first video frame a subscriber in the room receives (target 1.5 s).
- A/V offset (target 40 ms): between each flash and its click as a subscriber in the room receives them (what the
  ingress delivers), and in our own egress's recording of the room (480p grid; that adds the recorder's own).

    .venv/bin/python bench/ingress.py [--seconds 20]

Needs `make livekit-tools` (and nginx with the RTMP module). Prints a table and writes
bench/results/ingress.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from outputs import record  # noqa: E402
from record import classify, proc_table  # noqa: E402

from compositor import analysis  # noqa: E402
from tools.peers.livekit import API_KEY, API_SECRET, BIN, WHY_MISSING, LiveKitServer  # noqa: E402
from tools.peers.receivers import free_port  # noqa: E402

KEY = "bench-key"
ROOM = "ingress-bench"
# A moving pattern, a white flash for 100 ms each second; a 3 kHz click (analysis.CLICK_HZ) at the same instants.
VIDEO = "testsrc2=s=1280x720:r=30,drawbox=c=white:t=fill:enable='lt(mod(t\\,1)\\,0.1)'"
AUDIO = "aevalsrc='if(lt(mod(t\\,1)\\,0.03)\\,0.8*sin(2*PI*3000*t)\\,0)':s=48000:c=stereo"


class Serve:
    """`compositor serve` with RTMP ingest on free ports of 127.0.0.1, publishing into `server`'s rooms."""

    def __init__(self, folder: Path, server: LiveKitServer, verbose: bool = False):
        self.rtmp_port = free_port()
        env = {**os.environ, "COMPOSITOR_LIVEKIT_URL": server.http_url, "COMPOSITOR_LIVEKIT_API_KEY": API_KEY,
               "COMPOSITOR_LIVEKIT_API_SECRET": API_SECRET, "COMPOSITOR_INGRESS_RTMP_PORT": str(self.rtmp_port),
               "COMPOSITOR_INGRESS_RTMP_HOST": "127.0.0.1"}
        self.log = open(folder / "serve.log", "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "compositor", "serve", "--port", "0", "--data-dir",
                                      str(folder / "data"), "--api-key", KEY, "--allow-host", "127.0.0.1",
                                      *(["-v"] if verbose else [])],
                                     cwd=REPO, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            raise SystemExit(f"serve did not start: {line} (see {folder / 'serve.log'})")
        self.base = line.split("listening on ")[1].split()[0]
        deadline = time.monotonic() + 30
        while self.call("GET", "/readyz")["ingress"]["warm"] < 1:  # as a running node has it
            if time.monotonic() > deadline:
                raise SystemExit("no warm ingress worker came up")
            time.sleep(0.2)

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode() if body else None,
                                     method=method, headers={"Authorization": f"Bearer {KEY}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


async def watch(server: LiveKitServer, start_push, seconds: float, measure) -> dict:
    """Join the room as a subscriber, start the push, time the first video frame received, then for `seconds`
    note when each flash and click arrives (while `measure` runs, in a thread) and pair them up."""
    import numpy as np
    from livekit import api, rtc

    token = (api.AccessToken(API_KEY, API_SECRET).with_identity("viewer")
             .with_grants(api.VideoGrants(room_join=True, room=ROOM, can_publish=False)).to_jwt())
    room = rtc.Room()
    seen = asyncio.get_running_loop().create_future()
    flashes: list[float] = []
    clicks: list[float] = []

    async def video(track: rtc.Track) -> None:
        bright = False
        async for event in rtc.VideoStream(track, format=rtc.VideoBufferType.I420):
            frame = event.frame
            if not seen.done():
                seen.set_result(time.monotonic())
            luma = np.frombuffer(frame.data, np.uint8)[: frame.width * frame.height].mean()
            if luma > 200 and not bright:
                flashes.append(time.monotonic())
            bright = luma > 200

    async def audio(track: rtc.Track) -> None:
        loud = False
        async for event in rtc.AudioStream(track, sample_rate=48000, num_channels=1):
            samples = np.frombuffer(event.frame.data, np.int16) / 32768
            n = np.arange(len(samples))
            level = abs(np.sum(samples * np.exp(-2j * np.pi * analysis.CLICK_HZ * n / 48000))) * 2 / len(samples)
            if level > 0.1 and not loud:
                clicks.append(time.monotonic())
            loud = level > 0.1

    tasks = []

    @room.on("track_subscribed")
    def on_track(track, *_):
        tasks.append(asyncio.ensure_future(video(track) if track.kind == rtc.TrackKind.KIND_VIDEO
                                           else audio(track)))

    await room.connect(server.url, token)
    try:
        started = time.monotonic()
        pusher = start_push()
        first = round(await asyncio.wait_for(seen, 30) - started, 3)
        await asyncio.sleep(3)  # past its start-up
        cores = await asyncio.to_thread(measure, seconds)
    finally:
        await room.disconnect()
        for task in tasks:
            task.cancel()
    offsets = []
    for flash in flashes:
        near = [c for c in clicks if abs(c - flash) < 0.4]
        if near:
            offsets.append(min(near, key=lambda c: abs(c - flash)) - flash)
    return {"first_frame": first, "pusher": pusher, "cores": cores, "offsets": offsets}


def _offsets_ms(signed: list[float]) -> dict:
    """Median and largest A/V offset (ms), the signed median (+: the sound is late) and each marker's, in order."""
    if not signed:
        return {"median": None, "median_signed": None, "max": None, "markers": 0, "each": []}
    absolute = [abs(o) for o in signed]
    return {"median": round(statistics.median(absolute) * 1000, 1),
            "median_signed": round(statistics.median(signed) * 1000, 1),
            "max": round(max(absolute) * 1000, 1), "markers": len(signed),
            "each": [round(o * 1000, 1) for o in signed]}


def ingress_workers(serve: Serve) -> set[int]:
    """The ingress workers `serve` runs (warm ones and those with a session)."""
    out = subprocess.run(["pgrep", "-P", str(serve.proc.pid), "-f", "compositor ingress"], capture_output=True,
                         text=True).stdout
    return {int(p) for p in out.split()}


def worker_cores(pids: set[int], seconds: float) -> float:
    """Cores of the ingress worker's process tree over `seconds`."""
    def used() -> float:
        table = proc_table()
        return sum(sum(classify(p, table).values()) for p in pids)

    before = used()
    time.sleep(seconds)
    after = used()
    return round((after - before) / seconds, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("-v", "--verbose", action="store_true", help="print the service's ingress log")
    args = parser.parse_args()
    if not (BIN / "livekit-server").exists():
        sys.exit(WHY_MISSING)
    with tempfile.TemporaryDirectory(prefix="bench-ingress-") as tmp:
        work = Path(tmp)
        server = LiveKitServer(work / "livekit")
        serve = Serve(work, server, args.verbose)
        pusher = None
        try:
            info = serve.call("POST", "/v1/ingress", {"inputType": "rtmp", "roomName": ROOM,
                                                      "participantIdentity": "encoder"})
            url = f"{info['url']}/{info['streamKey']}"
            warm = ingress_workers(serve)  # the session runs on the warm one (another comes up for the next)

            def start_push() -> subprocess.Popen:
                return subprocess.Popen(
                    ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i", VIDEO, "-f", "lavfi",
                     "-i", AUDIO, "-t", str(args.seconds * 3 + 30), "-c:v", "libx264", "-preset", "veryfast",
                     "-tune", "zerolatency", "-g", "60", "-b:v", "2500k", "-pix_fmt", "yuv420p", "-c:a", "aac",
                     "-b:a", "128k", "-f", "flv", url], stdout=subprocess.DEVNULL)

            def measure(seconds: float) -> float:
                session = warm & ingress_workers(serve)
                if len(session) != 1:
                    raise SystemExit(f"cannot tell the session's worker: warm were {warm}, now "
                                     f"{ingress_workers(serve)}")
                return worker_cores(session, seconds)

            watched = asyncio.run(watch(server, start_push, args.seconds, measure))
            pusher, cores, first_frame = watched["pusher"], watched["cores"], watched["first_frame"]
            out = work / "room.mp4"
            record(["--room", "livekit", "--room-name", ROOM, "--layout", "grid", "--preset", "480p"], out,
                   stop_after=args.seconds, env=server.env)
            recorded = analysis.av_offsets(out)  # audio minus video: positive, the sound is late
            ingress = serve.call("GET", f"/v1/ingress/{info['ingressId']}")
        finally:
            if pusher:
                pusher.kill()
                pusher.wait()
            serve.close()
            server.close()
            if args.verbose:
                print("".join(line for line in (work / "serve.log").read_text().splitlines(True)
                              if "ingress" in line))
    results = {"cores_per_ingress": cores, "push_to_first_frame_s": first_frame,
               "av_offset_ms": {"at_a_subscriber": _offsets_ms(watched["offsets"]),
                                "in_our_recording": _offsets_ms(recorded)},
               "tracks": ingress["state"]["tracks"], "input": ingress["state"]["video"]}
    path = REPO / "bench" / "results" / "ingress.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"RTMP ingress, 720p30 push, LiveKit's default preset (720p, 3 layers), {args.seconds:g} s")
    print(f"cores per ingress:        {cores}  (LiveKit budgets 2; target <= 0.5)")
    print(f"push -> first frame seen: {first_frame} s  (target <= 1.5 s)")
    for where, av in results["av_offset_ms"].items():
        print(f"A/V offset {where.replace('_', ' ')}: median {av['median']} ms (signed {av['median_signed']} ms, "
              f"+: sound late), max {av['max']} ms over {av['markers']} markers  (target <= 40 ms)")
    print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
