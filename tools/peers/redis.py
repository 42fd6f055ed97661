"""A real redis-server on 127.0.0.1 (Debian's), as a cluster runs it: a password, append-only persistence,
its data in a folder of its own. Started on a free port, stopped by its PID."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from pathlib import Path

from .receivers import free_port


class RedisServer:
    """redis-server with `requirepass` and AOF; `url` carries the password (default user)."""

    def __init__(self, workdir: Path):
        if not shutil.which("redis-server"):
            raise RuntimeError("redis-server is not installed (apt install redis-server; make test does it)")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.url = f"redis://:{self.password}@127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        log = open(self.workdir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--requirepass", self.password,
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--dir", str(self.workdir),
             "--protected-mode", "yes", "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 10
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {(self.workdir / 'redis.log').read_text()[-500:]}")
            time.sleep(0.02)
        return self

    def cli(self, *args: str) -> str:
        """One redis-cli command as the default user; its output."""
        return subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "--no-auth-warning", "-a",
                               self.password, *args], capture_output=True, text=True, timeout=10).stdout.strip()

    def ping(self) -> bool:
        try:
            return self.cli("PING") == "PONG"
        except (OSError, subprocess.TimeoutExpired):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
