"""Runs each egress as its own `compositor record` worker and follows its events.

The service and a worker talk only through the worker's arguments (a request
file), its events on stdout, signals (SIGINT: finish the file), and commands
on its stdin (a warm worker's job, changes to live destinations and layout):
the events and commands are protocol's models, one JSON line each.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from ..errors import Conflict, refusal
from ..plan import DEFAULT_SAMPLE_RATE, WARM_SIZE
from ..process import ManagedProcess
from ..protocol import (
    Command,
    CommandReply,
    ErrorEvent,
    Event,
    JobCommand,
    ResultEvent,
    Status,
    StatusEvent,
    WarmEvent,
    grab_figures,
    parse_event,
)
from ..request import RecordRequest, UploadSpec
from ..storage.config import REVEAL
from .results import left_behind
from .seams import Job
from .warm import WarmPool

log = logging.getLogger(__name__)

# A worker finishes its file within this after SIGINT (encoder deadline + remux).
WORKER_STOP_S = 30.0
# A worker answers a command within this (removing a destination waits for its pusher to finish).
COMMAND_TIMEOUT_S = 20.0


class WorkerRunner:
    """Owns the worker processes of running egresses: the `seams.Runner` and `seams.Control` of one node."""

    def __init__(self, jobs_dir: Path, *, warm_target: int = 0, warm_size: tuple[int, int] = WARM_SIZE,
                 worker_args: tuple[str, ...] = (), worker_env: dict[str, str] | None = None):
        self.jobs_dir = jobs_dir
        self._replies: dict[int, asyncio.Future] = {}
        self._next_command = 0
        #: idle workers with display, sink and browser up, for jobs of `warm_size` at 48 kHz
        self.warm_size = warm_size
        w, h = warm_size
        self._pool = WarmPool(warm_target, lambda: self._worker("warm worker", "record", "--warm", "--width", str(w),
                                                                "--height", str(h), *self.worker_args),
                              self._until_warm)
        #: flags every worker gets (the outbound policy: --untrusted and the allowed hosts)
        self.worker_args = worker_args
        #: variables every worker gets besides the service's own (the LiveKit server)
        self.worker_env = worker_env or {}
        self._closing = False
        self._workers: dict[str, ManagedProcess] = {}
        self._followers: dict[str, asyncio.Task] = {}
        # Workers asked to stop before they could take a signal (still importing).
        self._stop_pending: set[str] = set()
        self._listening: set[str] = set()
        # Egresses whose worker is storing their outputs: cut short by a shutdown, they resume at the next start.
        self._delivering: set[str] = set()
        # Each running egress's job: where its file goes (what a crashed worker may have left there) and its frame.
        self._jobs: dict[str, Job] = {}
        # Where the page's frames landed in the last job of each frame (width, height; ResultEvent.landing_ms): the
        # next job of that frame aims its grabs by it.
        self._landings: dict[tuple[int, int], float] = {}
        # What the workers said, in order, for events(); None once shut down.
        self._events: asyncio.Queue[tuple[str, Event] | None] = asyncio.Queue()

    @property
    def running(self) -> list[str]:
        return list(self._workers)

    @property
    def warm(self) -> int:
        """Warm workers ready for a job."""
        return self._pool.ready

    async def events(self) -> AsyncIterator[tuple[str, Event]]:
        """(egress id, event) as the workers report them; a worker that ends without a result reports an
        ErrorEvent (WORKER_CRASHED). Ends after shutdown()."""
        while (item := await self._events.get()) is not None:
            yield item

    async def start(self, job: Job) -> int | None:
        """Run an egress: on a warm worker when one fits its frame (width, height, sample rate), else a new one.
        Returns its pid."""
        egress_id, request = job.egress_id, job.request
        worker = self._take_warm(job.frame)
        config = self.job_file(egress_id)
        landing_ms = self._landings.get(job.frame[:2])
        if worker is None or (request.upload and not request.upload.in_place):
            # A warm worker takes its job on stdin; the file is for a restarted service to resume a delivery.
            write_private(config, request.model_dump_json(exclude_none=True, context=REVEAL))
        if worker is not None:
            command = JobCommand(egress_id=egress_id, landing_ms=landing_ms,
                                 request=request.model_dump(mode="json", exclude_none=True, context=REVEAL))
            worker.proc.stdin.write((command.wire() + "\n").encode())
            # It has its signal handlers already: a stop can go at once.
            self._listening.add(egress_id)
            self.replenish()
        else:
            landing = ("--landing-ms", str(landing_ms)) if landing_ms is not None else ()
            worker = self._worker(f"worker {egress_id}", "record", "--config", str(config), "--egress-id", egress_id,
                                  "--control", "stdin", *landing, *self.worker_args)
            await worker.start()
        self._workers[egress_id] = worker
        self._jobs[egress_id] = job
        self._followers[egress_id] = asyncio.create_task(self._follow(egress_id, worker))
        return worker.pid

    def job_file(self, egress_id: str) -> Path:
        """The worker's request (secrets included, readable by this user only)."""
        return self.jobs_dir / f"{egress_id}.json"

    def job_request(self, egress_id: str) -> RecordRequest | None:
        """The request an egress's worker got, with its secrets; None when its job file is gone."""
        try:
            return RecordRequest.model_validate_json(self.job_file(egress_id).read_text())
        except (OSError, ValueError):
            return None

    def _storage_file(self, egress_id: str) -> Path:
        return self.jobs_dir / f"{egress_id}.storage.json"

    def forget_job(self, egress_id: str, *, keep_storage: bool = True) -> None:
        """An egress has ended: its job file (stream keys, storage secrets) goes. With `keep_storage`, a remote
        storage's credentials stay (0600) in the egress's storage file, to presign its download URLs, until
        the egress is deleted."""
        job = self.job_request(egress_id) if keep_storage else None
        if job and job.upload and not job.upload.in_place:
            write_private(self._storage_file(egress_id), job.upload.model_dump_json(exclude_none=True,
                                                                                     context=REVEAL))
        elif not keep_storage:
            self._storage_file(egress_id).unlink(missing_ok=True)
        self.job_file(egress_id).unlink(missing_ok=True)

    def kept_storage(self, egress_id: str) -> UploadSpec | None:
        """Where an ended egress's outputs were stored, with the credentials to presign; None once forgotten."""
        try:
            return UploadSpec.model_validate_json(self._storage_file(egress_id).read_text())
        except (OSError, ValueError):
            job = self.job_request(egress_id)  # an egress that ended before storage files were kept
            return job.upload if job else None

    async def resume_delivery(self, egress_id: str) -> None:
        """Run `compositor upload` for an egress whose outputs are staged but not all stored."""
        worker = self._worker(f"delivery {egress_id}", "upload", "--config", str(self.job_file(egress_id)),
                              "--egress-id", egress_id, *self.worker_args)
        await worker.start()
        self._workers[egress_id] = worker
        self._listening.add(egress_id)
        self._delivering.add(egress_id)
        self._followers[egress_id] = asyncio.create_task(self._follow(egress_id, worker))

    def _worker(self, name: str, command: str, *args: str) -> ManagedProcess:
        """A `compositor record` (or `upload`) worker reporting JSON events on stdout, taking commands on stdin."""
        # umask 077: what workers write (recordings, staged uploads) is readable by this user only.
        return ManagedProcess(name, [sys.executable, "-m", "compositor", command, "--events", "json", *args],
                              env={**os.environ, **self.worker_env} if self.worker_env else None,
                              stop_signal=signal.SIGINT, stop_timeout=WORKER_STOP_S, stdout_pipe=True, stdin_pipe=True,
                              umask=0o077, death_signal=signal.SIGHUP)

    def _take_warm(self, frame: tuple[int, int, int]) -> ManagedProcess | None:
        return self._pool.take() if frame == (*self.warm_size, DEFAULT_SAMPLE_RATE) else None

    def replenish(self) -> None:
        """Start warm workers until `warm_target` are ready or coming up."""
        self._pool.replenish()

    @staticmethod
    async def _until_warm(worker: ManagedProcess) -> bool:
        """Read its events up to WARM (the rest of its stream is the egress's, read by _follow)."""
        async for raw in worker.proc.stdout:
            if isinstance(parse_event(raw), WarmEvent):
                return True
        return False

    async def stop(self, egress_id: str) -> bool:
        """Ask a worker to finish its file; False if it is not running."""
        worker = self._workers.get(egress_id)
        if worker is None or not worker.running:
            return False
        if egress_id in self._listening:
            worker.signal(signal.SIGINT)
        else:
            self._stop_pending.add(egress_id)
        return True

    async def command(self, egress_id: str, command: Command) -> CommandReply:
        """Send a running worker a command; its answer, or the worker's error if it refuses."""
        worker = self._workers.get(egress_id)
        if worker is None or not worker.running or egress_id not in self._listening:
            raise Conflict("EGRESS_NOT_ACTIVE", f"egress {egress_id} is not running")
        self._next_command += 1
        ident = self._next_command
        reply = self._replies[ident] = asyncio.get_running_loop().create_future()
        try:
            worker.proc.stdin.write((command.model_copy(update={"id": ident}).wire() + "\n").encode())
            await worker.proc.stdin.drain()
            answer = await asyncio.wait_for(reply, COMMAND_TIMEOUT_S)
        except (ConnectionError, TimeoutError) as exc:
            raise Conflict("EGRESS_NOT_ACTIVE",
                           f"egress {egress_id} did not take the change ({exc or 'timeout'})") from None
        finally:
            self._replies.pop(ident, None)
        if answer.ok:
            return answer
        raise refusal(answer.code, answer.message, answer.details)

    async def shutdown(self, grace: float = WORKER_STOP_S) -> None:
        """Stop every worker cleanly (killing those past the grace period)."""
        self._closing = True
        await asyncio.gather(self._pool.close(grace), *(w.stop(grace) for w in self._workers.values()),
                             return_exceptions=True)
        await asyncio.gather(*self._followers.values(), return_exceptions=True)
        self._events.put_nowait(None)

    async def _follow(self, egress_id: str, worker: ManagedProcess) -> None:
        settled = False
        try:
            assert worker.proc and worker.proc.stdout
            async for raw in worker.proc.stdout:
                event = parse_event(raw)
                if event is None:
                    continue
                if egress_id not in self._listening:
                    # Its first event comes after it set up its signal handlers.
                    self._listening.add(egress_id)
                    if egress_id in self._stop_pending:
                        worker.signal(signal.SIGINT)
                settled = self._apply(egress_id, event) or settled
                self._events.put_nowait((egress_id, event))
            await worker.wait()
            if not settled and self._closing and egress_id in self._delivering:
                log.warning("the delivery of %s was cut short by the shutdown; it resumes at the next start",
                            egress_id)
            else:
                if not settled:
                    request = self._jobs[egress_id].request
                    kept = left_behind(Path(request.file.filepath)) if request and request.file else None
                    self._events.put_nowait((egress_id, ErrorEvent(
                        status=Status.FAILED, code="WORKER_CRASHED", time=time.time(),
                        message=f"the worker ended without a result: {worker.describe_exit()}",
                        file={"path": str(kept)} if kept else None)))
                self.forget_job(egress_id)
        finally:
            self._workers.pop(egress_id, None)
            self._followers.pop(egress_id, None)
            self._listening.discard(egress_id)
            self._stop_pending.discard(egress_id)
            self._delivering.discard(egress_id)
            self._jobs.pop(egress_id, None)
            log.info("worker %s ended (%s)", egress_id, worker.proc.returncode if worker.proc else None)

    def _apply(self, egress_id: str, event: Event) -> bool:
        """What the runner itself takes from an event (the service folds it into the store); True when it
        settles the egress."""
        if isinstance(event, StatusEvent) and event.storing:
            self._delivering.add(egress_id)
        elif isinstance(event, ResultEvent) and egress_id in self._jobs:
            frame = self._jobs[egress_id].frame[:2]
            # Each job's figures in the log: an aim that missed (a landing far from where it was aimed) shows here.
            log.info("%s: its frames against the grabs: %s", egress_id, grab_figures(event.timings))
            if event.landing_ms is not None:
                self._landings[frame] = event.landing_ms
        elif isinstance(event, CommandReply):
            reply = self._replies.get(event.id)
            if reply and not reply.done():
                reply.set_result(event)
        return isinstance(event, (ResultEvent, ErrorEvent))


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
