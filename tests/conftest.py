"""Drive `compositor record` as a user would (a subprocess), and read its events."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from compositor import analysis
from compositor.api import make_app
from compositor.service import Service, Settings
from tools.peers.livekit import API_KEY, API_SECRET
from tools.peers.receivers import NginxRtmp, free_port  # noqa: F401  (tests import free_port from here)

from .support.livekit import livekit, livekit_service  # noqa: F401  (per module that asks)
from .support.simulated import redis_server  # noqa: F401  (per module that asks)

# Storage servers as fixtures for every test module (each module gets its own servers).
from .support.storage_servers import azure_server, gcs_account, gcs_server, s3_server, token_server  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
#: the API key test services take
KEY = "test-key-123"
# Small frames keep the suite light on a 2-core machine.
SMALL = ["--width", "640", "--height", "360"]


@pytest.fixture(scope="session")
def nginx(tmp_path_factory):
    """nginx-rtmp on 127.0.0.1 for the whole session: app `live` records, app `reject` refuses every key."""
    server = NginxRtmp(tmp_path_factory.mktemp("nginx"))
    yield server
    server.close()


@dataclass
class Run:
    code: int
    events: list[dict]
    stderr: str
    output: Path | None

    def of_type(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    @property
    def result(self) -> dict:
        results = self.of_type("result")
        assert results, f"no result (exit {self.code}): {self.of_type('error')} {self.stderr[-2000:]}"
        return results[0]

    @property
    def error(self) -> dict:
        errors = self.of_type("error")
        assert errors, f"no error event (exit {self.code}): {self.events}"
        return errors[0]

    @property
    def resources(self) -> dict:
        active = [e for e in self.of_type("status") if e["status"] == "ACTIVE"]
        assert active, f"never ACTIVE: {self.events}"
        return active[0]["resources"]


def record_argv(args: list[str], output: Path | None) -> list[str]:
    """`compositor record` with JSON events; no -o when `output` is None (live outputs only)."""
    out = ["-o", str(output)] if output else []
    return [sys.executable, "-m", "compositor", "record", "--events", "json", *out, *args]


def parse_events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.fixture
def record(tmp_path):
    """record(*args, output='out.mp4', env=None) -> Run, through the real pipeline."""

    def _record(*args: str, output: str | None = "out.mp4", env: dict | None = None, timeout: float = 120) -> Run:
        out = tmp_path / output if output else None
        proc = subprocess.run(record_argv(list(args), out), capture_output=True, text=True, timeout=timeout,
                              cwd=REPO, env=env)
        return Run(proc.returncode, parse_events(proc.stdout), proc.stderr, out)

    return _record


@dataclass
class LiveRun:
    """A recording running in the background, for signal and crash tests."""

    proc: subprocess.Popen
    output: Path | None
    events: list[dict] = field(default_factory=list)

    def wait_for_status(self, status: str, timeout: float = 30) -> dict:
        return self.wait_for(lambda e: e["type"] == "status" and e["status"] == status, timeout, status)

    def wait_for(self, matches, timeout: float = 30, what: str = "event") -> dict:
        """Read events until one matches (kept in `events`); fails after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            event = json.loads(line)
            self.events.append(event)
            if matches(event):
                return event
        raise AssertionError(f"no {what} within {timeout}s: {self.events}")

    def send(self, command: dict) -> None:
        """A command on the worker's stdin (needs control=True)."""
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 30) -> Run:
        out, err = self.proc.communicate(timeout=timeout)
        self.events += parse_events(out)
        return Run(self.proc.returncode, self.events, err, self.output)


@pytest.fixture
def start_record(tmp_path):
    runs: list[LiveRun] = []

    def _start(*args: str, output: str | None = "live.mp4", control: bool = False, env: dict | None = None) -> LiveRun:
        out = tmp_path / output if output else None
        argv = record_argv([*args, *(["--control", "stdin"] if control else [])], out)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                start_new_session=True, stdin=subprocess.PIPE if control else None,
                                env={**os.environ, **env} if env else None)
        run = LiveRun(proc, out)
        runs.append(run)
        return run

    yield _start
    for run in runs:
        if run.proc.poll() is None:
            os.killpg(run.proc.pid, signal.SIGKILL)
            run.proc.wait()


def _stat(pid: int) -> list[str]:
    """A process's /proc stat fields after its name (state, parent pid, ...); none once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"


def _parent(pid: int) -> int:
    """The pid of a process's parent; 0 once it is gone."""
    fields = _stat(pid)
    return int(fields[1]) if fields else 0


def assert_released(resources: dict, timeout: float = 5) -> None:
    """Everything the job held is gone: processes (no zombies), display, temp dir."""
    deadline = time.monotonic() + timeout
    while True:
        left = {name: pid for name, pid in resources["pids"].items() if Path(f"/proc/{pid}").exists()}
        number = resources["display"].lstrip(":")
        leftovers = [p for p in (f"/tmp/.X{number}-lock", f"/tmp/.X11-unix/X{number}", resources["workdir"])
                     if Path(p).exists()]
        mentioning = [pid for pid in _pids() if resources["workdir"] in _cmdline(pid)]
        if not left and not leftovers and not mentioning:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"left behind: processes {left} {mentioning} "
                                 f"(alive: {[n for n, p in left.items() if alive(p)]}), files {leftovers}")
        time.sleep(0.1)


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def assert_color(frame, rect: tuple[float, float, float, float], color: str, tol: float = 40) -> None:
    rgb = analysis.region_color(frame, *rect)
    assert analysis.color_distance(rgb, color) <= tol, f"region {rect} is {rgb.round()}, expected {color}"


class HttpReceiver:
    """An HTTP server on 127.0.0.1 run from a thread: serves `page` on every GET, records GETs and POSTs."""

    def __init__(self, port: int = 0, page: str = ""):
        import asyncio
        import threading

        from aiohttp import web

        self.posts: list[tuple[dict, bytes]] = []
        self.gets: list[str] = []
        #: what POSTs are answered (a test sets 500 to play a receiver that fails; those POSTs are counted in
        #: `refused`, not kept)
        self.post_status = 200
        self.refused = 0
        self._loop = asyncio.new_event_loop()

        async def get(request):
            self.gets.append(request.path)
            return web.Response(text=page, content_type="text/html")

        async def post(request):
            body = await request.read()
            if self.post_status != 200:
                self.refused += 1
                return web.json_response({"ok": False}, status=self.post_status)
            self.posts.append((dict(request.headers), body))
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_get("/{tail:.*}", get)
        app.router.add_post("/{tail:.*}", post)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()


@pytest.fixture
async def open_app(tmp_path):
    """open_app(**settings) -> a test client of the real app over a real Service (its capacity all held, so a
    start it attempts is refused CAPACITY_EXCEEDED and logged, with no worker launched)."""
    opened: list[tuple[TestClient, Service]] = []

    async def _open(**settings) -> tuple[TestClient, Service]:
        base = dict(api_keys=[KEY], capacity=4.0, livekit_api_key=API_KEY, livekit_api_secret=API_SECRET,
                    livekit_url="ws://127.0.0.1:9", url_signing_key="k")
        service = Service.on_this_node(Settings(data_dir=tmp_path / f"data{len(opened)}", **{**base, **settings}))
        # Capacity enough for any frame (a frame that could never fit is a 400), all of it taken.
        service.dispatcher.hold("EG_busy", service.dispatcher.capacity)
        service.start_background()
        client = TestClient(TestServer(make_app(service)))
        await client.start_server()
        opened.append((client, service))
        return client, service

    yield _open
    for client, service in opened:
        if not service.draining:
            await service.shutdown()
        await client.close()
