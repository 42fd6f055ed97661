"""The node's RTMP ingest: nginx with the RTMP module takes publishers (and stunnel, RTMPS in front of it), and
asks the service about every stream key before it accepts one.

nginx-rtmp calls `on_publish` with the stream name (the key) and waits: a 2xx admits the publisher, anything
else drops it. Those calls reach a small HTTP server of the service's own on 127.0.0.1, under a path holding a
secret made per run, so only this nginx can make them; the public API never serves them. Only 127.0.0.1 may
play a stream (the ingress worker reads its publisher from there): a key never lets anyone else watch.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from ..errors import CompositorError, MissingDependency
from ..process import ManagedProcess
from .settings import private_dir

log = logging.getLogger(__name__)

NGINX_RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
APP = "live"
READY_TIMEOUT_S = 10.0

#: What the service answers for a key: None admits the publisher, an error refuses it (logged, not shown to it).
OnPublish = Callable[[str, str], Awaitable[None]]
OnPublishDone = Callable[[str], Awaitable[None]]


class RtmpServer:
    """Owns this node's nginx-rtmp (and stunnel for RTMPS) and the hook server they call."""

    def __init__(self, folder: Path, *, host: str, port: int, on_publish: OnPublish, on_done: OnPublishDone,
                 rtmps_port: int | None = None, tls_cert: Path | None = None, tls_key: Path | None = None):
        self.folder = folder
        self.host, self.port = host, port
        self.rtmps_port, self.tls_cert, self.tls_key = rtmps_port, tls_cert, tls_key
        self._on_publish, self._on_done = on_publish, on_done
        self._secret = secrets.token_urlsafe(24)
        self._hooks: web.AppRunner | None = None
        #: stream key -> set once a worker plays it (idle streams on: a player may come before its publisher)
        self._played: dict[str, asyncio.Event] = {}
        #: nginx's control port (127.0.0.1 only): drops publishers
        self._control_port = 0
        self._nginx: ManagedProcess | None = None
        self._stunnel: ManagedProcess | None = None

    def play_url(self, stream_key: str) -> str:
        """Where a worker on this node reads the publisher of `stream_key`."""
        return f"rtmp://127.0.0.1:{self.port}/{APP}/{stream_key}"

    async def start(self) -> None:
        """Start the hook server, nginx and (with a certificate) stunnel; raise if one does not come up."""
        if not NGINX_RTMP_MODULE.exists() or not shutil.which("nginx"):
            raise MissingDependency("RTMP ingress needs nginx with the RTMP module (apt install nginx-light "
                                    "libnginx-mod-rtmp)")
        private_dir(self.folder)
        (self.folder / "tmp").mkdir(exist_ok=True)
        app = web.Application()
        app.router.add_post(f"/{self._secret}/publish", self._publish)
        app.router.add_post(f"/{self._secret}/done", self._done)
        app.router.add_post(f"/{self._secret}/play", self._play)
        self._hooks = web.AppRunner(app, access_log=None)
        await self._hooks.setup()
        site = web.TCPSite(self._hooks, "127.0.0.1", 0)
        await site.start()
        hook_port = site._server.sockets[0].getsockname()[1]
        self._control_port = _free_port()
        conf = self.folder / "nginx.conf"
        conf.write_text(self._nginx_conf(hook_port))
        self._nginx = ManagedProcess("nginx-rtmp", ["nginx", "-p", str(self.folder), "-c", str(conf), "-e",
                                                    str(self.folder / "error.log")])
        await self._nginx.start()
        await _until_listening(self._nginx, "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host,
                               self.port, self.folder / "error.log")
        await _until_listening(self._nginx, "127.0.0.1", self._control_port, self.folder / "error.log")
        if self.rtmps_port:
            tls = self.folder / "stunnel.conf"
            tls.write_text(f"foreground = yes\npid =\n[rtmps]\naccept = {self.host}:{self.rtmps_port}\n"
                           f"connect = 127.0.0.1:{self.port}\ncert = {self.tls_cert}\nkey = {self.tls_key}\n")
            binary = shutil.which("stunnel4") or shutil.which("stunnel")
            if not binary:
                raise MissingDependency("RTMPS ingress needs stunnel (apt install stunnel4)")
            self._stunnel = ManagedProcess("stunnel", [binary, str(tls)])
            await self._stunnel.start()
            await _until_listening(self._stunnel, "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host,
                                   self.rtmps_port, None)
        log.info("RTMP ingest on %s:%d%s", self.host, self.port,
                 f", RTMPS on {self.host}:{self.rtmps_port}" if self.rtmps_port else "")

    def _nginx_conf(self, hook_port: int) -> str:
        hooks = f"http://127.0.0.1:{hook_port}/{self._secret}"
        temp = " ".join(f"{k}_temp_path {self.folder}/tmp;" for k in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                      "scgi"))
        # master_process off: one process, this owner's child, stopped with it. The http server is its control
        # (dropping a publisher), on 127.0.0.1 only.
        return f"""load_module {NGINX_RTMP_MODULE};
daemon off;
master_process off;
worker_processes 1;
pid {self.folder}/nginx.pid;
error_log {self.folder}/error.log warn;
events {{ worker_connections 512; }}
rtmp {{
  server {{
    listen {self.host}:{self.port};
    chunk_size 4096;
    notify_method post;
    application {APP} {{
      live on;
      record off;
      allow play 127.0.0.1;
      deny play all;
      publish_notify on;
      on_publish {hooks}/publish;
      on_publish_done {hooks}/done;
      on_play {hooks}/play;
    }}
  }}
}}
http {{
  access_log off;
  {temp}
  server {{
    listen 127.0.0.1:{self._control_port};
    location /control {{ rtmp_control all; }}
    location / {{ return 404; }}
  }}
}}
"""

    def expect_player(self, stream_key: str) -> None:
        """A worker is about to play `stream_key` (call before starting it, then `until_played`)."""
        self._played[stream_key] = asyncio.Event()

    async def until_played(self, stream_key: str, timeout: float) -> bool:
        """Until the worker plays `stream_key` (False after `timeout`). The publisher is admitted only then, so
        the worker gets its stream from the first key frame instead of waiting a whole GOP for the next one."""
        played = self._played.get(stream_key)
        try:
            await asyncio.wait_for(played.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._played.pop(stream_key, None)

    async def _play(self, request: web.Request) -> web.Response:
        form = await request.post()
        played = self._played.get(str(form.get("name", "")))
        if played is not None:
            played.set()
        return web.Response(status=204)

    async def drop(self, stream_key: str) -> None:
        """Cut the publisher of `stream_key` off (its session ended, or its ingress is gone); nothing if none."""
        url = f"http://127.0.0.1:{self._control_port}/control/drop/publisher?app={APP}&name={stream_key}"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                async with session.get(url) as resp:
                    await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("could not drop an RTMP publisher: %s", exc)

    async def _publish(self, request: web.Request) -> web.Response:
        form = await request.post()
        key, addr = str(form.get("name", "")), str(form.get("addr", ""))
        if form.get("app") != APP:
            return web.Response(status=404)
        try:
            await self._on_publish(key, addr)
        except CompositorError as err:
            log.warning("RTMP publisher from %s refused: %s", addr or "?", err.message)
            return web.Response(status=403)
        except Exception:
            log.exception("RTMP publisher from %s: the check failed", addr or "?")
            return web.Response(status=500)
        return web.Response(status=204)

    async def _done(self, request: web.Request) -> web.Response:
        form = await request.post()
        try:
            await self._on_done(str(form.get("name", "")))
        except Exception:  # nginx goes on either way; the worker sees the end of its stream too
            log.exception("RTMP publisher end: could not report it")
        return web.Response(status=204)

    async def stop(self) -> None:
        """Stop stunnel, nginx and the hook server. Idempotent."""
        for proc in (self._stunnel, self._nginx):
            if proc is not None:
                await proc.stop()
        self._stunnel = self._nginx = None
        if self._hooks is not None:
            await self._hooks.cleanup()
            self._hooks = None


async def _until_listening(proc: ManagedProcess, host: str, port: int, log_file: Path | None) -> None:
    """Until something accepts on host:port, or raise when `proc` ends first or takes too long."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_S
    while loop.time() < deadline:
        if not proc.running:
            break
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    tail = log_file.read_text()[-500:] if log_file and log_file.exists() else "\n".join(proc.stderr_tail)
    await proc.stop()
    raise MissingDependency(f"{proc.name} did not start listening on {host}:{port}: {tail.strip()}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
