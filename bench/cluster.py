"""Benchmark of the cluster's control plane — a SIMULATION: no media is recorded.

200 nodes (services with simulated runners, in this one process) join one real redis-server (password,
append-only). Each simulated egress reports ACTIVE shortly after it starts and its result shortly after it
is stopped. Printed:

- placement latency (admission across the cluster: the one script that places a job on a node or queues it)
  p50/p99 at 50 starts/s, starts asked of random nodes; and of the whole start call (planning, checks, the
  record, the placement) as a caller sees it;
- oversubscriptions: nodes whose running egresses hold more than its capacity (must be 0);
- from 10 nodes' leases lapsing (they stop, as if killed) until every egress they ran is settled
  (FAILED, NODE_LOST);
- outbox lag (a change committed → its webhook received) p50/p99, and webhooks lost (must be 0);
- Redis commands per second and memory.

    .venv/bin/python bench/cluster.py [--nodes 200] [--rate 50] [--seconds 20] [--lease 10]

Prints a table and writes bench/results/cluster.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from compositor.protocol import Status  # noqa: E402
from compositor.service import Service, Settings  # noqa: E402
from compositor.service.requests import StartEgressRequest  # noqa: E402
from compositor.service.settings import ClusterSettings  # noqa: E402
from compositor.service.simulation import SimulatedRunner, lose  # noqa: E402
from tools.peers.receivers import free_port, wait_http  # noqa: E402
from tools.peers.redis import RedisServer  # noqa: E402

CAPACITY = 4.0  # cores per node: ten 480p egresses (0.4 each)
REQUEST = StartEgressRequest.model_validate({"roomName": "bench", "quality": "480p"})


# The webhook receiver runs in a process of its own, so its work does not count against the nodes: it keeps
# when each event id first arrived, and answers GET /stats with the lags and the egresses whose end it got.
RECEIVER = r"""
import json, sys, time
from datetime import datetime
from aiohttp import web
seen, lags, finals = set(), [], set()
async def post(request):
    event = json.loads(await request.read())
    if event["id"] not in seen:
        seen.add(event["id"])
        sent = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
        lags.append(time.time() - sent)
        if event["event"].endswith((".completed", ".failed")):
            finals.add(event["data"]["egressId"])
    return web.json_response({})
async def stats(request):
    return web.json_response({"lags": lags, "finals": sorted(finals)})
app = web.Application()
app.router.add_post("/hook", post)
app.router.add_get("/stats", stats)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] if ordered else float("nan")


async def until(check, timeout: float) -> float:
    """Seconds until `check()` holds (it must, within `timeout`)."""
    t0 = time.monotonic()
    while not await check():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"not within {timeout} s")
        await asyncio.sleep(0.1)
    return time.monotonic() - t0


async def run(opts) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    redis = RedisServer(tmp / "redis")
    port = free_port()
    receiver: subprocess.Popen | None = None
    session = aiohttp.ClientSession()
    nodes: list[tuple[Service, SimulatedRunner]] = []
    try:
        redis.start()
        receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
        wait_http(f"http://127.0.0.1:{port}/stats", proc=receiver)
        for i in range(opts.nodes):
            runner = SimulatedRunner(start_s=0.05, stop_s=0.05)
            name = f"n{i:03d}"
            # One data_dir path for all, as on real nodes (each its own disk; no simulated egress writes there).
            service = Service.in_cluster(Settings(
                data_dir=tmp / "data", capacity=CAPACITY, max_queue=64, api_keys=["k"], url_signing_key="u",
                webhook_secret="w", webhook_urls=[f"http://127.0.0.1:{port}/hook"],
                cluster=ClusterSettings(redis.url, name, f"http://{name}.bench:8080", lease_s=opts.lease)),
                runner=runner)
            await service.open()
            nodes.append((service, runner))
        # 200 services' worth of objects, made once: frozen out of the collector, whose full passes over them
        # would stall this one loop that all 200 share (a real node holds one service).
        gc.collect()
        gc.freeze()
        stats0 = _redis_stats(redis)
        t_load = time.monotonic()

        # Placement at a steady rate, each start asked of a random node.
        latencies: list[float] = []
        placements: list[float] = []
        started: list[str] = []
        for service, _ in nodes:
            service.dispatcher.admit = _timed(service.dispatcher.admit, placements)

        async def one():
            service = random.choice(nodes)[0]
            t0 = time.perf_counter()
            rec = await service.start(REQUEST)
            latencies.append(time.perf_counter() - t0)
            started.append(rec.id)

        tasks = []
        for k in range(int(opts.rate * opts.seconds)):
            tasks.append(asyncio.create_task(one()))
            await asyncio.sleep(max(0.0, t_load + (k + 1) / opts.rate - time.monotonic()))
        await asyncio.gather(*tasks)
        store = nodes[0][0].store
        await until(lambda: _count(store, Status.ACTIVE, len(started)), 60)
        load_s = time.monotonic() - t_load
        stats1 = _redis_stats(redis)

        over = sum(1 for _, r in nodes if len(r.running) * 0.4 > CAPACITY + 1e-9)

        # Ten nodes lost at once: their leases lapse.
        victims = [n for n in nodes if n[1].running][:10]
        lost = [egress_id for _, r in victims for egress_id in r.running]
        for service, _ in victims:
            lose(service)
        settled_s = await until(lambda: _all(store, lost, Status.FAILED), 4 * opts.lease + 30)

        # The rest stop; every egress must end with exactly one final webhook received.
        alive = [n for n in nodes if n not in victims]
        for service, runner in alive:
            for egress_id in list(runner.running):
                await service.stop(egress_id)
        await until(lambda: _count(store, (Status.COMPLETE, Status.FAILED), len(started)), 60)
        await until(lambda: _received(session, port, started), 60 + 20)
        got = await _stats(session, port)
        lost_webhooks = len(set(started) - set(got["finals"]))
        stats2 = _redis_stats(redis)
        return {
            "simulation": True, "nodes": opts.nodes, "starts": len(started), "rate_per_s": opts.rate,
            "placement_p50_ms": round(1000 * pct(placements, 0.5), 2),
            "placement_p99_ms": round(1000 * pct(placements, 0.99), 2),
            "start_call_p50_ms": round(1000 * pct(latencies, 0.5), 2),
            "start_call_p99_ms": round(1000 * pct(latencies, 0.99), 2),
            "oversubscribed_nodes": over,
            "lost_nodes": len(victims), "their_egresses": len(lost), "lease_s": opts.lease,
            "settled_after_kill_s": round(settled_s, 2),
            "outbox_lag_p50_ms": round(1000 * pct(got["lags"], 0.5), 1),
            "outbox_lag_p99_ms": round(1000 * pct(got["lags"], 0.99), 1),
            "webhooks_lost": lost_webhooks,
            # Commands Redis ran, those inside the scripts included (placement reads every live node's load).
            "redis_commands_per_s_under_load": round((stats1["cmds"] - stats0["cmds"]) / load_s),
            "redis_memory_mb": round(stats2["memory"] / 2 ** 20, 1),
        }
    finally:
        for service, _ in nodes:
            if not service.draining:
                service.draining = True
                await service.shutdown()
        await session.close()
        if receiver is not None:
            receiver.terminate()
            receiver.wait(10)
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _timed(admit, into: list[float]):
    """The dispatcher's admit (the placement: one script on Redis), timed."""
    async def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return await admit(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - t0)
    return timed


async def _count(store, statuses, count: int) -> bool:
    """Whether `count` egresses are in `statuses` (one call, however many egresses)."""
    statuses = statuses if isinstance(statuses, tuple) else (statuses,)
    return sum(n for s, _, n in await store.counts() if s in statuses) >= count


async def _all(store, ids: list[str], *statuses: Status) -> bool:
    for egress_id in ids:
        rec = await store.get(egress_id)
        if rec is None or rec.status not in statuses:
            return False
    return True


async def _stats(session: aiohttp.ClientSession, port: int) -> dict:
    async with session.get(f"http://127.0.0.1:{port}/stats") as resp:
        return await resp.json()


async def _received(session: aiohttp.ClientSession, port: int, ids: list[str]) -> bool:
    return set(ids) <= set((await _stats(session, port))["finals"])




def _redis_stats(redis: RedisServer) -> dict:
    info = dict(line.split(":", 1) for line in redis.cli("INFO").splitlines() if ":" in line)
    return {"cmds": int(info["total_commands_processed"]), "memory": int(info["used_memory"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50, help="starts per second")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--lease", type=float, default=10)
    opts = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    result = asyncio.run(run(opts))
    print("SIMULATION: control plane only, no media is recorded (simulated runners)")
    width = max(map(len, result))
    for key, value in result.items():
        print(f"  {key:<{width}}  {value}")
    out = REPO / "bench" / "results" / "cluster.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
