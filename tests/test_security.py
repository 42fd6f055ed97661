"""The service tried as an attacker holding an API key (or a LiveKit token with roomRecord) would try it.

Nothing on the server may be read through a request, and nothing the server can reach that the outside
cannot (loopback, private, link-local addresses) may be reached through one: every URL a request names is
refused after its name resolves, at every redirect, and in every request the page makes. Listeners on
127.0.0.1 note each connection they get, so a test shows not only the refusal but that nothing arrived.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
import yaml
from aiohttp import web
from livekit import api
from livekit.protocol import egress as proto
from livekit.protocol import models as lkm

from compositor import analysis
from compositor.outbound import AddressRefused, AllowedHosts, OutboundPolicy, is_public
from compositor.protocol import Status
from compositor.service import PUBLISHED_SECRETS
from compositor.service.seams import EgressRecord
from compositor.service.store import SqliteStore
from compositor.service.webhooks import Webhooks
from tools.peers.livekit import API_KEY, API_SECRET
from tools.peers.receivers import BackgroundApp, ConnectionLog, free_port

from .conftest import KEY, REPO, record_argv
from .support.simulated import until
from .support.storage_servers import AZURITE_KEY, service_account
from .test_service import Server

LIVEKIT_ENV = {"COMPOSITOR_LIVEKIT_URL": "ws://127.0.0.1:9", "COMPOSITOR_LIVEKIT_API_KEY": API_KEY,
               "COMPOSITOR_LIVEKIT_API_SECRET": API_SECRET}
SMALL = {"advanced": {"width": 320, "height": 180}}
SYNTHETIC = {"room": {"participants": [{"name": "A", "color": "#4363d8", "tone": 450}]}}
GREEN = "#00c000"
# Keys this repository once published (compositor-data/ was tracked): burned, and refused by the server.
BURNED_SIGNING_KEY = "bLzaKyS2gKKadSO6lWRZejP6K2r9PVmsZMM9pgEpS5A"
BURNED_WEBHOOK_SECRET = "uRgCA6qkoN9RP03qCyhfch6J8H6abS5oDqTTuwnKGJk"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """`compositor serve` as shipped: no host allowed, a LiveKit server configured (nothing listens there)."""
    server = Server(tmp_path_factory.mktemp("guarded") / "data", local=False, env=LIVEKIT_ENV)
    yield server
    server.stop_server()


@pytest.fixture
def listener():
    log = ConnectionLog()
    yield log
    log.close()


def attacks(port: int) -> list[tuple[str, dict, str]]:
    """(what, request body, the field it should be refused on) for each way a request names 127.0.0.1:port."""
    http = f"http://127.0.0.1:{port}/"
    account, _ = service_account(token_uri=f"{http}token")
    s3 = {"kind": "s3", "bucket": "b", "region": "us-east-1", "accessKey": "AK", "secret": "SK"}
    return [
        ("web page", {"webUrl": http}, "web_url"),
        ("web page by name", {"webUrl": f"http://localhost:{port}/"}, "web_url"),
        ("web page, IPv4-mapped IPv6", {"webUrl": f"http://[::ffff:127.0.0.1]:{port}/"}, "web_url"),
        ("web page, decimal address", {"webUrl": f"http://2130706433:{port}/"}, "web_url"),
        ("web page, 0.0.0.0", {"webUrl": f"http://0.0.0.0:{port}/"}, "web_url"),
        ("template", {"templateUrl": f"{http}template"}, "template_url"),
        ("logo", {**SYNTHETIC, "overlays": {"logo": f"{http}logo.png"}}, "overlays.logo"),
        ("camera clip", {"room": {"participants": [{"name": "A", "color": "#4363d8", "tone": 450,
                                                    "video": f"{http}clip.webm"}]}}, "room.participants.0.video"),
        ("RTMP destination", {**SYNTHETIC, "mode": "stream",
                              "stream": {"urls": [f"rtmp://127.0.0.1:{port}/live/key"]}}, "stream.urls.0"),
        ("RTMPS destination", {**SYNTHETIC, "mode": "both",
                               "stream": {"urls": [f"rtmps://localhost:{port}/live/key"]}}, "stream.urls.0"),
        ("SRT destination", {**SYNTHETIC, "mode": "stream",
                             "stream": {"urls": [f"srt://127.0.0.1:{port}?streamid=x"]}}, "stream.urls.0"),
        ("PCM WebSocket", {"track": {"trackId": "TR_a", "websocketUrl": f"ws://127.0.0.1:{port}/pcm"}},
         "websocket"),
        ("S3 endpoint", {**SYNTHETIC, "storage": {**s3, "endpoint": http}}, "storage.endpoint"),
        ("S3 backup endpoint", {**SYNTHETIC, "backupStorage": {**s3, "endpoint": http}}, "backupStorage.endpoint"),
        ("the file's own S3 endpoint", {**SYNTHETIC, "file": {"storage": {**s3, "endpoint": http}}},
         "file.storage.endpoint"),
        ("the thumbnails' own S3 endpoint", {**SYNTHETIC, "images": {"filenamePrefix": "i/x", "storage": {
            **s3, "endpoint": http}}}, "images.storage.endpoint"),
        ("GCS endpoint", {**SYNTHETIC, "storage": {"kind": "gcs", "bucket": "b", "endpoint": http}},
         "storage.endpoint"),
        ("GCS key's token_uri", {**SYNTHETIC, "storage": {"kind": "gcs", "bucket": "b", "credentials": account}},
         "storage.credentials.token_uri"),
        ("Azure endpoint", {**SYNTHETIC, "storage": {"kind": "azure", "accountName": "devstoreaccount1",
                                                     "accountKey": AZURITE_KEY, "containerName": "c",
                                                     "endpoint": f"{http}devstoreaccount1"}}, "storage.endpoint"),
        ("request's webhook", {**SYNTHETIC, "webhooks": [{"url": f"{http}hook"}]}, "webhooks.0.url"),
        ("request's webhook by name", {**SYNTHETIC, "webhooks": [
            {"url": "https://1.1.1.1/hook"}, {"url": f"http://localhost:{port}/hook", "format": "livekit"}]},
         "webhooks.1.url"),
    ]


def test_no_url_of_a_request_reaches_the_servers_own_addresses(guarded, listener):
    closed = free_port()
    for (what, body, field), (_, closed_body, _) in zip(attacks(listener.port), attacks(closed), strict=True):
        status, answer, _ = guarded.call("POST", "/v1/egress/start", {"roomName": "r", **SMALL, **body})
        assert status == 400, (what, answer)
        error = answer["error"]
        assert (error["code"], error["details"]["field"]) == ("ADDRESS_NOT_ALLOWED", field), (what, error)
        # An open port and a closed one are refused alike: the answer tells nothing of which is which.
        _, other, _ = guarded.call("POST", "/v1/egress/start", {"roomName": "r", **SMALL, **closed_body})
        assert other["error"] == error, what
        assert str(listener.port) not in error["message"]
    assert listener.connections == []
    assert guarded.call("GET", "/v1/egress")[1]["total"] == 0


def test_no_request_names_a_file_of_the_server(guarded):
    data = guarded.data_dir
    refusals = [
        ({"webUrl": f"file://{data}/api-key"}, "web_url"),
        ({"webUrl": "file:///etc/passwd"}, "web_url"),
        ({"room": {"participants": [{"name": "A", "color": "#4363d8", "tone": 450, "video": "/etc/passwd"}]}},
         "room.participants.0.video"),
        # Refused by the request's shape (no field of their own: the rule spans the request).
        ({"overlays": {"logo": str(data / "url-signing-key")}, **SYNTHETIC}, ""),
        ({"layout": str(REPO / "compositor/assets/layouts/grid"), **SYNTHETIC}, ""),
    ]
    for body, field in refusals:
        status, answer, _ = guarded.call("POST", "/v1/egress/start", {"roomName": "r", **SMALL, **body})
        assert status == 400 and answer["error"]["details"].get("field", "") == field, answer
    # Whether a path exists is not told: a missing file is refused with the very same words.
    answers = [guarded.call("POST", "/v1/egress/start", {"roomName": "r", "room": {"participants": [
        {"name": "A", "color": "#4363d8", "tone": 450, "video": path}]}})[1] for path in ("/etc/passwd", "/nope")]
    assert answers[0] == answers[1] and "exist" not in answers[0]["error"]["message"]
    assert guarded.call("GET", "/v1/egress")[1]["total"] == 0


async def test_twirp_refuses_files_and_private_addresses_alike(guarded, listener):
    file = proto.EncodedFileOutput(filepath="x.mp4")
    async with api.LiveKitAPI(url=guarded.base, api_key=API_KEY, api_secret=API_SECRET) as lkapi:
        for url in ("file:///etc/passwd", listener.url(), listener.url(host="localhost")):
            with pytest.raises(api.TwirpError) as refused:
                await lkapi.egress.start_web_egress(proto.WebEgressRequest(url=url, file=file))
            assert (refused.value.code, refused.value.metadata["error_code"]) == (
                "invalid_argument", "ADDRESS_NOT_ALLOWED"), refused.value
        with pytest.raises(api.TwirpError) as refused:
            await lkapi.egress.start_room_composite_egress(proto.RoomCompositeEgressRequest(
                room_name="r", stream_outputs=[proto.StreamOutput(urls=[listener.url("rtmp", "/live/k")])]))
        assert refused.value.metadata["error_code"] == "ADDRESS_NOT_ALLOWED"
        with pytest.raises(api.TwirpError) as refused:
            await lkapi.egress.start_room_composite_egress(proto.RoomCompositeEgressRequest(
                room_name="r", webhooks=[lkm.WebhookConfig(url=listener.url(path="/hook"))]))
        assert (refused.value.metadata["error_code"], refused.value.metadata["field"]) == (
            "ADDRESS_NOT_ALLOWED", "webhooks.0.url")
    assert listener.connections == []


@pytest.mark.parametrize("address", ["10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.100.100.200",
                                     "127.0.0.2", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "fd00:ec2::254",
                                     "fe80::1", "::ffff:10.0.0.1", "64:ff9b::7f00:1", "2002:a00:1::1"])
async def test_private_link_local_and_metadata_addresses_are_refused(address):
    assert not is_public(address)
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(AddressRefused):  # a literal resolves without a query: nothing leaves the machine
        await OutboundPolicy(trusted=False).check_url(f"http://{host}/latest/meta-data/", "web_url")


async def test_public_addresses_pass_and_streams_connect_to_the_checked_address():
    policy = OutboundPolicy(trusted=False)
    assert is_public("8.8.8.8") and is_public("2606:4700::1111")
    assert await policy.check_url("http://8.8.8.8/", "web_url") == ["8.8.8.8"]
    # An RTMP pusher is given the checked address, the name kept for the destination in the tcUrl.
    assert await policy.pinned_stream_url("rtmp://8.8.8.8/live/key") == (
        "rtmp://8.8.8.8:1935/live/key", ["-rtmp_tcurl", "rtmp://8.8.8.8/live"])


class HookSite(BackgroundApp):
    """A request's webhook receiver on an allowed host: keeps each POST's body, and answers it with a redirect to
    `redirect` if given."""

    def __init__(self, redirect: str | None = None):
        self.posts: list[bytes] = []

        async def handle(request):
            self.posts.append(await request.read())
            if redirect:
                raise web.HTTPTemporaryRedirect(redirect)
            return web.json_response({})

        app = web.Application()
        app.router.add_post("/{tail:.*}", handle)
        super().__init__(app)
        self.url = f"http://127.0.0.1:{self.port}/hook"


async def test_a_requests_webhook_is_held_to_the_policy_at_delivery_and_never_redirected(tmp_path, listener):
    site, allowed = HookSite(redirect=listener.url(path="/after-redirect")), HookSite()
    store = SqliteStore(tmp_path / "db")
    policy = OutboundPolicy(AllowedHosts.parse([f"127.0.0.1:{site.port}", f"localhost:{allowed.port}"]),
                            trusted=False)
    hooks = Webhooks(store, [], "secret", retry_base_s=0.05, policy=policy)
    # Receivers an egress kept from when the policy was looser (another node's, or before the operator narrowed it):
    # each delivery asks the policy again. An allowed name is reached at the address its check resolved.
    direct, by_name = listener.url(path="/direct"), listener.url(path="/by-name", host="localhost")
    reached = f"http://localhost:{allowed.port}/hook"
    kept = [{"url": url, "format": "baxcloud", "include_events": [], "exclude_events": []}
            for url in (site.url, direct, by_name, reached)]
    await store.create(EgressRecord(id="EG_1", room_name="r", mode="record", layout="grid", quality="720p",
                                    request={}, webhooks=kept))
    await store.update("EG_1", events=hooks.for_change, status=Status.ACTIVE, started_at=1.0)
    hooks.start()

    async def retried():
        rows = store._db.execute("SELECT url, attempts, last_error FROM outbox WHERE delivered_at IS NULL").fetchall()
        return rows if allowed.posts and all(attempts >= 2 for _, attempts, _ in rows) else None

    try:
        errors = {url: error for url, _, error in await until(retried)}
    finally:
        await hooks.stop()
        await store.close()
        site.close()
        allowed.close()
    assert reached not in errors and [json.loads(b)["event"] for b in allowed.posts] == ["recording.started"]
    assert errors[site.url] == "HTTP 307" and len(site.posts) >= 2  # retried, never followed
    assert "not a public address" in errors[direct] and "not a public address" in errors[by_name], errors
    assert listener.connections == []


class Site(BackgroundApp):
    """The attacker's own site on an allowed host: a page that reaches for another port, and a redirect to it."""

    def __init__(self, target: ConnectionLog):
        self.paths: list[str] = []
        page = f"""<!doctype html><html><body style="margin:0;background:{GREEN}">
<img src="{target.url(path='/img.png')}"><iframe src="{target.url(path='/frame')}"></iframe>
<script>
fetch("{target.url(path='/fetch')}").catch(() => {{}});
fetch("{target.url(path='/fetch', host='localhost')}").catch(() => {{}});
navigator.sendBeacon("{target.url(path='/beacon')}", "x");
new EventSource("{target.url(path='/events')}");
try {{ new WebSocket("{target.url('ws', '/socket')}"); }} catch (e) {{}}
</script></body></html>"""

        async def handle(request):
            self.paths.append(request.path)
            if request.path == "/redirect":
                raise web.HTTPFound(target.url(path="/after-redirect"))
            return web.Response(text=page, content_type="text/html")

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        super().__init__(app)
        self.url = f"http://127.0.0.1:{self.port}"


def _start_web(server: Server, url: str) -> str:
    status, info, _ = server.call("POST", "/v1/egress/start", {"webUrl": url, "maxDuration": 2, **SMALL})
    assert status == 201 and info["roomName"] == "", info  # a page has no room, and none is invented
    return info["id"]


def test_an_allowed_page_reaches_nothing_else_not_even_by_redirect(tmp_path, listener):
    site = Site(listener)
    server = Server(tmp_path / "data", "--allow-host", f"127.0.0.1:{site.port}", local=False)
    try:
        redirected = _start_web(server, f"{site.url}/redirect")
        failed = server.wait_status(redirected, "FAILED", timeout=60)
        assert failed["errorCode"] == "ADDRESS_NOT_ALLOWED", failed
        done = server.wait_status(_start_web(server, f"{site.url}/page"), "LIMIT_REACHED", "FAILED", timeout=60)
    finally:
        server.stop_server()
        site.close()
    assert listener.connections == []
    assert "/page" in site.paths and "/redirect" in site.paths
    assert done["status"] == "LIMIT_REACHED", done
    frame = analysis.frame_at(done["file"]["location"], 1.0)
    assert analysis.color_distance(analysis.region_color(frame, 0.6, 0.6, 0.3, 0.3), GREEN) <= 40


def test_stream_destinations_added_while_live_are_held_to_the_policy(guarded, listener):
    info = guarded.start(mode="stream", stream={"urls": []}, **SMALL, **SYNTHETIC)
    try:
        guarded.wait_status(info["id"], "ACTIVE", timeout=60)
        status, answer, _ = guarded.call("POST", f"/v1/egress/{info['id']}/streams",
                                         {"add": [listener.url("rtmp", "/live/key")]})
        assert status == 400 and answer["error"]["code"] == "ADDRESS_NOT_ALLOWED", answer
    finally:
        guarded.call("POST", f"/v1/egress/{info['id']}/stop")
        guarded.wait_status(info["id"], "COMPLETE", "FAILED", timeout=60)
    assert listener.connections == []


def _listening_pids() -> dict[int, list[int]]:
    """Listening TCP ports by process id (from ss)."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    found: dict[int, list[int]] = {}
    for line in out.splitlines():
        port = int(line.split()[3].rsplit(":", 1)[1])
        for pid in (int(p.split("=")[1]) for p in line.split("users:")[-1].split(",") if p.startswith("pid=")):
            found.setdefault(pid, []).append(port)
    return found


def test_chromium_gets_no_secret_and_no_debugging_port(tmp_path, start_record):
    page = tmp_path / "page.html"
    page.write_text(f'<html><body style="background:{GREEN}"></body></html>')
    run = start_record("--width", "320", "--height", "180", "--web-url", f"file://{page}", "--duration", "6",
                       env={"LIVEKIT_API_SECRET": "do-not-leak-this", "AWS_SECRET_ACCESS_KEY": "nor-this"})
    chromium = run.wait_for_status("ACTIVE")["resources"]["pids"]["chromium"]
    environment = Path(f"/proc/{chromium}/environ").read_bytes()
    assert b"do-not-leak-this" not in environment and b"nor-this" not in environment
    assert b"--remote-debugging-pipe" in Path(f"/proc/{chromium}/cmdline").read_bytes()
    listening = _listening_pids()
    session = [pid for pid in listening if os.path.exists(f"/proc/{pid}") and os.getsid(pid) == chromium]
    assert session == [], {pid: listening[pid] for pid in session}
    # What the worker listens on (its page server, its gate, the DevTools bridge) gives no DevTools away.
    for port in listening.get(run.proc.pid, []):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"GET /json/version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        assert b"webSocketDebuggerUrl" not in answer and not answer.startswith(b"HTTP/1.1 200"), (port, answer)
    assert run.finish().code == 0


def _modes(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_stream_keys_are_not_kept_at_rest_and_the_data_dir_is_private(tmp_path, nginx):
    key = "streamkey-not-for-the-db-4711"
    server = Server(tmp_path / "data")
    try:
        info = server.start(mode="both", stream={"urls": [f"rtmp://127.0.0.1:{nginx.port}/live/{key}"]}, **SMALL,
                            **SYNTHETIC)
        server.wait_status(info["id"], "ACTIVE", timeout=60)
        job = server.data_dir / "jobs" / f"{info['id']}.json"
        assert _modes(job) == 0o600 and key in job.read_text()  # the worker's, while it runs
        time.sleep(1.5)
        server.call("POST", f"/v1/egress/{info['id']}/stop")
        done = server.wait_status(info["id"], "COMPLETE", timeout=60)
    finally:
        server.stop_server()
    data = server.data_dir
    assert not job.exists()
    stored = b"".join(p.read_bytes() for p in data.glob("compositor.db*"))
    assert key.encode() not in stored and b"/live/***" in stored
    assert done["streams"][0]["url"].endswith("/live/***")
    recording = Path(done["file"]["location"])
    assert recording.parent == data / "recordings"
    assert _modes(data) == 0o700 and _modes(data / "jobs") == 0o700 and _modes(data / "recordings") == 0o700
    for path in [*data.glob("compositor.db*"), recording, data / "webhook-secret", data / "url-signing-key"]:
        assert _modes(path) == 0o600, path


def test_published_keys_are_never_used(tmp_path):
    tracked = subprocess.run(["git", "ls-files", "compositor-data"], cwd=REPO, capture_output=True, text=True)
    assert tracked.stdout == ""
    assert {hashlib.sha256(k.encode()).hexdigest() for k in (BURNED_SIGNING_KEY, BURNED_WEBHOOK_SECRET)} == \
        PUBLISHED_SECRETS
    data = tmp_path / "data"
    data.mkdir()
    (data / "url-signing-key").write_text(BURNED_SIGNING_KEY)
    (data / "webhook-secret").write_text(BURNED_WEBHOOK_SECRET + "\n")
    server = Server(data)
    server.stop_server()
    for name, burned in (("url-signing-key", BURNED_SIGNING_KEY), ("webhook-secret", BURNED_WEBHOOK_SECRET)):
        fresh = (data / name).read_text().strip()
        assert fresh and fresh != burned and _modes(data / name) == 0o600
    assert "was published" in server.log.read_text()
    refused = subprocess.run([sys.executable, "-m", "compositor", "serve", "--port", "0", "--data-dir", str(data)],
                             cwd=REPO, capture_output=True, text=True, timeout=60,
                             env={**os.environ, "COMPOSITOR_WEBHOOK_SECRET": BURNED_WEBHOOK_SECRET})
    assert refused.returncode != 0 and "published" in refused.stderr


async def test_download_urls_live_no_longer_than_the_server_allows(open_app):
    client, service = await open_app(download_url_max_ttl_s=60, download_url_ttl_s=30)
    recordings = service.settings.recordings_dir
    recordings.mkdir(parents=True, exist_ok=True)
    (recordings / "r.mp4").write_bytes(b"recording")
    from compositor.service.seams import EgressRecord
    await service.store.create(EgressRecord(id="EG_done", room_name="r", mode="record", layout="grid",
                                            quality="720p", request={}, status="COMPLETE",
                                            file={"location": str(recordings / "r.mp4"), "key": "r.mp4", "size": 9}))
    auth = {"Authorization": f"Bearer {KEY}"}
    too_long = await client.get("/v1/recordings/rec_done/download-url?expiresIn=61", headers=auth)
    assert too_long.status == 400 and (await too_long.json())["error"]["details"]["field"] == "expiresIn"
    ok = await client.get("/v1/recordings/rec_done/download-url?expiresIn=60", headers=auth)
    url = (await ok.json())["downloadUrl"]
    assert (await (await client.get(url[url.index("/v1/download/"):])).read()) == b"recording"
    # Even signed with the server's own key, an expiry past the cap is refused.
    from compositor.storage import sign_local_url
    forged = sign_local_url("", "r.mp4", service.settings.url_signing_key, 3600)
    resp = await client.get(forged)
    assert resp.status == 403 and "expired" not in (await resp.json())["error"]["message"]


async def test_malformed_requests_are_refused_not_crashed_on(open_app):
    client, service = await open_app()
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    deep = "[" * 2000 + "]" * 2000
    for body in (deep, '{"roomName": ' + deep + "}"):
        resp = await client.post("/v1/egress/start", data=body, headers=auth)
        assert resp.status == 400, await resp.text()
    for duration in ("1e308", "Infinity", "NaN", "-Infinity"):
        resp = await client.post("/v1/egress/start", headers=auth,
                                 data=f'{{"roomName": "r", "maxDuration": {duration}}}')
        assert resp.status == 400 and (await resp.json())["error"]["details"]["field"] == "maxDuration"
    for url in ("rtmp://u:secretpw@host:99999/live/secretkey", "rtmp://[::1/live/secretkey"):
        resp = await client.post("/v1/egress/start", headers=auth,
                                 json={"roomName": "r", "mode": "stream", "stream": {"urls": [url]}})
        text = await resp.text()
        assert resp.status == 400 and "secretkey" not in text and "secretpw" not in text, text
    # A frame no capacity of this server could ever take is the caller's mistake, not a wait.
    resp = await client.post("/v1/egress/start", headers=auth, json={"roomName": "r", "quality": "4k"})
    assert resp.status == 503  # fits the capacity (4 cores), which is all taken now
    small = await open_app(capacity=1.0)
    resp = await small[0].post("/v1/egress/start", headers=auth, json={"roomName": "r", "quality": "4k"})
    assert resp.status == 400 and (await resp.json())["error"]["details"]["field"] == "quality"
    # Before authentication: an Authorization header that is not UTF-8.
    raw = (b"GET /v1/egress HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xfa\r\nConnection: close\r\n\r\n")
    assert (await _raw(client, raw)).startswith(b"HTTP/1.1 401")
    # A Twirp token that is signed right but carries a room configuration protobuf cannot read.
    claims = {"iss": API_KEY, "sub": "x", "nbf": int(time.time()) - 5, "exp": int(time.time()) + 600,
              "video": {"roomRecord": True}, "roomConfig": {"maxParticipants": "many"}}
    token = jwt.encode(claims, API_SECRET, algorithm="HS256")
    resp = await client.post("/twirp/livekit.Egress/ListEgress", data=b"{}",
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert resp.status == 401 and (await resp.json())["code"] == "unauthenticated"


async def _raw(client, request: bytes) -> bytes:
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(request)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    return answer


def test_slow_clients_are_cut_off(tmp_path):
    server = Server(tmp_path / "data", env={"COMPOSITOR_REQUEST_TIMEOUT_S": "1"})
    port = int(server.base.rsplit(":", 1)[1])
    try:
        # Headers that never end: the connection is closed.
        with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            assert conn.recv(1024) == b""
            assert time.monotonic() - started < 10
        # A body that never comes: 408.
        with socket.create_connection(("127.0.0.1", port), timeout=15) as conn:
            conn.sendall(b"POST /v1/egress/start HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                         + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"room")
            assert conn.recv(1024).startswith(b"HTTP/1.1 408")
    finally:
        server.stop_server()


def _signed_webhook(event: dict) -> tuple[bytes, dict]:
    body = json.dumps(event).encode()
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    token = api.AccessToken(API_KEY, API_SECRET).with_sha256(digest).to_jwt()
    return body, {"Authorization": token, "Content-Type": "application/webhook+json"}


async def test_a_replayed_livekit_webhook_is_acted_on_once(open_app):
    client, service = await open_app()
    event = {"id": "EV_replayed", "event": "room_started", "room": {"sid": "RM_1", "name": "r"},
             "createdAt": int(time.time())}
    body, headers = _signed_webhook(event)
    first = await client.post("/v1/livekit/webhook", data=body, headers=headers)
    assert first.status == 200 and "duplicate" not in await first.json()
    again = await client.post("/v1/livekit/webhook", data=body, headers=_signed_webhook(event)[1])
    assert again.status == 200 and (await again.json())["duplicate"] is True
    stale, stale_headers = _signed_webhook({**event, "id": "EV_old", "createdAt": int(time.time()) - 3 * 86400})
    resp = await client.post("/v1/livekit/webhook", data=stale, headers=stale_headers)
    assert resp.status == 400 and "stale" in (await resp.json())["error"]["message"]


def test_the_compose_file_publishes_nothing_beyond_this_machine():
    compose = yaml.safe_load((REPO / "docker/compose.yaml").read_text())
    for name, service in compose["services"].items():
        assert "--dev" not in service.get("command", []), name
        for port in service.get("ports", []):
            host = port.rsplit(":", 2)[0]
            assert host in ("127.0.0.1", "${COMPOSITOR_BIND:-127.0.0.1}", "${LIVEKIT_BIND:-127.0.0.1}"), (name, port)


def test_the_worker_holds_its_request_to_the_policy_too(tmp_path, listener):
    """The same refusals when `compositor record --untrusted` is run by hand (as the service runs it)."""
    argv = record_argv(["--untrusted", "--width", "320", "--height", "180", "--duration", "1", "--web-url",
                        listener.url()], tmp_path / "x.mp4")
    run = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO)
    error = [json.loads(line) for line in run.stdout.splitlines() if '"error"' in line][0]
    assert run.returncode == 2 and error["code"] == "ADDRESS_NOT_ALLOWED", run.stdout
    assert listener.connections == []
