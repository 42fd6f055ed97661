"""Runs each live ingress session as its own `compositor ingress` worker and follows its events.

As with egress workers, the service and an ingress worker talk only through its arguments (a job file, 0600:
it holds the room token), its events on stdout (protocol.IngressEvent, WhipAnswerEvent) and signals (SIGINT:
leave the room and end).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from ..process import ManagedProcess
from ..protocol import (
    IngressEvent,
    IngressJob,
    IngressReadyEvent,
    IngressState,
    WhipAnswerEvent,
    parse_ingress_event,
)
from .warm import WarmPool
from .workers import write_private

log = logging.getLogger(__name__)

#: A worker leaves its room and ends within this after SIGINT.
STOP_S = 10.0
#: A WHIP worker answers its publisher's offer within this.
ANSWER_TIMEOUT_S = 15.0
#: The states a worker ends a session in.
FINAL_STATES = (IngressState.INACTIVE, IngressState.COMPLETE, IngressState.ERROR)


class IngressRunner:
    """Owns the ingress workers of this node: starts them, hands their events up in order, always stops them."""

    def __init__(self, jobs_dir: Path, *, worker_args: tuple[str, ...] = (), warm_target: int = 0):
        self.jobs_dir = jobs_dir
        #: flags every worker gets (the outbound policy: --untrusted and the allowed hosts)
        self.worker_args = worker_args
        #: workers kept with their libraries loaded, waiting for a job: a publisher's session starts at once
        self._pool = WarmPool(warm_target, lambda: self._worker("warm ingress worker", "--warm"), self._until_ready)
        self._workers: dict[str, ManagedProcess] = {}
        self._followers: dict[str, asyncio.Task] = {}
        self._answers: dict[str, asyncio.Future[str]] = {}
        self._events: asyncio.Queue[tuple[str, IngressEvent] | None] = asyncio.Queue()

    @property
    def running(self) -> list[str]:
        return list(self._workers)

    @property
    def warm(self) -> int:
        """Warm workers ready for a session."""
        return self._pool.ready

    async def events(self) -> AsyncIterator[tuple[str, IngressEvent]]:
        """(ingress id, event) as the workers report them; a worker that ends without a final state reports
        ERROR (WORKER_CRASHED). Ends after shutdown()."""
        while (item := await self._events.get()) is not None:
            yield item

    async def start(self, job: IngressJob) -> int:
        """Run a session, on a warm worker when one is ready; its worker's pid. Raises OSError when no worker
        could start."""
        if job.whip_offer is not None:
            self._answers[job.ingress_id] = asyncio.get_running_loop().create_future()
        # One file per session: the last session's follower may still be cleaning up after its worker.
        config = self.jobs_dir / f"{job.ingress_id}-{secrets.token_hex(4)}.ingress.json"
        worker = self._pool.take()
        try:
            if worker is not None:
                worker.proc.stdin.write(job.model_dump_json().encode() + b"\n")
                await worker.proc.stdin.drain()
                self.replenish()
            else:
                write_private(config, job.model_dump_json())
                worker = self._worker(f"ingress {job.ingress_id}", "--config", str(config))
                await worker.start()
        except OSError:
            config.unlink(missing_ok=True)
            self._answers.pop(job.ingress_id, None)
            raise
        self._workers[job.ingress_id] = worker
        self._followers[job.ingress_id] = asyncio.create_task(self._follow(job.ingress_id, worker, config))
        return worker.pid

    def _worker(self, name: str, *args: str) -> ManagedProcess:
        return ManagedProcess(name, [sys.executable, "-m", "compositor", "ingress", *args, "--events", "json",
                                     *self.worker_args],
                              stop_signal=signal.SIGINT, stop_timeout=STOP_S, stdout_pipe=True, stdin_pipe=True,
                              umask=0o077)

    def replenish(self) -> None:
        """Start warm workers until the target are ready or coming up."""
        self._pool.replenish()

    @staticmethod
    async def _until_ready(worker: ManagedProcess) -> bool:
        """Read its events up to READY (the rest of its stream is its session's, read by _follow)."""
        async for raw in worker.proc.stdout:
            if isinstance(parse_ingress_event(raw), IngressReadyEvent):
                return True
        return False

    async def answer(self, ingress_id: str) -> str | None:
        """A WHIP session's SDP answer; None when its worker ended (or did not answer in time) first."""
        future = self._answers.get(ingress_id)
        if future is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(future), ANSWER_TIMEOUT_S)
        except TimeoutError:
            return None
        finally:
            self._answers.pop(ingress_id, None)

    async def stop(self, ingress_id: str) -> bool:
        """Ask a session's worker to leave the room and end; False when none runs it."""
        worker = self._workers.get(ingress_id)
        if worker is None or not worker.running:
            return False
        worker.signal(signal.SIGINT)
        return True

    async def shutdown(self) -> None:
        """Stop every worker (killing those past STOP_S); the event stream ends after their last events."""
        await asyncio.gather(self._pool.close(), *(w.stop() for w in self._workers.values()), return_exceptions=True)
        await asyncio.gather(*self._followers.values(), return_exceptions=True)
        self._events.put_nowait(None)

    async def _follow(self, ingress_id: str, worker: ManagedProcess, config: Path) -> None:
        final = False
        try:
            assert worker.proc and worker.proc.stdout
            async for raw in worker.proc.stdout:
                event = parse_ingress_event(raw)
                if isinstance(event, WhipAnswerEvent):
                    future = self._answers.get(ingress_id)
                    if future and not future.done():
                        future.set_result(event.sdp)
                elif isinstance(event, IngressEvent):
                    final = final or event.state in FINAL_STATES
                    self._events.put_nowait((ingress_id, event))
                if final:
                    # Its story is told; whatever it does now (leaving the room) is its own.
                    break
            await worker.stop()
            if not final:
                self._events.put_nowait((ingress_id, IngressEvent(
                    ingress_id=ingress_id, state=IngressState.ERROR, code="WORKER_CRASHED",
                    error=f"the ingress worker ended without a result: {worker.describe_exit()}")))
        finally:
            config.unlink(missing_ok=True)
            if self._workers.get(ingress_id) is worker:  # (not a newer session's)
                future = self._answers.get(ingress_id)
                if future and not future.done():
                    future.cancel()
                del self._workers[ingress_id]
                self._followers.pop(ingress_id, None)
            log.info("ingress worker %s ended (%s)", ingress_id, worker.proc.returncode if worker.proc else None)

