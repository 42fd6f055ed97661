"""Benchmark of the egress service through its HTTP API.

- request -> first frame: POST /v1/egress/start until the egress's first
  frame (its `startedAt`, stamped by the worker), cold (a fresh worker each
  time) and warm (a service keeping one warm worker of the request's frame);
- GET one egress and GET a page of the list, with 10,000 egresses stored:
  requests per second and latency percentiles, 8 clients at once.

    .venv/bin/python bench/api.py [--starts 3] [--seconds 5]

Prints a table and writes bench/results/api.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from compositor.service.seams import EgressRecord  # noqa: E402
from compositor.service.store import SqliteStore  # noqa: E402

KEY = "bench-key"
STORED = 10_000


async def seed(data_dir: Path) -> list[str]:
    store = SqliteStore(data_dir / "compositor.db")
    ids = []
    now = time.time()
    for i in range(STORED):
        rec = EgressRecord(id=f"EG_bench{i:07d}", room_name=f"room-{i % 200}", mode="record", layout="grid",
                           quality="720p", request={"file": {"filepath": f"/x/{i}.mp4", "file_type": "MP4"}},
                           status="COMPLETE", created_at=now - i, started_at=now - i, ended_at=now - i + 60,
                           file={"location": f"/x/{i}.mp4", "filename": f"{i}.mp4", "size": 1000, "duration": 60.0})
        await store.create(rec)
        ids.append(rec.id)
    await store.close()
    return ids


def start_server(data_dir: Path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "compositor", "serve", "--port", "0", "--data-dir", str(data_dir),
                             "--api-key", KEY], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, **(env or {})})
    line = proc.stdout.readline()
    return proc, line.split("listening on ")[1].split()[0]


async def first_frame_latency(base: str, session: aiohttp.ClientSession) -> float:
    body = {"roomName": "bench", "advanced": {"width": 1280, "height": 720}}
    sent = time.time()
    async with session.post(f"{base}/v1/egress/start", json=body) as resp:
        info = await resp.json()
    while True:
        async with session.get(f"{base}/v1/egress/{info['id']}") as resp:
            info = await resp.json()
        if info["startedAt"]:
            break
        await asyncio.sleep(0.05)
    started = datetime.fromisoformat(info["startedAt"].replace("Z", "+00:00")).timestamp()
    async with session.post(f"{base}/v1/egress/{info['id']}/stop") as resp:
        await resp.read()
    while info["status"] not in ("COMPLETE", "FAILED", "ABORTED"):
        await asyncio.sleep(0.2)
        async with session.get(f"{base}/v1/egress/{info['id']}") as resp:
            info = await resp.json()
    return started - sent


async def warm_first_frames(data: Path, runs: int) -> list[float]:
    """Request -> first frame with one warm worker kept (waiting for it to be ready before each request)."""
    proc, base = start_server(data / "warm", {"COMPOSITOR_WARM_WORKERS": "1", "COMPOSITOR_WARM_SIZE": "1280x720"})
    out = []
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:
            for _ in range(runs):
                while True:
                    async with session.get(f"{base}/readyz") as resp:
                        if (await resp.json())["warm"] >= 1:
                            break
                    await asyncio.sleep(0.2)
                await asyncio.sleep(1.0)  # let the new worker's start-up settle, as an idle service would be
                out.append(await first_frame_latency(base, session))
    finally:
        proc.terminate()
        proc.wait(60)
    return out


def _stats(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 3), "min": round(min(values), 3), "max": round(max(values), 3),
            "runs": len(values)}


async def load(session: aiohttp.ClientSession, make_url, seconds: float, clients: int = 8) -> dict:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def client():
        while time.monotonic() < deadline:
            t = time.perf_counter()
            async with session.get(make_url()) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            latencies.append(time.perf_counter() - t)

    await asyncio.gather(*(client() for _ in range(clients)))
    latencies.sort()
    return {"requests": len(latencies), "per_s": round(len(latencies) / seconds, 1),
            "p50_ms": round(1000 * latencies[len(latencies) // 2], 2),
            "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 2)}


async def run(opts) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        data = Path(tmp)
        ids = await seed(data)
        proc, base = start_server(data)
        try:
            headers = {"Authorization": f"Bearer {KEY}"}
            async with aiohttp.ClientSession(headers=headers) as session:
                cold = [await first_frame_latency(base, session) for _ in range(opts.starts)]
                get_one = await load(session, lambda: f"{base}/v1/egress/{random.choice(ids)}", opts.seconds)
                pages = STORED // 20
                get_list = await load(session, lambda: f"{base}/v1/egress?page={random.randint(1, pages)}&limit=20",
                                      opts.seconds)
                by_room = await load(session, lambda: f"{base}/v1/egress?roomName=room-{random.randint(0, 199)}",
                                     opts.seconds)
        finally:
            proc.terminate()
            proc.wait(60)
        warm = await warm_first_frames(data, opts.starts)
    return {
        "request_to_first_frame_s": {"cold": _stats(cold), "warm": _stats(warm)},
        "stored_egresses": STORED,
        "get_egress": get_one,
        "list_page": get_list,
        "list_by_room": by_room,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    results = asyncio.run(run(parser.parse_args()))
    for kind, c in results["request_to_first_frame_s"].items():
        print(f"request -> first frame ({kind}, 720p): mean {c['mean']} s, min {c['min']} s, max {c['max']} s "
              f"over {c['runs']} runs")
    print("with 10,000 stored egresses, 8 clients | req/s | p50 ms | p99 ms")
    for name in ("get_egress", "list_page", "list_by_room"):
        r = results[name]
        print(f"{name} | {r['per_s']} | {r['p50_ms']} | {r['p99_ms']}")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "api.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
