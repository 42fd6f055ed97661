"""One owner per child process: start it, watch it, always stop it.

Children run in their own session, so a terminal's Ctrl-C reaches only the
worker, which then stops them in order (the encoder must finish its file
before the browser and display go away). Each child also gets
PR_SET_PDEATHSIG(SIGTERM), so even a SIGKILLed worker leaves nothing
running: SIGTERM rather than SIGKILL lets ffmpeg close its file and Xvfb
remove its lock and socket. (The service gives its workers SIGHUP instead: a
dying process sends one per thread, and a worker reads a second SIGTERM as
"stop now".)
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _child_setup(fds: tuple[tuple[int, int], ...], death_signal: int):
    """What runs in the child before exec: die with the parent, and put inherited pipes at their numbers."""

    def setup() -> None:
        _libc.prctl(_PR_SET_PDEATHSIG, death_signal)
        for number, fd in fds:
            os.dup2(fd, number)

    return setup


class ManagedProcess:
    """A child process with a name, a bounded stderr tail and a guaranteed stop."""

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 stop_signal: int = signal.SIGTERM, stop_timeout: float = 3.0,
                 stdout_pipe: bool = False, stdin_pipe: bool = False, pass_fds: Sequence[int] = (),
                 fds: Mapping[int, int] | None = None, umask: int = -1, redact: Callable[[str], str] = str,
                 death_signal: int = signal.SIGTERM):
        """`death_signal` reaches the child when this process dies: once for each of its threads, as each
        goes (the child passes to the next), so a child that counts signals must take this one apart."""
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        self._stdout_pipe = stdout_pipe
        self._stdin_pipe = stdin_pipe
        #: applied to everything this owner logs or reports (argv, stderr): hides secrets
        self.redact = redact
        self._pass_fds = tuple(pass_fds)
        #: the child's file descriptor number -> this process's descriptor it gets there (numbers under 10;
        #: the parent's descriptors must be 10 or higher, so placing one never closes another)
        self._fds = tuple((fds or {}).items())
        self._umask = umask  # -1: this process's own
        self._death_signal = death_signal
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._stderr_task: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        log.debug("start %s: %s", self.name, self.redact(" ".join(self.argv)))
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE if self._stdin_pipe else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if self._stdout_pipe else asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            start_new_session=True,
            preexec_fn=_child_setup(self._fds, self._death_signal),
            pass_fds=self._pass_fds + tuple(number for number, _ in self._fds),
            umask=self._umask,
        )
        self._stderr_task = asyncio.create_task(self._read_stderr())

    async def _read_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        async for raw in self.proc.stderr:
            line = self.redact(raw.decode(errors="replace").rstrip())
            if line:
                self.stderr_tail.append(line)
                log.debug("%s: %s", self.name, line)

    async def wait(self) -> int:
        """Wait for exit (and for stderr to drain); returns the exit code."""
        assert self.proc
        code = await self.proc.wait()
        if self._stderr_task:
            await asyncio.shield(self._stderr_task)
        return code

    def describe_exit(self) -> str:
        """A one-line account of how the process ended, with its last words."""
        code = self.proc.returncode if self.proc else None
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit status {code}"
        tail = " | ".join(list(self.stderr_tail)[-3:])
        return f"{self.name} ended ({how})" + (f": {tail}" if tail else "")

    def signal(self, sig: int) -> None:
        """Signal the child itself. Not its session: what it started is its own to stop (a worker's Playwright
        driver, still loading, dies of a SIGINT it would ignore a moment later), and stop() kills what is left."""
        if self.running:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    async def stop(self, timeout: float | None = None) -> int | None:
        """Ask the process to stop, kill it after the deadline, and reap it. Idempotent."""
        if self.proc is None:
            return None
        if self.running:
            self.signal(self.stop_signal)
            try:
                await asyncio.wait_for(asyncio.shield(self.proc.wait()),
                                       self.stop_timeout if timeout is None else timeout)
            except TimeoutError:
                log.warning("%s did not stop within its deadline; killing it", self.name)
        # The whole session goes: helpers a child forked must not outlive it.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return await self.wait()


async def run_tool(name: str, argv: list[str], timeout: float) -> tuple[int, bytes]:
    """Run a short tool to its end under one owner (stopped whatever happens); its exit code and stdout."""
    proc = ManagedProcess(name, argv, stdout_pipe=True, stop_timeout=2)
    await proc.start()
    try:
        assert proc.proc and proc.proc.stdout
        out = await asyncio.wait_for(proc.proc.stdout.read(), timeout)
        code = await asyncio.wait_for(proc.wait(), timeout)
    finally:
        await proc.stop()
    return code, out
