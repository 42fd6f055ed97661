"""The service's seams without media: the store's contract (run against every backend), admission, the API's
views of a record, and the service itself on a simulated runner. Fast: no worker process starts."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis

from compositor.api.models import egress_info, recording_info
from compositor.errors import CapacityExceeded, Conflict, InvalidRequest
from compositor.protocol import IngressState, Status, UpdateLayout
from compositor.request import RecordRequest
from compositor.service import Service, Settings, livekit_info
from compositor.service.cluster.dispatch import RedisDispatcher
from compositor.service.cluster.node import ClusterNode
from compositor.service.cluster.store import Fence, Fenced, RedisStore
from compositor.service.dispatch import LocalDispatcher, memory_limit_mb
from compositor.service.seams import EgressRecord, IngressRecord, Job, Need, OutboxEvent, Placed
from compositor.service.settings import ClusterSettings
from compositor.service.simulation import SimulatedRunner
from compositor.service.store import SqliteStore
from compositor.service.webhooks import Webhooks

from .support.simulated import HOOK_SECRET, Receiver, small, until

# Every backend of the Store runs the same contract.
BACKENDS = ["sqlite", "redis"]


@pytest.fixture(params=BACKENDS)
async def store(request, tmp_path):
    if request.param == "sqlite":
        opened = SqliteStore(tmp_path / "c.db")
    else:
        server = request.getfixturevalue("redis_server")
        # A prefix of its own per test: the tests share one server, never its keys.
        opened = RedisStore(aioredis.from_url(server.url, decode_responses=True), prefix=f"t{id(request)}:")
    yield opened
    await opened.close()


async def record(store, egress_id: str = "EG_1", mode: str = "record", **fields) -> EgressRecord:
    rec = EgressRecord(id=egress_id, room_name=fields.pop("room_name", "room"), mode=mode, layout="grid",
                       quality="720p", request={}, **fields)
    await store.create(rec)
    return rec


# The store: a change and the webhook events it causes commit together, or neither does.

async def test_a_status_change_and_its_webhooks_commit_together(store):
    hooks = Webhooks(store, ["http://a.test/hook", "http://b.test/hook"], "secret", formats=("baxcloud", "livekit"))
    await record(store)
    rec = await store.update("EG_1", events=hooks.for_change, status=Status.ACTIVE, started_at=1.0)
    assert rec.status is Status.ACTIVE
    due = await store.claim_events(float("inf"), 60)
    # recording.started (baxcloud) and egress_started (livekit), each for both receivers; one at a time per receiver
    assert sorted((e.url, e.format) for e in due) == [("http://a.test/hook", "baxcloud"),
                                                      ("http://b.test/hook", "baxcloud")]
    assert json.loads(due[0].body)["event"] == "recording.started"
    assert await store.event_backlog() == 4
    # Unchanged status: no events.
    await store.update("EG_1", events=hooks.for_change, worker_pid=42)
    assert await store.event_backlog() == 4


async def test_a_storage_retried_is_news_for_livekit_receivers(store):
    hooks = Webhooks(store, ["http://a.test/hook"], "secret", formats=("livekit",), livekit_key="K",
                     livekit_secret="S" * 32)
    await record(store, status=Status.ENDING)
    retrying = {"status": "RETRYING", "attempt": 1, "key": "r.mp4", "error": "connection refused",
                "error_code": "STORAGE_UNREACHABLE", "retry_in_s": 2.0}
    for upload in (retrying, retrying, {**retrying, "attempt": 2}):
        await store.update("EG_1", events=hooks.for_change, upload=upload)
    assert (await store.get("EG_1")).upload == {**retrying, "attempt": 2}
    bodies = []
    while due := await store.claim_events(float("inf"), 60):
        for event in due:
            bodies.append(json.loads(event.body))
            await store.event_delivered(event.seq, 1)
    # One egress_updated per attempt (the same attempt again is no news), saying what is being retried.
    assert [b["event"] for b in bodies] == ["egress_updated", "egress_updated"]
    assert bodies[1]["egressInfo"]["retryCount"] == 2
    assert "attempt 2 failed (connection refused)" in bodies[1]["egressInfo"]["details"]


async def test_a_requests_own_receivers_persist_and_get_its_events_only_filtered(store):
    hooks = Webhooks(store, ["http://a.test/hook"], "secret", livekit_key="K", livekit_secret="S" * 32)
    mine = [{"url": "http://mine.test/lk", "format": "livekit", "include_events": ["egress_ended"],
             "exclude_events": []},
            {"url": "http://mine.test/bx", "format": "baxcloud", "include_events": [],
             "exclude_events": ["recording.started"]}]
    await record(store, webhooks=mine)
    await record(store, "EG_2")
    assert (await store.get("EG_1")).webhooks == mine  # kept with the job: a restart or another node sends them
    for egress_id in ("EG_1", "EG_2"):
        await store.update(egress_id, events=hooks.for_change, status=Status.ACTIVE, started_at=1.0)
        await store.update(egress_id, events=hooks.for_change, status=Status.ENDING)
        await store.update(egress_id, events=hooks.for_change, status=Status.COMPLETE, ended_at=2.0)
    sent: dict[tuple[str, str], list] = {}
    while due := await store.claim_events(float("inf"), 60):
        for e in due:
            body = json.loads(e.body)
            sent.setdefault((e.egress_id, e.url), []).append((body["event"], e.event_id, e.untrusted))
            await store.event_delivered(e.seq, 1)
    names = {k: [name for name, _, _ in v] for k, v in sent.items()}
    assert names == {("EG_1", "http://a.test/hook"): ["recording.started", "recording.completed"],
                     ("EG_1", "http://mine.test/bx"): ["recording.completed"],
                     ("EG_1", "http://mine.test/lk"): ["egress_ended"],
                     ("EG_2", "http://a.test/hook"): ["recording.started", "recording.completed"]}
    # One event, one id, whoever receives it; the request's receivers are marked to be held to the policy.
    assert sent["EG_1", "http://mine.test/bx"][0][1] == sent["EG_1", "http://a.test/hook"][1][1]
    assert {u for v in sent.values() for _, _, u in v} == {True, False}
    assert all(u == k[1].startswith("http://mine.test") for k, v in sent.items() for _, _, u in v)


async def test_a_change_whose_events_fail_is_not_kept(store):
    await record(store)

    def broken(before, after):
        raise RuntimeError("composing the events failed")

    with pytest.raises(RuntimeError):
        await store.update("EG_1", events=broken, status=Status.ACTIVE)
    assert (await store.get("EG_1")).status is Status.STARTING and await store.event_backlog() == 0


async def test_outbox_order_and_retries(store):
    await record(store)

    def one(name):
        return lambda before, after: [OutboxEvent(name, "EG_1", "http://a.test/", "baxcloud", name, created_at=1.0)]

    await store.update("EG_1", events=one("first"), status=Status.ACTIVE)
    await store.update("EG_1", events=one("second"), status=Status.COMPLETE)
    (head,) = await store.claim_events(2.0, 60)
    assert head.event_id == "first"
    await store.event_retry(head.seq, 1, next_at=100.0, error="HTTP 500")
    assert await store.claim_events(2.0, 60) == [] and await store.next_event_at() == 100.0
    (again,) = await store.claim_events(100.0, 60)
    assert again.event_id == "first" and again.attempts == 1
    await store.event_delivered(again.seq, 2)
    (then,) = await store.claim_events(100.0, 60)
    assert then.event_id == "second"
    await store.event_given_up(then.seq, 1, "gone")
    assert await store.event_backlog() == 0 and await store.next_event_at() is None


async def test_a_claimed_event_is_due_again_only_when_its_lease_ends(store):
    await record(store)
    one = [OutboxEvent("evt_1", "EG_1", "http://a.test/", "baxcloud", "{}", created_at=1.0)]
    await store.update("EG_1", events=lambda before, after: one, status=Status.ACTIVE)
    (claimed,) = await store.claim_events(10.0, lease_s=30)
    assert await store.claim_events(39.0, lease_s=30) == [] and await store.next_event_at() == 40.0
    (again,) = await store.claim_events(40.0, lease_s=30)  # its sender never answered
    assert again.event_id == claimed.event_id == "evt_1"


async def test_a_settled_status_is_final(store):
    hooks = Webhooks(store, ["http://a.test/"], "secret")
    await record(store)
    await store.update("EG_1", events=hooks.for_change, status=Status.FAILED, error_code="NODE_LOST")
    late = await store.update("EG_1", events=hooks.for_change, status=Status.COMPLETE, file={"size": 1})
    assert (late.status, late.error_code, late.file) == (Status.FAILED, "NODE_LOST", None)
    assert (await store.get("EG_1")).status is Status.FAILED and await store.event_backlog() == 1


async def test_a_destinations_change_reports_its_own_transition(store):
    hooks = Webhooks(store, ["http://a.test/"], "secret")
    await record(store, mode="stream")
    await store.update("EG_1", streams=[{"url": "rtmp://h/a/***", "status": "ACTIVE", "retries": 0}])
    failed = {"url": "rtmp://h/a/***", "status": "FAILED", "retries": 3, "error": "refused",
              "error_code": "RTMP_PUBLISH_REJECTED"}
    await store.update("EG_1", events=hooks.for_stream(0), streams=[failed])
    (event,) = await store.claim_events(float("inf"), 60)
    body = json.loads(event.body)
    assert body["event"] == "stream.failed" and body["data"]["errorCode"] == "RTMP_PUBLISH_REJECTED"
    # The same state again is no news.
    await store.update("EG_1", events=hooks.for_stream(0), streams=[failed])
    assert await store.event_backlog() == 1


async def test_lists_filter_page_and_count(store):
    for i in range(7):
        await record(store, f"EG_{i}", mode="stream" if i % 3 == 0 else "record", room_name=f"room-{i % 2}",
                     created_at=1000.0 + i, status=Status.COMPLETE if i < 4 else Status.ACTIVE)
    page, total = await store.list(page=1, limit=3)
    assert total == 7 and [r.id for r in page] == ["EG_6", "EG_5", "EG_4"]  # newest first
    page, total = await store.list(page=3, limit=3)
    assert total == 7 and [r.id for r in page] == ["EG_0"]
    page, total = await store.list(page=2, limit=3, oldest_first=True)  # as LiveKit's ListEgress lists them
    assert total == 7 and [r.id for r in page] == ["EG_3", "EG_4", "EG_5"]
    page, total = await store.list(room_name="room-1", oldest_first=True)
    assert total == 3 and [r.id for r in page] == ["EG_1", "EG_3", "EG_5"]
    page, total = await store.list(room_name="room-0", status="COMPLETE")
    assert total == 2 and {r.id for r in page} == {"EG_0", "EG_2"}
    page, total = await store.list(modes=("stream",))
    assert total == 3 and {r.id for r in page} == {"EG_0", "EG_3", "EG_6"}
    page, total = await store.list(modes=("stream", "both"), room_name="room-0", limit=1)
    assert total == 2 and [r.id for r in page] == ["EG_6"]
    page, total = await store.list(modes=("record", "stream"), status="ACTIVE")
    assert total == 3
    assert {r.id for r in await store.unfinished()} == {"EG_4", "EG_5", "EG_6"}
    assert sorted(await store.counts()) == [("ACTIVE", "record", 2), ("ACTIVE", "stream", 1),
                                            ("COMPLETE", "record", 2), ("COMPLETE", "stream", 2)]
    await store.delete("EG_6")
    assert await store.get("EG_6") is None and (await store.list())[1] == 6


async def test_records_read_back_as_written(store):
    rec = await record(store, file={"location": "/r/a.mp4", "size": 3}, streams=[{"url": "rtmp://h/a/***"}],
                       kind="web")
    back = await store.get("EG_1")
    assert back == rec and back.status is Status.STARTING and not back.ended
    assert await store.get("EG_nothing") is None


async def test_every_committed_change_is_announced_to_followers(store):
    """What the dashboard's push follows: created, changed and deleted egresses by id, once committed (on Redis,
    through the channel the committing script publishes on, so any node's changes reach every node)."""
    changes = store.changes()
    if isinstance(store, RedisStore):
        # Once subscribed, Redis's follower says changes may have been missed (before it subscribed).
        assert await asyncio.wait_for(anext(changes), 5) is None
    assert await _after(changes, record(store, "EG_1")) == "EG_1"
    assert await _after(changes, store.update("EG_1", status=Status.ACTIVE)) == "EG_1"
    assert await _after(changes, store.delete("EG_1")) == "EG_1"
    await changes.aclose()


async def _after(changes, change) -> str | None:
    """The next announced id, once `change` is made."""
    heard = asyncio.ensure_future(anext(changes))
    await asyncio.sleep(0)  # the follower is listening before the change is made
    await change
    return await asyncio.wait_for(heard, 5)


async def test_settings_and_first_sightings(store):
    assert await store.get_setting("auto_egress") is None
    await store.put_setting("auto_egress", {"enabled": True})
    await store.put_setting("auto_egress", {"enabled": False})
    assert await store.get_setting("auto_egress") == {"enabled": False}
    assert await store.first_sighting("livekit:EV_1", 60) is True
    assert await store.first_sighting("livekit:EV_1", 60) is False
    # Forgotten once older than the window.
    assert await store.first_sighting("livekit:EV_2", 0.05) is True
    await asyncio.sleep(0.1)
    assert await store.first_sighting("livekit:EV_2", 0.05) is True


# Admission: never more than the capacity, the queue in order and bounded; the same on one node and in a
# cluster (here of one node).

@pytest.fixture(params=BACKENDS)
async def dispatchers(request, tmp_path):
    """dispatchers(capacity, max_queue, memory_mb) -> a Dispatcher of that backend."""
    opened = []

    async def _open(capacity: float, max_queue: int, memory_mb: float = 8000):
        capacity = Need(capacity, memory_mb)
        if request.param == "sqlite":
            return LocalDispatcher(capacity, max_queue)
        server = request.getfixturevalue("redis_server")
        client = aioredis.from_url(server.url, decode_responses=True)
        node = ClusterNode(client, ClusterSettings(server.url, "solo", "http://solo.test"), capacity,
                           prefix=f"d{id(request)}:")
        await node.join()
        opened.append(client)
        return RedisDispatcher(client, node, max_queue)

    yield _open
    for client in opened:
        await client.aclose()


def job(egress_id: str, cores: float, memory_mb: float = 100) -> Job:
    return Job(egress_id, RecordRequest(file={"filepath": "/r/a.mp4"}), Need(cores, memory_mb), (640, 360, 48000))


async def free(dispatcher) -> tuple[float, float]:
    """What a dispatcher has free: (cores, MB)."""
    left = await dispatcher.free()
    return left.cores, left.memory_mb


async def test_admission_never_oversubscribes_and_keeps_the_queue_in_order(dispatchers):
    d = await dispatchers(capacity=1.0, max_queue=2)
    assert await d.admit(job("a", 0.7), queue=False) is Placed.HERE
    with pytest.raises(CapacityExceeded) as refused:
        await d.admit(job("b", 0.4), queue=False)
    assert refused.value.details == {"needed": 0.4, "free": 0.3, "neededMemoryMb": 100, "freeMemoryMb": 7900,
                                     "queued": 0}
    assert await d.admit(job("big", 0.7), queue=True) is Placed.QUEUED
    # A small one that would fit waits behind the queue's head: first come, first served.
    assert await d.admit(job("small", 0.2), queue=True) is Placed.QUEUED
    with pytest.raises(CapacityExceeded, match="queue is full"):
        await d.admit(job("c", 0.1), queue=True)
    assert [await d.position(x) for x in ("a", "big", "small")] == [None, 1, 2]
    assert (await d.free()).cores == pytest.approx(0.3)
    admitted = await d.release("a")
    assert [j.egress_id for j in admitted] == ["big", "small"] and admitted[0].request == job("big", 0.7).request
    assert (await d.free()).cores == pytest.approx(0.1) and await d.position("small") is None
    assert await d.release("a") == []  # twice is once


async def test_admission_refuses_what_could_never_fit_and_withdraws(dispatchers):
    d = await dispatchers(capacity=1.0, max_queue=4)
    with pytest.raises(InvalidRequest) as never:
        await d.check(Need(1.3, 100), queue=True)
    assert never.value.details == {"field": "quality", "needed": 1.3, "neededMemoryMb": 100}
    assert await d.admit(job("a", 1.0), queue=True) is Placed.HERE
    assert await d.admit(job("b", 0.4), queue=True) is Placed.QUEUED
    assert await d.withdraw("b") and not await d.withdraw("b")
    assert await d.release("a") == [] and await free(d) == pytest.approx((1.0, 8000))


async def test_admission_counts_memory_as_it_counts_cores(dispatchers):
    d = await dispatchers(capacity=4.0, max_queue=2, memory_mb=2000)
    with pytest.raises(InvalidRequest, match="3000 MB of memory and .* 2000 MB") as never:
        await d.check(Need(0.5, 3000), queue=True)
    assert never.value.details["neededMemoryMb"] == 3000
    assert await d.admit(job("a", 0.5, 1200), queue=False) is Placed.HERE
    # Cores to spare, but not the memory: refused saying so, or waiting for it.
    with pytest.raises(CapacityExceeded, match="needs 950 MB of memory, 800 MB free") as refused:
        await d.admit(job("b", 0.5, 950), queue=False)
    assert "cores" not in refused.value.message
    assert (refused.value.details["neededMemoryMb"], refused.value.details["freeMemoryMb"]) == (950, 800)
    assert await d.admit(job("c", 0.5, 700), queue=False) is Placed.HERE
    assert await d.admit(job("b", 0.5, 950), queue=True) is Placed.QUEUED
    assert await free(d) == pytest.approx((3.0, 100))
    assert [j.egress_id for j in await d.release("a")] == ["b"]
    assert await free(d) == pytest.approx((3.0, 350))


def session(ingress_id: str, cores: float, memory_mb: float = 400) -> Job:
    """An ingress session's hold: a job of no request."""
    return Job(ingress_id, None, Need(cores, memory_mb), (0, 0, 0))


async def test_work_that_can_neither_wait_nor_move_is_held_here_or_refused(dispatchers):
    d = await dispatchers(capacity=1.0, max_queue=2)
    await d.admit_here(session("IN_1", 0.5))
    assert await free(d) == pytest.approx((0.5, 7600))
    with pytest.raises(Conflict):  # one session of an ingress at a time
        await d.admit_here(session("IN_1", 0.25))
    with pytest.raises(CapacityExceeded) as refused:
        await d.admit_here(session("IN_2", 0.6))
    assert (refused.value.details["needed"], refused.value.details["free"]) == (0.6, 0.5)
    # An egress waits: a session that would fit is refused rather than served before it.
    assert await d.admit(job("big", 0.7), queue=True) is Placed.QUEUED
    with pytest.raises(CapacityExceeded) as refused:
        await d.admit_here(session("IN_3", 0.25))
    assert refused.value.details["queued"] == 1
    assert [j.egress_id for j in await d.release("IN_1")] == ["big"]
    assert await free(d) == pytest.approx((0.3, 7900))


async def test_in_a_cluster_a_session_is_held_on_its_own_node_only(redis_server):
    """Placement would pick the busiest node that fits; a session stays where its publisher is, and a draining
    node takes none."""
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    try:
        nodes = {}
        for name in ("a", "b"):
            node = ClusterNode(client, ClusterSettings(redis_server.url, name, f"http://{name}.test"),
                               Need(1.0, 4000), prefix="pin:")
            await node.join()
            nodes[name] = RedisDispatcher(client, node, 2)
        assert await nodes["a"].admit(job("EG_1", 0.5), queue=False) is Placed.HERE
        await nodes["b"].admit_here(session("IN_1", 0.25))
        with pytest.raises(Conflict):  # the same key pushed to another node at once
            await nodes["a"].admit_here(session("IN_1", 0.25))
        assert await free(nodes["a"]) == pytest.approx((0.5, 3900))
        assert await free(nodes["b"]) == pytest.approx((0.75, 3600))
        await nodes["b"].node.drain()
        with pytest.raises(CapacityExceeded):
            await nodes["b"].admit_here(session("IN_2", 0.25))
        await nodes["b"].release("IN_1")
        assert await free(nodes["b"]) == pytest.approx((1.0, 4000))
    finally:
        await client.aclose()


# What the API shows of a record, without the API.

def test_views_of_an_ended_recording():
    rec = EgressRecord(id="EG_abc", room_name="room", mode="record", layout="grid", quality="720p",
                       request={"file": {"file_type": "WEBM"}}, status=Status.COMPLETE, created_at=1e9,
                       started_at=1e9 + 1, ended_at=1e9 + 5, file={"location": "/r/a.webm", "filename": "a.webm",
                                                                    "size": 9, "duration": 3.5})
    info = egress_info(rec, queue_position=None)
    assert (info["status"], info["durationSec"], info["file"]["size"]) == ("COMPLETE", 3.5, 9)
    assert info["startedAt"] == "2001-09-09T01:46:41.000Z" and info["queuePosition"] is None
    shown = recording_info(rec)
    assert (shown["id"], shown["egressId"], shown["fileType"]) == ("rec_abc", "EG_abc", "WEBM")
    lk = livekit_info.egress_info(rec)
    assert lk.egress_id == "EG_abc" and lk.file_results[0].filename == "a.webm"
    assert lk.ended_at - lk.started_at == 4_000_000_000


def test_views_of_a_waiting_egress_without_times():
    rec = EgressRecord(id="EG_q", room_name="room", mode="stream", layout="grid", quality="720p", request={},
                       streams=[{"url": "rtmp://h/a/***", "status": "STARTING", "retries": 0}])
    info = egress_info(rec, queue_position=2)
    assert info["queuePosition"] == 2 and info["durationSec"] is None and info["startedAt"] is None
    assert info["streams"] == [{"url": "rtmp://h/a/***", "status": "STARTING", "retries": 0, "error": None,
                                "errorCode": None, "lastRetryAt": None, "startedAt": None, "endedAt": None}]


# The service on a simulated runner: its own logic, every egress 480p (0.4 cores).

@pytest.fixture
async def simulated(tmp_path):
    receiver = Receiver()
    await receiver.server.start_server()
    runner = SimulatedRunner(start_s=0.02, stop_s=0.02)
    service = Service.on_this_node(Settings(
        data_dir=tmp_path / "data", capacity=1.0, max_queue=2, url_signing_key="k", webhook_secret=HOOK_SECRET,
        webhook_urls=[receiver.url]), runner=runner)
    service.start_background()
    yield service, runner, receiver
    if not service.draining:
        await service.shutdown()
    await receiver.server.close()


async def test_the_service_runs_what_fits_queues_the_rest_and_runs_it_when_room_frees(simulated):
    service, runner, receiver = simulated
    first, second = await service.start(small()), await service.start(small())
    queued = await service.start(small(queue=True))
    assert queued.status is Status.STARTING and await service.queue_position(queued.id) == 1
    with pytest.raises(CapacityExceeded):
        await service.start(small())  # not willing to wait
    assert [j.egress_id for j in runner.started] == [first.id, second.id]
    assert all(j.cost == Need(0.4, 850) and j.frame[:2] == (854, 480) for j in runner.started)
    await until(lambda: _is(service, first.id, Status.ACTIVE))
    await service.update_layout(first.id, "speaker")
    assert runner.commands == [(first.id, UpdateLayout(id=None, layout="speaker"))]
    assert (await service.stop(first.id)).status is Status.ENDING
    await until(lambda: _is(service, first.id, Status.COMPLETE))
    # The freed 0.4 cores go to the queue's head.
    await until(lambda: _is(service, queued.id, Status.ACTIVE))
    assert await service.queue_position(queued.id) is None
    with pytest.raises(Conflict, match="already ended"):
        await service.stop(first.id)


async def test_a_requests_webhook_this_server_cannot_sign_for_is_refused_naming_the_field(simulated):
    service, runner, _ = simulated
    for hook, field in (({"format": "livekit"}, "webhooks.0.format"),  # no LiveKit key on this server
                        ({"signingKey": "sk_live_0123456789"}, "webhooks.0.signingKey")):
        with pytest.raises(InvalidRequest) as refused:
            await service.start(small(webhooks=[{"url": "https://example.com/hook", **hook}]))
        assert refused.value.details == {"field": field} and "sk_live" not in refused.value.message
    assert runner.started == [] and (await service.store.list())[1] == 0


async def test_a_queued_egress_stopped_ends_aborted_and_never_runs(simulated):
    service, runner, receiver = simulated
    await service.start(small())
    await service.start(small())
    queued = await service.start(small(queue=True))
    stopped = await service.stop(queued.id)
    assert (stopped.status, stopped.error_code) == (Status.ABORTED, "ABORTED")
    assert queued.id not in [j.egress_id for j in runner.started]
    await until(lambda: _delivered(receiver, "recording.failed", 1))


async def test_every_change_reaches_the_webhook_once_in_order(simulated):
    service, runner, receiver = simulated
    ids = [(await service.start(small())).id for _ in range(2)]
    for egress_id in ids:
        await until(lambda: _is(service, egress_id, Status.ACTIVE))
        await service.stop(egress_id)
    await until(lambda: _delivered(receiver, "recording.completed", 2))
    for egress_id in ids:
        names = [e["event"] for e in receiver.events if e["data"]["egressId"] == egress_id]
        assert names == ["recording.started", "recording.completed"]
    assert len({e["id"] for e in receiver.events}) == len(receiver.events) == 4
    assert await service.webhooks.backlog() == 0


async def test_a_drain_aborts_the_queue_and_finishes_the_rest(simulated):
    service, runner, receiver = simulated
    running = [await service.start(small()) for _ in range(2)]
    queued = await service.start(small(queue=True))
    await service.shutdown()
    assert runner.running == []
    reopened = SqliteStore(service.settings.data_dir / "compositor.db")
    try:
        assert (await reopened.get(queued.id)).status is Status.ABORTED
        assert {(await reopened.get(r.id)).status for r in running} == {Status.COMPLETE}
    finally:
        await reopened.close()


async def _is(service: Service, egress_id: str, status: Status) -> bool:
    return (await service.get(egress_id)).status is status


async def _delivered(receiver: Receiver, name: str, count: int) -> bool:
    return sum(e["event"] == name for e in receiver.events) >= count


# Ingresses: kept whole, found by their stream key, a state change and its webhooks committed together.

def ingress(ingress_id: str = "IN_1", room_name: str = "r", **fields) -> IngressRecord:
    fields = {"input_type": "rtmp", "participant_identity": "p"} | fields
    return IngressRecord(id=ingress_id, room_name=room_name, **fields)


async def delivered_bodies(store) -> list[str]:
    """The outbox's events in order (one receiver), each delivered as it is claimed."""
    bodies = []
    while due := await store.claim_events(float("inf"), 60):
        for e in due:
            bodies.append(e.body)
            await store.event_delivered(e.seq, 1)
    return bodies


async def test_an_ingress_reads_back_by_id_and_key_and_its_changes_bring_their_webhooks(store):
    hooks = Webhooks(store, ["http://a.test/hook"], "secret", formats=("baxcloud", "livekit"))
    rec = ingress(stream_key="k" * 20, video={"preset": "H264_540P_25FPS_2_LAYERS"})
    await store.create_ingress(rec)
    with pytest.raises(Exception):  # one key, one ingress
        await store.create_ingress(ingress("IN_2", participant_identity="q", stream_key="k" * 20))
    assert await store.get_ingress("IN_2") is None
    assert await store.ingress_of_key("k" * 20) == await store.get_ingress("IN_1") == rec
    assert await store.ingress_of_key("") is None and await store.ingress_of_key("nope") is None
    for state in (IngressState.BUFFERING, IngressState.PUBLISHING, IngressState.INACTIVE):
        await store.update_ingress("IN_1", events=hooks.for_ingress, state=state, started_at=1.0, ended_at=3.5)
    bodies = await delivered_bodies(store)
    assert [json.loads(body)["event"] for body in bodies] == ["live.started", "ingress_started", "live.ended",
                                                              "ingress_ended"]
    ended = json.loads(bodies[2])["data"]
    assert ended["ingressId"] == "IN_1" and ended["durationSec"] == 2.5 and ended["state"] == "INACTIVE"
    assert "streamKey" not in bodies[3] and "k" * 20 not in bodies[3]  # webhooks never carry the key
    assert [r.id for r in await store.list_ingress(room_name="r")] == ["IN_1"]
    assert await store.list_ingress(room_name="other") == []
    await store.delete_ingress("IN_1")
    assert await store.get_ingress("IN_1") is None and await store.ingress_of_key("k" * 20) is None
    assert await store.list_ingress() == []
    # Its key is free again.
    await store.create_ingress(ingress("IN_3", stream_key="k" * 20))
    assert (await store.ingress_of_key("k" * 20)).id == "IN_3"


async def test_ingresses_list_newest_first_and_a_room_change_moves_one(store):
    # Keyless (URL) ingresses: any number of them.
    for ingress_id, room_name, created_at in (("IN_A", "r", 1.0), ("IN_C", "s", 2.0), ("IN_B", "r", 2.0)):
        await store.create_ingress(ingress(ingress_id, room_name, input_type="url", created_at=created_at))
    assert [r.id for r in await store.list_ingress()] == ["IN_B", "IN_C", "IN_A"]  # the same time: by id
    assert [r.id for r in await store.list_ingress(room_name="r")] == ["IN_B", "IN_A"]
    moved = await store.update_ingress("IN_B", room_name="s")
    assert moved.room_name == "s" and moved.updated_at > moved.created_at
    assert [r.id for r in await store.list_ingress(room_name="r")] == ["IN_A"]
    assert [r.id for r in await store.list_ingress(room_name="s")] == ["IN_B", "IN_C"]
    assert await store.get_ingress("IN_B") == moved


async def test_an_ingress_change_whose_events_fail_is_not_kept(store):
    rec = ingress()
    await store.create_ingress(rec)

    def broken(before, after):
        raise RuntimeError("composing the events failed")

    with pytest.raises(RuntimeError):
        await store.update_ingress("IN_1", events=broken, state=IngressState.PUBLISHING)
    assert await store.get_ingress("IN_1") == rec and await store.event_backlog() == 0


async def test_a_fenced_node_changes_no_record(redis_server):
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    epoch = Fence("fenced:epoch:n1", "1")
    store = RedisStore(client, prefix="fenced:", fence=lambda: epoch)
    await client.set(epoch.key, "1")
    rec = ingress(stream_key="k" * 20)
    await store.create_ingress(rec)
    await client.incr(epoch.key)  # the cluster declared the node lost
    for write in (store.update_ingress("IN_1", state=IngressState.PUBLISHING), store.delete_ingress("IN_1"),
                  store.create_ingress(ingress("IN_2")), record(store)):
        with pytest.raises(Fenced):
            await write
    assert await store.list_ingress() == [rec] and await store.get("EG_1") is None
    await store.close()


def test_memory_limit_is_the_lowest_that_binds(tmp_path):
    def machine(meminfo_mb: int, cgroup: str, limits: dict[str, str]):
        root = tmp_path / f"root{len(list(tmp_path.iterdir()))}"
        (root / "proc/self").mkdir(parents=True)
        (root / "proc/meminfo").write_text(f"MemTotal:       {meminfo_mb * 1024} kB\nMemFree: 1 kB\n")
        (root / "proc/self/cgroup").write_text(cgroup)
        for path, value in limits.items():
            (root / "sys/fs/cgroup" / path).parent.mkdir(parents=True, exist_ok=True)
            (root / "sys/fs/cgroup" / path).write_text(value + "\n")
        return root

    # No container: the machine's RAM.
    assert memory_limit_mb(machine(24000, "0::/\n", {"memory.max": "max"})) == 24000
    # cgroup v2: a limit on a parent group binds the job's group too.
    v2 = machine(24000, "0::/kubepods/pod1/ctr\n", {"kubepods/pod1/memory.max": str(3 << 30),
                                                    "kubepods/pod1/ctr/memory.max": "max"})
    assert memory_limit_mb(v2) == 3072
    # cgroup v1: its "no limit" is a huge number; a real one binds.
    assert memory_limit_mb(machine(16000, "4:memory:/x\n", {"memory/memory.limit_in_bytes": str(2 ** 63 - 4096)})) \
        == 16000
    assert memory_limit_mb(machine(16000, "4:memory:/x\n", {"memory/memory.limit_in_bytes": str(2 << 30)})) == 2048
