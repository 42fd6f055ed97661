"""A cluster of three real `compositor serve` nodes on one real redis-server (password, append-only), recording
small synthetic rooms through the full pipeline: placement, any node serving any call, a node killed, frozen,
cut off from Redis, and drained. Statuses, exactly-one final webhooks, files' content, no leaked process."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request

import pytest

from compositor import analysis
from tools.peers.livekit import API_KEY, API_SECRET

from .conftest import HttpReceiver, _cmdline, _pids, free_port
from .test_auto_egress import event, signed
from .test_ingress import events_of, push, until, wait_state
from .test_service import ROOM, SMALL, Server

# Short leases keep the tests short: a node silent this long is lost (the default is 10 s).
LEASE_S = 3
SECRETS = {"COMPOSITOR_WEBHOOK_SECRET": "cluster-webhook-secret", "COMPOSITOR_URL_SIGNING_KEY": "cluster-url-key"}
COLORS = {"a": "#4363d8", "b": "#e6194b", "c": "#3cb44b"}


class Cluster:
    """Nodes a, b, c: each one `compositor serve` (0.5 cores: one 360p egress at a time), its own Redis user."""

    def __init__(self, redis, tmp_path, webhook_url: str):
        self.redis = redis
        self.tmp_path = tmp_path
        self.webhook_url = webhook_url
        self.nodes: dict[str, Server] = {}
        self.users: dict[str, str] = {}

    def start(self, name: str, *extra: str, env: dict | None = None) -> Server:
        password = self.users.setdefault(name, f"pw-{name}-{os.urandom(4).hex()}")
        self.redis.cli("ACL", "SETUSER", name, "on", f">{password}", "~*", "&*", "+@all")
        port = free_port()
        env = {**SECRETS, "COMPOSITOR_REDIS_URL": f"redis://{name}:{password}@127.0.0.1:{self.redis.port}/0",
               "COMPOSITOR_NODE_ID": name, "COMPOSITOR_ADVERTISE_URL": f"http://127.0.0.1:{port}",
               "COMPOSITOR_LEASE_S": str(LEASE_S), "COMPOSITOR_WEBHOOK_URLS": self.webhook_url, **(env or {})}
        node = Server(self.tmp_path / name / "data", "--port", str(port), "--capacity", "0.5", *extra, env=env)
        self.nodes[name] = node
        return node

    def cut(self, name: str) -> None:
        """The node loses Redis: its user is disabled and its connections killed."""
        self.redis.cli("ACL", "SETUSER", name, "off")
        self.redis.cli("CLIENT", "KILL", "USER", name)

    def restore(self, name: str) -> None:
        self.redis.cli("ACL", "SETUSER", name, "on")

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.proc.poll() is None:
                os.kill(node.proc.pid, signal.SIGCONT)
            node.stop_server()


@pytest.fixture
def webhooks():
    receiver = HttpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def own_receiver():
    """A receiver a request names for its own egress's events."""
    receiver = HttpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def cluster(redis_server, tmp_path, webhooks):
    redis_server.cli("FLUSHALL")
    made = Cluster(redis_server, tmp_path, webhooks.url)
    yield made
    made.stop()
    for name in made.nodes:
        leftover = [p for p in _pids() if str(tmp_path / name) in _cmdline(p)]
        assert leftover == [], f"node {name} left {[_cmdline(p) for p in leftover]}"


def start(node: Server, color: str, **body) -> dict:
    room = {"room": {"participants": [{"name": "A", "color": color, "tone": 450}]}}
    status, info, _ = node.call("POST", "/v1/egress/start", {"roomName": "room-1", **SMALL, **room, **body})
    assert status == 201, info
    return info


def final_events(receiver: HttpReceiver, egress_id: str) -> list[dict]:
    events = [json.loads(body) for _, body in receiver.posts]
    return [e for e in events if e["data"].get("egressId") == egress_id
            and e["event"] in ("recording.completed", "recording.failed")]


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout} s")


def assert_recorded(info: dict, color: str) -> None:
    f = info["file"]
    frame = analysis.frame_at(f["location"], 1.0)
    assert analysis.color_distance(analysis.region_color(frame, 0, 0, 1, 1), color) <= 40
    assert analysis.tone_level(analysis.audio_samples(f["location"]), 450, 1.0, 2.0) > 0.05


def test_placement_and_any_node_serves_any_call(cluster):
    a, b, c = (cluster.start(n) for n in "abc")
    started = [start(a, COLORS[n]) for n in "abc"]  # 0.4 cores each: one per node, whichever is asked
    status, body, headers = a.call("POST", "/v1/egress/start", {"roomName": "room-1", **SMALL, **ROOM})
    assert status == 503 and body["error"]["code"] == "CAPACITY_EXCEEDED" and headers["Retry-After"]
    active = [b.wait_status(s["id"], "ACTIVE") for s in started]
    assert sorted(info["node"] for info in active) == ["a", "b", "c"]
    # Any node lists them all, with totals.
    _, listed, _ = c.call("GET", "/v1/egress?status=ACTIVE&limit=2")
    assert listed["total"] == 3 and len(listed["items"]) == 2
    # Update on b, stop on c, whatever node runs each.
    for info in active:
        status, changed, _ = b.call("POST", f"/v1/egress/{info['id']}/layout", {"layout": "speaker"})
        assert status == 200 and changed["layout"] == "speaker", changed
    time.sleep(2)
    for info in active:
        assert c.call("POST", f"/v1/egress/{info['id']}/stop")[0] == 200
    done = [a.wait_status(s["id"], "COMPLETE") for s in started]
    for info, color in zip(done, COLORS.values()):
        assert_recorded(info, color)
    # Each file is on its own node's disk; its download URL, from any node, leads there.
    locations = {d["file"]["location"].split("/data/")[0] for d in done}
    assert len(locations) == 3
    for info in done:
        _, url, _ = b.call("GET", f"/v1/recordings/rec_{info['id'][3:]}/download-url")
        with urllib.request.urlopen(url["downloadUrl"], timeout=30) as resp:
            with open(info["file"]["location"], "rb") as f:
                assert resp.read() == f.read()


def test_a_killed_node_is_settled_once_and_its_webhooks_survive_the_node_that_queued_them(cluster, webhooks,
                                                                                         own_receiver):
    a, b = cluster.start("a"), cluster.start("b")
    mine = own_receiver  # kept with the egress in Redis
    webhooks.post_status = mine.post_status = 500  # the receivers are down: every event waits in the shared outbox
    info = start(a, COLORS["a"], webhooks=[{"url": mine.url, "includeEvents": ["recording.failed"]}])
    victim_name = a.wait_status(info["id"], "ACTIVE")["node"]
    victim, survivor = (a, b) if victim_name == "a" else (b, a)
    time.sleep(1.5)
    t0 = time.monotonic()
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    failed = survivor.wait_status(info["id"], "FAILED", timeout=20)
    assert time.monotonic() - t0 <= 20
    assert failed["errorCode"] == "NODE_LOST" and f"node {victim_name}" in failed["error"]
    assert failed["file"]["location"].endswith(".mp4") and failed["file"]["node"] == victim_name
    webhooks.post_status = mine.post_status = 200  # back: the survivor delivers what the dead node queued, and the end
    wait_for(lambda: final_events(webhooks, info["id"]) and mine.posts, 40, "the final webhook")
    time.sleep(3)
    events = [json.loads(body) for _, body in webhooks.posts if info["id"] in body.decode()]
    assert [e["event"] for e in events] == ["recording.started", "recording.failed"]
    assert len({e["id"] for e in events}) == 2 and events[1]["data"]["errorCode"] == "NODE_LOST"
    assert events[1]["data"]["fileUrl"] == failed["file"]["location"]  # what was recorded is kept: it says where
    # The survivor told the request's receiver too: the one event it asked for, the same event.
    assert [json.loads(body) for _, body in mine.posts] == [events[1]]
    # The killed node's worker went with it (its file stays, playable up to the kill).
    wait_for(lambda: not [p for p in _pids() if info["id"] in _cmdline(p)], 15, "the worker's end")


def test_a_frozen_node_is_fenced_then_joins_again_and_changes_nothing_settled(cluster):
    a, b = cluster.start("a"), cluster.start("b")
    info = start(a, COLORS["a"])
    name = a.wait_status(info["id"], "ACTIVE")["node"]
    frozen, other = (a, b) if name == "a" else (b, a)
    os.kill(frozen.proc.pid, signal.SIGSTOP)
    failed = other.wait_status(info["id"], "FAILED", timeout=20)
    assert failed["errorCode"] == "NODE_LOST"
    os.kill(frozen.proc.pid, signal.SIGCONT)
    # It learns it was lost, stops its worker, joins again as new and takes work again.
    wait_for(lambda: not [p for p in _pids() if info["id"] in _cmdline(p)], 40, "the fenced node's worker to stop")
    wait_for(lambda: frozen.call("GET", "/readyz", key=None)[0] == 200, 40, "the node back")
    again = other.call("GET", f"/v1/egress/{info['id']}")[1]
    assert (again["status"], again["errorCode"]) == ("FAILED", "NODE_LOST")


def test_a_node_cut_off_from_redis_stops_taking_work_and_comes_back(cluster):
    a, b = cluster.start("a"), cluster.start("b")
    info = start(a, COLORS["a"])
    name = a.wait_status(info["id"], "ACTIVE")["node"]
    cut, other = (a, b) if name == "a" else (b, a)
    cluster.cut(name)
    wait_for(lambda: cut.call("GET", "/readyz", key=None)[0] == 503, 20, "readyz 503 on the cut node")
    failed = other.wait_status(info["id"], "FAILED", timeout=20)
    assert failed["errorCode"] == "NODE_LOST"
    cluster.restore(name)
    wait_for(lambda: cut.call("GET", "/readyz", key=None)[0] == 200, 40, "the node back")
    wait_for(lambda: not [p for p in _pids() if info["id"] in _cmdline(p)], 40, "its worker to stop")
    assert other.call("GET", f"/v1/egress/{info['id']}")[1]["status"] == "FAILED"
    # Back in the cluster: it records again.
    again = start(cut, COLORS["b"])
    assert cut.wait_status(again["id"], "ACTIVE")["status"] == "ACTIVE"
    time.sleep(2.5)
    cut.call("POST", f"/v1/egress/{again['id']}/stop")
    assert_recorded(other.wait_status(again["id"], "COMPLETE"), COLORS["b"])


def test_a_draining_node_finishes_its_egress_and_takes_no_more(cluster):
    a, b = cluster.start("a"), cluster.start("b")
    info = start(a, COLORS["a"])
    name = a.wait_status(info["id"], "ACTIVE")["node"]
    draining, other = (a, b) if name == "a" else (b, a)
    time.sleep(1.5)
    draining.proc.send_signal(signal.SIGTERM)  # drain: its egress finishes its file
    done = other.wait_status(info["id"], "COMPLETE", timeout=60)
    assert_recorded(done, COLORS["a"])
    draining.proc.wait(60)
    nxt = start(other, COLORS["c"])
    assert other.wait_status(nxt["id"], "ACTIVE")["node"] == ("b" if name == "a" else "a")
    time.sleep(1)
    other.call("POST", f"/v1/egress/{nxt['id']}/stop")
    other.wait_status(nxt["id"], "COMPLETE")



def test_auto_egress_duplicates_round_robin_start_one_egress(cluster, webhooks):
    # A LiveKit server that is not there: the egress starts (and then fails to join); what counts is how many.
    livekit = {"COMPOSITOR_LIVEKIT_URL": "ws://127.0.0.1:9", "COMPOSITOR_LIVEKIT_API_KEY": API_KEY,
               "COMPOSITOR_LIVEKIT_API_SECRET": API_SECRET}
    nodes = [cluster.start(n, env=livekit) for n in "abc"]
    status, _, _ = nodes[0].call("PUT", "/v1/egress/auto-egress",
                                 {"enabled": True, "minParticipants": 2, "delaySeconds": 0.5, "quality": "480p"})
    assert status == 200
    events = [event("room_started", "standup"), event("participant_joined", "standup", "alice"),
              event("participant_joined", "standup", "bob"), event("participant_joined", "standup", "carol"),
              event("room_finished", "standup")]
    # Each event to one node and its retry to the next: no node sees two joins, two see the room qualify.
    for i, ev in enumerate(events[:-1]):
        for node in (nodes[i % 3], nodes[(i + 1) % 3]):
            send_webhook(node, ev)

    def standup() -> dict:
        return nodes[1].call("GET", "/v1/egress?roomName=standup")[1]

    wait_for(lambda: standup()["total"], 20, "the auto egress")
    time.sleep(3)  # every node's delay has long run out
    listed = standup()
    assert listed["total"] == 1, listed
    egress_id = listed["items"][0]["id"]
    send_webhook(nodes[2], events[-1])
    nodes[0].wait_status(egress_id, "COMPLETE", "FAILED", "ABORTED", timeout=60)
    wait_for(lambda: final_events(webhooks, egress_id), 20, "its final webhook")
    assert standup()["total"] == 1


def send_webhook(node: Server, ev: dict) -> None:
    """A LiveKit webhook event to one node, signed as livekit-server signs it."""
    body, headers = signed(ev)
    req = urllib.request.Request(node.base + "/v1/livekit/webhook", data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def ingress_env(livekit) -> dict:
    """A node that publishes ingress sessions into `livekit`, with RTMP ingest on a port of its own."""
    return {"COMPOSITOR_LIVEKIT_URL": livekit.http_url, "COMPOSITOR_LIVEKIT_API_KEY": API_KEY,
            "COMPOSITOR_LIVEKIT_API_SECRET": API_SECRET, "COMPOSITOR_INGRESS_RTMP_PORT": str(free_port()),
            "COMPOSITOR_INGRESS_RTMP_HOST": "127.0.0.1"}


def test_an_ingress_runs_where_its_publisher_is_any_node_serves_it_and_a_lost_node_ends_it(cluster, livekit,
                                                                                       webhooks):
    """The ingresses are the cluster's: made on a, pushed to b's RTMP ingest (its session runs there), seen and
    deleted from a; a session on a node that is killed ends in error (NODE_LOST), told once."""
    envs = {n: ingress_env(livekit) for n in "ab"}
    a, b = (cluster.start(n, env=envs[n]) for n in "ab")
    small = {"options": {"frameRate": 15, "layers": [{"width": 320, "height": 180, "bitrate": 300_000}]}}
    status, info, _ = a.call("POST", "/v1/ingress", {"inputType": "rtmp", "roomName": "in-room",
                                                     "participantIdentity": "encoder", "video": small})
    assert status == 201, info
    pushed = f"rtmp://127.0.0.1:{envs['b']['COMPOSITOR_INGRESS_RTMP_PORT']}/live/{info['streamKey']}"
    pusher = push(pushed)
    try:
        live = wait_state(a, info["ingressId"], "ENDPOINT_PUBLISHING")
        assert live["state"]["resourceId"], live
        livekit.wait_published("in-room", {"encoder": 2})
        ready = {n: node.call("GET", "/readyz")[1] for n, node in (("a", a), ("b", b))}
        assert (ready["a"]["ingress"]["active"], ready["b"]["ingress"]["active"]) == (0, 1), ready
        assert (ready["a"]["freeCapacity"], ready["b"]["freeCapacity"]) == (0.5, 0.25), ready
        # One publisher per key, cluster-wide: the same key pushed to a is refused.
        again = push(f"rtmp://127.0.0.1:{envs['a']['COMPOSITOR_INGRESS_RTMP_PORT']}/live/{info['streamKey']}", 10)
        assert again.wait(10) != 0
        status, gone, _ = a.call("DELETE", f"/v1/ingress/{info['ingressId']}")
        assert status == 200 and gone["state"]["status"] == "ENDPOINT_INACTIVE", gone
        assert b.call("GET", f"/v1/ingress/{info['ingressId']}")[0] == 404
        until(lambda: "encoder" not in livekit.participants("in-room"), 10, "the ingress stayed in the room")
        assert pusher.wait(10) != 0  # b dropped its publisher
    finally:
        pusher.kill()
        pusher.wait()
    until(lambda: events_of(webhooks, info["ingressId"]) == ["live.started", "live.ended"], 20,
          lambda: f"live.started then live.ended: {events_of(webhooks, info['ingressId'])}")
    # b's cores are back: one 0.25-core session fits its 0.5 again, twice over.
    assert wait_for(lambda: b.call("GET", "/readyz")[1].get("freeCapacity") == 0.5, 10, "b's cores back")

    status, info, _ = a.call("POST", "/v1/ingress", {"inputType": "rtmp", "roomName": "in-room",
                                                     "participantIdentity": "encoder-2", "video": small})
    pusher = push(f"rtmp://127.0.0.1:{envs['b']['COMPOSITOR_INGRESS_RTMP_PORT']}/live/{info['streamKey']}")
    try:
        wait_state(a, info["ingressId"], "ENDPOINT_PUBLISHING")
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait(10)
        failed = wait_state(a, info["ingressId"], "ENDPOINT_ERROR", timeout=20)
        assert failed["state"]["errorCode"] == "NODE_LOST" and "node b" in failed["state"]["error"], failed
    finally:
        pusher.kill()
        pusher.wait()
    until(lambda: events_of(webhooks, info["ingressId"]) == ["live.started", "live.failed"], 20,
          lambda: f"live.started then live.failed: {events_of(webhooks, info['ingressId'])}")
    # b's ingress worker went with it.
    wait_for(lambda: not [p for p in _pids() if "compositor ingress" in _cmdline(p)
                          and str(cluster.tmp_path / "b") in _cmdline(p)], 15, "b's ingress worker's end")
