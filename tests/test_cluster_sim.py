"""A cluster of services in one process, each on a simulated runner, sharing a real redis-server: placement,
calls that reach an egress's node, the shared queue, node loss and fencing, without media. Fast."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer

from compositor.api.rest import make_app
from compositor.errors import CapacityExceeded, Conflict
from compositor.protocol import Pause, ResultEvent, Resume, Status, UpdateLayout, UpdateParticipants, UpdateStreams
from compositor.request import ParticipantFilter
from compositor.service import Service, Settings
from compositor.service.settings import ClusterSettings
from compositor.service.simulation import SimulatedRunner, lose
from compositor.service.webhooks import CLAIM_S
from tools.peers.livekit import API_KEY, API_SECRET

from .support.simulated import HOOK_SECRET, Receiver, small, until
from .test_auto_egress import KEY, configure, event, post

LEASE_S = 2.0


@pytest.fixture
async def cluster(redis_server, tmp_path):
    """cluster(name, capacity, memory_mb) -> (service, runner): a node joined to the test's cluster."""
    redis_server.cli("FLUSHALL")
    receiver = Receiver()
    await receiver.server.start_server()
    nodes: list[Service] = []

    async def _node(name: str, capacity: float = 1.0, memory_mb: float = 8000) -> tuple[Service, SimulatedRunner]:
        runner = SimulatedRunner(start_s=0.02, stop_s=0.02)
        settings = Settings(
            data_dir=tmp_path / name, capacity=capacity, memory_mb=memory_mb, max_queue=4, api_keys=[KEY],
            url_signing_key="sign",
            allowed_hosts=("127.0.0.1:1935",), webhook_secret=HOOK_SECRET, webhook_urls=[receiver.url],
            livekit_api_key=API_KEY, livekit_api_secret=API_SECRET, livekit_url="ws://127.0.0.1:9",
            cluster=ClusterSettings(redis_server.url, name, f"http://{name}.test:8080", lease_s=LEASE_S))
        service = Service.in_cluster(settings, runner=runner)
        await service.open()
        nodes.append(service)
        return service, runner

    _node.receiver = receiver
    yield _node
    for service in nodes:
        if not service.draining:
            await service.shutdown()
    await receiver.server.close()


async def status_is(service: Service, egress_id: str, status: Status) -> bool:
    return (await service.get(egress_id)).status is status


def started_on(*runners: SimulatedRunner) -> list[list[str]]:
    return [[j.egress_id for j in r.started] for r in runners]


async def test_placement_packs_the_busiest_node_that_fits_and_never_oversubscribes(cluster):
    (a, ra), (b, rb), (c, rc) = [await cluster(n, cap) for n, cap in (("a", 1.0), ("b", 1.0), ("c", 2.0))]
    first = await a.start(small())
    second = await b.start(small())  # a is the busiest that fits: it goes there, whoever was asked
    await until(lambda: _all_started(ra, 2))
    assert started_on(ra, rb, rc) == [[first.id, second.id], [], []]
    ids = [(await c.start(small())).id for _ in range(6)]  # 0.4 cores each: a is full at two
    await until(lambda: _all_started(ra, rb, rc, 8))
    # c (asked, and then the busiest) is packed to its 2 cores before b gets any
    assert [len(r.started) for r in (ra, rb, rc)] == [2, 1, 5]
    await a.start(small())  # b's second: every node is now full
    await until(lambda: _all_started(rb, 2))
    for service in (a, b, c):
        assert 0 <= (await service.dispatcher.free()).cores < 0.4
    with pytest.raises(CapacityExceeded):
        await a.start(small())
    queued = await b.start(small(queue=True))
    assert await c.queue_position(queued.id) == 1  # one queue, seen from every node
    await a.stop(ids[0])  # frees 0.4 on whichever node ran it: the queue's head goes there
    await until(lambda: status_is(c, queued.id, Status.ACTIVE))


async def _all_started(*runners_and_count) -> bool:
    *runners, count = runners_and_count
    return sum(len(r.started) for r in runners) == count


async def test_any_node_serves_any_call(cluster):
    (a, ra), (b, rb), (c, rc) = [await cluster(n) for n in "abc"]
    egress = await a.start(small(mode="both", stream={"urls": []}))
    await until(lambda: status_is(c, egress.id, Status.ACTIVE))
    assert (await b.get(egress.id)).node == "a"
    await b.update_layout(egress.id, "speaker")
    await c.update_streams(egress.id, ["rtmp://127.0.0.1:1935/app/key"], [])
    await b.update_participants(egress.id, ParticipantFilter(exclude=["bob"]))
    await c.pause(egress.id)
    assert (await a.get(egress.id)).paused
    with pytest.raises(Conflict, match="already paused"):
        await b.pause(egress.id)
    await b.resume(egress.id)
    assert ra.commands == [(egress.id, UpdateLayout(id=None, layout="speaker")),
                           (egress.id, UpdateStreams(id=None, add=["rtmp://127.0.0.1:1935/app/key"])),
                           (egress.id, UpdateParticipants(participants=ParticipantFilter(exclude=["bob"]))),
                           (egress.id, Pause()), (egress.id, Resume())]
    assert (await c.get(egress.id)).request["participants"] == {"exclude": ["bob"]}
    (span,) = (await c.get(egress.id)).pauses
    assert not (await a.get(egress.id)).paused and span["end"] >= span["start"]
    assert rb.commands == rc.commands == []
    await c.stop(egress.id)
    await until(lambda: status_is(b, egress.id, Status.COMPLETE))
    with pytest.raises(Conflict, match="already ended"):
        await b.stop(egress.id)
    page, total = await b.store.list()
    assert total == 1 and page[0].id == egress.id


async def test_a_lost_nodes_egresses_fail_once_and_its_unstarted_ones_run_elsewhere(cluster):
    (a, ra), (b, rb) = await cluster("a"), await cluster("b", 2.0)
    running = [await b.start(small()), await b.start(small())]  # both on b (self on a tie, then busiest)
    await until(lambda: status_is(a, running[1].id, Status.ACTIVE))
    assert started_on(rb) == [[r.id for r in running]]
    lose(b)
    # Until its lease lapses b still counts, and is the busiest that fits: a job placed there never starts.
    unstarted = await a.start(small())
    assert (await a.get(unstarted.id)).status is Status.STARTING and ra.started == []
    for egress in running:
        await until(lambda: status_is(a, egress.id, Status.FAILED), timeout=4 * LEASE_S)
        rec = await a.get(egress.id)
        assert rec.error_code == "NODE_LOST" and "node b" in rec.error
        assert rec.file is None or rec.file["node"] == "b"
    # The job b never started runs on a, once.
    await until(lambda: status_is(a, unstarted.id, Status.ACTIVE))
    assert started_on(ra) == [[unstarted.id]] and (await a.get(unstarted.id)).node == "a"
    # (An event b was sending when it died goes again once its claim lapses: webhooks.CLAIM_S.)
    await until(lambda: _final_events(cluster.receiver, running, 1), timeout=CLAIM_S + 5)
    await asyncio.sleep(2 * LEASE_S)  # no second final event, whatever node looks again
    assert all(len(cluster.receiver.final(r.id)) == 1 for r in running)
    assert (await a.dispatcher.free()).cores == pytest.approx(0.6)


async def test_a_node_without_the_memory_is_passed_over(cluster):
    (a, ra), (_, rb) = await cluster("a", 2.0, memory_mb=1000), await cluster("b", 1.0)
    first = await a.start(small())  # a 480p egress holds 850 MB: a has it, once
    second = await a.start(small())
    await until(lambda: status_is(a, second.id, Status.ACTIVE))
    assert started_on(ra, rb) == [[first.id], [second.id]]
    assert (await a.dispatcher.free()).memory_mb == pytest.approx(150)


async def test_a_frozen_node_is_fenced_and_changes_no_settled_status(cluster):
    (a, _), (b, rb) = await cluster("a"), await cluster("b")
    egress = await b.start(small())
    await until(lambda: status_is(a, egress.id, Status.ACTIVE))
    for task in b._tasks:  # b stops renewing its lease (as if SIGSTOPped), its workers go on
        task.cancel()
    await until(lambda: status_is(a, egress.id, Status.FAILED), timeout=4 * LEASE_S)
    # b thaws: its worker's late result is refused, and b learns it was lost.
    rb._events.put_nowait((egress.id, ResultEvent(egress_id=egress.id, stopped_by="stopped")))
    assert not await b.cluster.node.renew()
    assert not b.ready
    await asyncio.sleep(0.5)
    rec = await a.get(egress.id)
    assert (rec.status, rec.error_code) == (Status.FAILED, "NODE_LOST")
    assert len(cluster.receiver.final(egress.id)) <= 1
    await b.cluster.node.join()  # joins again as new, takes work again
    assert b.ready
    again = await b.start(small())
    await until(lambda: status_is(a, again.id, Status.ACTIVE))


async def test_a_drained_node_takes_no_placements_and_leaves(cluster):
    (a, ra), (b, rb) = await cluster("a"), await cluster("b")
    await b.shutdown()
    ids = [(await a.start(small())).id for _ in range(2)]
    await until(lambda: _all_started(ra, 2))
    with pytest.raises(CapacityExceeded):
        await a.start(small())
    assert rb.started == [] and all(i in {j.egress_id for j in ra.started} for i in ids)


async def _final_events(receiver: Receiver, egresses, count: int) -> bool:
    return all(len(receiver.final(e.id)) >= count for e in egresses)




async def test_auto_egress_is_decided_once_for_the_cluster(cluster):
    nodes = [await cluster(n) for n in "abc"]
    clients = [TestClient(TestServer(make_app(service))) for service, _ in nodes]
    for client in clients:
        await client.start_server()
    try:
        await configure(clients[0], enabled=True, minParticipants=2, delaySeconds=0.3)  # shared by every node
        events = [event("room_started", "standup"), event("participant_joined", "standup", "alice"),
                  event("participant_joined", "standup", "bob"), event("participant_joined", "standup", "carol")]
        # Round-robin over the nodes, each event delivered twice to two nodes (LiveKit's retries, refused as
        # such): no node sees two joins itself, and c (bob) and a (carol) both find the room qualifies.
        for i, ev in enumerate(events):
            await post(clients[i % 3], ev)
            await post(clients[(i + 1) % 3], ev)
        runners = [r for _, r in nodes]
        await until(lambda: _all_started(*runners, 1))
        await asyncio.sleep(1.0)  # every node's delay has run out by now
        assert sum(len(r.started) for r in runners) == 1
        (job,) = [j for r in runners for j in r.started]
        a = nodes[0][0]
        await until(lambda: status_is(a, job.egress_id, Status.ACTIVE))
        # The room's end reaches one node, another than the one that started the egress: it stops.
        await post(clients[2], event("room_finished", "standup"))
        await until(lambda: status_is(a, job.egress_id, Status.COMPLETE))
    finally:
        for client in clients:
            await client.close()


async def test_a_nodes_event_stream_shows_the_changes_other_nodes_make(cluster):
    """The dashboard's push on one node follows an egress that another node runs, from start to end."""
    (a, _), (b, _) = await cluster("a"), await cluster("b", 0.1)  # b cannot hold one: a runs it
    client = TestClient(TestServer(make_app(b)))
    await client.start_server()
    try:
        resp = await client.get("/v1/events", headers={"Authorization": f"Bearer {KEY}"})
        assert await _next_event(resp) == {"type": "resync"}
        egress = await a.start(small())
        await _until_pushed(resp, egress.id, "ACTIVE")
        assert (await b.get(egress.id)).node == "a"
        await a.stop(egress.id)
        await _until_pushed(resp, egress.id, "COMPLETE")
        resp.close()
    finally:
        await client.close()


async def _next_event(resp) -> dict:
    """The next server-sent event's data (keepalive comments skipped)."""
    while True:
        line = await asyncio.wait_for(resp.content.readline(), 10)
        if line.startswith(b"data: "):
            return json.loads(line[6:])


async def _until_pushed(resp, egress_id: str, status: str) -> None:
    while True:
        event = await _next_event(resp)
        if event["type"] == "egress" and event["egress"]["id"] == egress_id and event["egress"]["status"] == status:
            return
