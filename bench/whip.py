"""Benchmark of a WHIP ingress, transcoded and bypassed: what one session costs.

An aiortc publisher (tools/peers/whip.py) sends VP8 video and an Opus tone over WHIP to `compositor serve`,
which publishes it into a livekit-server on 127.0.0.1: once with `bypassTranscoding` (the publisher's pictures
go into the room as they came) and once transcoded (LiveKit's default preset, 3 simulcast layers). For each:
CPU cores of the ingress worker's process tree while it publishes. The publisher encodes in this process too,
so on a small machine it may send less than it is asked for: compare the two figures, not one alone.

    .venv/bin/python bench/whip.py [--seconds 10] [--size 1280x720] [--fps 30]

Needs `make livekit-tools`. Prints a table and writes bench/results/whip.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from ingress import Serve, ingress_workers, worker_cores  # noqa: E402

from tools.peers.livekit import BIN, WHY_MISSING, LiveKitServer  # noqa: E402
from tools.peers.whip import WhipPublisher  # noqa: E402

SETTLE_S = 5  # past the session's start-up and the publisher's first key frames


async def session(serve: Serve, bypass: bool, args) -> dict:
    """One WHIP session: the worker's cores while it publishes, and what the ingress says it carries."""
    info = serve.call("POST", "/v1/ingress", {"inputType": "whip", "roomName": f"whip-bench-{int(bypass)}",
                                             "participantIdentity": "encoder", "bypassTranscoding": bypass})
    warm = ingress_workers(serve)  # the session runs on the warm one
    width, height = (int(x) for x in args.size.split("x"))
    publisher = WhipPublisher(rgb=(200, 60, 120), tone_hz=440.0, video_codec="video/VP8", width=width,
                              height=height, fps=args.fps)
    try:
        location = await publisher.publish(info["url"], info["streamKey"])
        await asyncio.sleep(SETTLE_S)
        session_workers = warm & ingress_workers(serve)
        if len(session_workers) != 1:
            raise SystemExit(f"cannot tell the session's worker: warm were {warm}, now {ingress_workers(serve)}")
        cores = await asyncio.to_thread(worker_cores, session_workers, args.seconds)
        state = serve.call("GET", f"/v1/ingress/{info['ingressId']}")["state"]
        await publisher.stop(location, info["streamKey"])
    finally:
        await publisher.close()
    return {"cores": cores, "tracks": [t["type"] for t in state["tracks"]], "status": state["status"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--fps", type=int, default=30)
    args = parser.parse_args()
    if not (BIN / "livekit-server").exists():
        sys.exit(WHY_MISSING)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-whip-") as tmp:
        server = LiveKitServer(Path(tmp) / "livekit")
        serve = Serve(Path(tmp), server)
        try:
            for bypass in (True, False):
                results["bypass" if bypass else "transcoded"] = asyncio.run(session(serve, bypass, args))
                time.sleep(2)  # the warm worker for the next session comes up
        finally:
            serve.close()
            server.close()
    path = REPO / "bench" / "results" / "whip.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"WHIP ingress, VP8 {args.size} at {args.fps} fps from an aiortc publisher, {args.seconds:g} s")
    for name, result in results.items():
        print(f"{name:<11} cores of the ingress worker: {result['cores']}  (tracks {', '.join(result['tracks'])})")
    print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
