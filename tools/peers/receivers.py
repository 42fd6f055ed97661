"""Real live-stream receivers on 127.0.0.1: nginx-rtmp, stunnel (RTMPS) and an ffmpeg SRT listener."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

NGINX_RTMP_MODULE = "/usr/lib/nginx/modules/ngx_rtmp_module.so"


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` different free TCP ports on 127.0.0.1: each socket stays bound until all are taken, so two calls in a
    row cannot hand out the same port (a server given one port twice fails to bind its second listener)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """A TCP listener on the port, seen without connecting (a connect would use up one-shot listeners)."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
    return bool(out.strip())


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    """Until `url` answers HTTP at all (any status)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no answer from {url} after {timeout} s")
            time.sleep(0.05)


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not ready within {timeout} s")
        time.sleep(0.05)


class NginxRtmp:
    """nginx with the RTMP module: app `live` records every publish; app `reject` refuses every key."""

    def __init__(self, root: Path, port: int | None = None, http_port: int | None = None):
        self.root = root
        self.records = root / "records"
        for d in (self.records, root / "tmp", root / "logs"):
            d.mkdir(parents=True, exist_ok=True)
        ports = free_ports(2)
        self.port, self.http_port = port or ports[0], http_port or ports[1]
        temp = " ".join(f"{k}_temp_path {root}/tmp;" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (root / "nginx.conf").write_text(f"""
load_module {NGINX_RTMP_MODULE};
daemon off;
user root;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/logs/error.log info;
events {{ worker_connections 128; }}
rtmp {{
  server {{
    listen 127.0.0.1:{self.port};
    chunk_size 4096;
    application live {{ live on; record all; record_path {self.records}; record_unique on; }}
    application reject {{ live on; on_publish http://127.0.0.1:{self.http_port}/deny; }}
  }}
}}
http {{
  access_log off;
  {temp}
  server {{
    listen 127.0.0.1:{self.http_port};
    location /deny {{ return 403; }}
    location /control {{ rtmp_control all; }}
  }}
}}
""")
        self.proc = subprocess.Popen(["nginx", "-p", str(root), "-c", str(root / "nginx.conf"),
                                      "-e", str(root / "logs/error.log")], start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: listening(self.port) and listening(self.http_port), 10, "nginx")
        # `listening` sees any listener on the port; nginx that could not bind keeps retrying for a while, then exits.
        failure = self.failure()
        if failure:
            self.close()
            raise AssertionError(failure)

    def failure(self) -> str | None:
        """Why this nginx is not serving (it exited, or could not bind a port), in nginx's own words; None if it
        is."""
        log = (self.root / "logs/error.log").read_text(errors="replace")
        if self.proc.poll() is not None:
            return f"nginx-rtmp exited ({self.proc.returncode}): {log[-3000:]}"
        failed = [line for line in log.splitlines() if "bind()" in line]
        return f"nginx-rtmp did not take its ports: {failed}" if failed else None

    def url(self, app: str, key: str) -> str:
        """The RTMP address of `app`/`key`; fails if nginx is not serving, so a receiver that died shows why
        instead of as every destination's "connection refused"."""
        failure = self.failure()
        if failure:
            raise AssertionError(failure)
        return f"rtmp://127.0.0.1:{self.port}/{app}/{key}"

    def recordings(self, key: str) -> list[Path]:
        """The FLV files nginx recorded for a stream key, oldest first."""
        return sorted(self.records.glob(f"{key}-*.flv"), key=lambda p: p.stat().st_mtime)

    def drop(self, key: str, app: str = "live") -> None:
        """Cut the publisher of `key` off, as a failing server would."""
        url = f"http://127.0.0.1:{self.http_port}/control/drop/publisher?app={app}&name={key}"
        urllib.request.urlopen(url, timeout=5).read()

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def close(self) -> None:
        for pid in self.worker_pids():
            os.kill(pid, signal.SIGCONT)
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Stunnel:
    """TLS in front of a TCP port, with a self-signed CA (`ca`) and a certificate for 127.0.0.1."""

    def __init__(self, root: Path, target_port: int):
        root.mkdir(parents=True, exist_ok=True)
        self.ca = root / "ca.pem"
        openssl = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        subprocess.run([*openssl, "-keyout", root / "ca.key", "-out", self.ca, "-subj", "/CN=compositor test CA"],
                       check=True, capture_output=True)
        subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", root / "srv.key",
                        "-out", root / "srv.csr", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
        (root / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
        subprocess.run(["openssl", "x509", "-req", "-in", root / "srv.csr", "-CA", self.ca, "-CAkey", root / "ca.key",
                        "-CAcreateserial", "-out", root / "srv.pem", "-days", "2", "-extfile", root / "ext.cnf"],
                       check=True, capture_output=True)
        self.port = free_port()
        (root / "stunnel.conf").write_text(
            f"foreground = yes\npid =\n[rtmps]\naccept = 127.0.0.1:{self.port}\nconnect = 127.0.0.1:{target_port}\n"
            f"cert = {root / 'srv.pem'}\nkey = {root / 'srv.key'}\n")
        self.proc = subprocess.Popen([shutil.which("stunnel4") or "stunnel", str(root / "stunnel.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(lambda: listening(self.port), 10, "stunnel")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


class SrtListener:
    """`ffmpeg` listening for one SRT caller (with a passphrase), saving what it gets as MPEG-TS."""

    def __init__(self, out: Path, passphrase: str):
        self.port = free_udp_port()
        self.out = out
        self.passphrase = passphrase
        self.proc = subprocess.Popen(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i",
             f"srt://127.0.0.1:{self.port}?mode=listener&timeout=60000000&passphrase={passphrase}",
             "-map", "0", "-c", "copy", str(out)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        time.sleep(0.3)  # UDP: nothing to poll; the listener binds at once

    def url(self, streamid: str) -> str:
        return f"srt://127.0.0.1:{self.port}?passphrase={self.passphrase}&streamid={streamid}"

    def finish(self, timeout: float = 10) -> Path:
        """Wait for the caller to hang up and the file to close."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(5)
        return self.out

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class BackgroundApp:
    """An aiohttp app served on 127.0.0.1 from a thread of its own (tests themselves are synchronous)."""

    def __init__(self, app):
        import asyncio
        import threading

        from aiohttp import web

        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app)
        ready = threading.Event()

        async def serve():
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            ready.set()

        self._thread = threading.Thread(target=lambda: (self._loop.run_until_complete(serve()),
                                                        self._loop.run_forever()), daemon=True)
        self._thread.start()
        assert ready.wait(10), "the test server did not start"

    def close(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class PcmReceiver(BackgroundApp):
    """A WebSocket server that keeps what a track egress sends: PCM bytes and text events."""

    def __init__(self):
        from aiohttp import web

        self.pcm = bytearray()
        self.texts: list[str] = []

        async def socket(request):
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                if msg.type == web.WSMsgType.BINARY:
                    self.pcm += msg.data
                elif msg.type == web.WSMsgType.TEXT:
                    self.texts.append(msg.data)
            return ws

        app = web.Application()
        app.router.add_get("/pcm", socket)
        super().__init__(app)
        self.url = f"ws://127.0.0.1:{self.port}/pcm?track=x&key=secret-key"

    def samples(self):
        """What arrived as mono float samples (the PCM is 48 kHz stereo s16le)."""
        import numpy as np

        data = np.frombuffer(bytes(self.pcm[: len(self.pcm) // 4 * 4]), "<i2").reshape(-1, 2)
        return data.mean(axis=1) / 32768.0


class TcpProxy:
    """A TCP relay on 127.0.0.1 to `port` that can cut every connection (and refuse new ones) for a while:
    a short network loss between the recorder and a server."""

    def __init__(self, port: int):
        import asyncio
        import threading

        self.port = free_port()
        self._upstream = port
        self._open: set = set()
        self._down_until = 0.0
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def relay(reader, writer):
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        async def client(reader, writer):
            if time.monotonic() < self._down_until:
                writer.close()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream)
            except OSError:
                writer.close()
                return
            pair = (writer, up_writer)
            self._open.add(pair)
            await asyncio.gather(relay(reader, up_writer), relay(up_reader, writer))
            self._open.discard(pair)

        async def serve():
            self._server = await asyncio.start_server(client, "127.0.0.1", self.port)
            ready.set()

        self._thread = threading.Thread(target=lambda: (self._loop.run_until_complete(serve()),
                                                        self._loop.run_forever()), daemon=True)
        self._thread.start()
        assert ready.wait(10), "the proxy did not start"

    def cut(self, seconds: float) -> None:
        """Drop every open connection now and refuse new ones for `seconds`."""
        def drop():
            self._down_until = time.monotonic() + seconds
            for pair in list(self._open):
                for writer in pair:
                    writer.transport.abort()
        self._loop.call_soon_threadsafe(drop)

    def close(self) -> None:
        import asyncio

        async def stop():
            self._server.close()
            for pair in list(self._open):
                for writer in pair:
                    writer.transport.abort()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class ConnectionLog:
    """A TCP listener on 127.0.0.1 that notes every connection it gets and closes it: the place an attack
    would reach, to show that nothing did."""

    def __init__(self):
        import socket
        import threading

        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.connections: list[tuple[str, int]] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def url(self, scheme: str = "http", path: str = "/", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self._socket.accept()
            except OSError:
                return
            self.connections.append(peer[:2])
            conn.close()

    def close(self) -> None:
        import socket

        self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        self._thread.join(5)
