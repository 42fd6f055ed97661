"""Benchmark of RTMP ingress: what a 720p30 push costs, how soon a subscriber sees it, and A/V sync in the room.

- cores: ffmpeg pushes a 720p30 H.264 + AAC test pattern (with a white flash and a 3 kHz click once a second)
  to `compositor serve`'s RTMP ingest; the ingress publishes it into a livekit-server on 127.0.0.1 as LiveKit's
  default preset (720p, 3 simulcast layers). CPU cores of the ingress worker's process tree while it publishes
  (LiveKit Ingress budgets 2 per transcoding session; the target is 0.5).
- first frame: from the push's start to the first video frame a subscriber in the room receives (target 1.5 s).
- A/V offset: our own egress records the room; the offset between each flash and its click in that recording
  (target 40 ms).

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


async def first_frame_after(server: LiveKitServer, start_push) -> tuple[float, subprocess.Popen]:
    """Join the room as a subscriber, start the push, and time the first video frame received."""
    from livekit import api, rtc

    token = (api.AccessToken(API_KEY, API_SECRET).with_identity("viewer")
             .with_grants(api.VideoGrants(room_join=True, room=ROOM, can_publish=False)).to_jwt())
    room = rtc.Room()
    seen = asyncio.get_running_loop().create_future()

    async def watch(track: rtc.Track) -> None:
        async for _ in rtc.VideoStream(track):
            if not seen.done():
                seen.set_result(time.monotonic())
            return

    @room.on("track_subscribed")
    def on_track(track, *_):
        if track.kind == rtc.TrackKind.KIND_VIDEO:
            asyncio.ensure_future(watch(track))

    await room.connect(server.url, token)
    try:
        started = time.monotonic()
        pusher = start_push()
        return round(await asyncio.wait_for(seen, 30) - started, 3), pusher
    finally:
        await room.disconnect()


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

            first_frame, pusher = asyncio.run(first_frame_after(server, start_push))
            time.sleep(3)  # past its start-up
            session = warm & ingress_workers(serve)
            if len(session) != 1:
                raise SystemExit(f"cannot tell the session's worker: warm were {warm}, now {ingress_workers(serve)}")
            cores = worker_cores(session, args.seconds)
            out = work / "room.mp4"
            record(["--room", "livekit", "--room-name", ROOM, "--layout", "grid", "--preset", "720p"], out,
                   stop_after=args.seconds, env=server.env)
            signed = analysis.av_offsets(out)  # audio minus video: positive, the sound is late
            offsets = [abs(o) for o in signed]
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
               "av_offset_ms": {"median": round(statistics.median(offsets) * 1000, 1) if offsets else None,
                                "median_signed": round(statistics.median(signed) * 1000, 1) if signed else None,
                                "max": round(max(offsets) * 1000, 1) if offsets else None, "markers": len(offsets)},
               "tracks": ingress["state"]["tracks"], "input": ingress["state"]["video"]}
    path = REPO / "bench" / "results" / "ingress.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"RTMP ingress, 720p30 push, LiveKit's default preset (720p, 3 layers), {args.seconds:g} s")
    print(f"cores per ingress:        {cores}  (LiveKit budgets 2; target <= 0.5)")
    print(f"push -> first frame seen: {first_frame} s  (target <= 1.5 s)")
    av = results["av_offset_ms"]
    print(f"A/V offset in our recording of the room: median {av['median']} ms (signed {av['median_signed']} ms: "
          f"+ is sound late), max {av['max']} ms over {av['markers']} markers  (target <= 40 ms)")
    print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
