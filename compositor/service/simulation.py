"""A runner that runs no process: each job reports ACTIVE shortly after it starts and a result when it is
stopped (or after a set time). Plugged into `Service` in place of the worker runner, it measures and tests
what the service itself does (admission, queue, store, outbox) at scales no machine could record.

Nothing it reports is media: its results carry no file.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ..errors import Conflict
from ..protocol import Command, CommandReply, Event, Pause, ResultEvent, Resume, Status, StatusEvent
from ..request import RecordRequest, UploadSpec
from .seams import Job

if TYPE_CHECKING:  # the service imports this module's runner only where it is plugged in
    from .service import Service


class SimulatedRunner:
    """`seams.Runner` and `seams.Control` of simulated egresses."""

    def __init__(self, start_s: float = 0.01, run_s: float | None = None, stop_s: float = 0.01):
        #: from start to ACTIVE
        self.start_s = start_s
        #: from ACTIVE to its result on its own (None: until stopped)
        self.run_s = run_s
        #: from a stop to its result
        self.stop_s = stop_s
        self._jobs: dict[str, asyncio.Task] = {}
        #: each egress's paused spans, kept as a worker keeps them
        self._pauses: dict[str, list[dict]] = {}
        self._stopping: dict[str, asyncio.Event] = {}
        self._events: asyncio.Queue[tuple[str, Event] | None] = asyncio.Queue()
        #: every job it was given, in order
        self.started: list[Job] = []
        #: every command it answered, in order
        self.commands: list[tuple[str, Command]] = []

    @property
    def running(self) -> list[str]:
        return list(self._jobs)

    @property
    def warm(self) -> int:
        return 0

    async def start(self, job: Job) -> int | None:
        self.started.append(job)
        self._stopping[job.egress_id] = asyncio.Event()
        self._jobs[job.egress_id] = asyncio.create_task(self._run(job.egress_id))
        return None

    async def _run(self, egress_id: str) -> None:
        try:
            await asyncio.sleep(self.start_s)
            self._events.put_nowait((egress_id, StatusEvent(egress_id=egress_id, status=Status.ACTIVE)))
            try:
                await asyncio.wait_for(self._stopping[egress_id].wait(), self.run_s)
                stopped_by = "stopped"
            except TimeoutError:
                stopped_by = "limit"
            self._events.put_nowait((egress_id, StatusEvent(egress_id=egress_id, status=Status.ENDING)))
            await asyncio.sleep(self.stop_s)
            self._events.put_nowait((egress_id, ResultEvent(egress_id=egress_id, stopped_by=stopped_by)))
        finally:
            self._jobs.pop(egress_id, None)
            self._stopping.pop(egress_id, None)

    async def stop(self, egress_id: str) -> bool:
        stopping = self._stopping.get(egress_id)
        if stopping is None:
            return False
        stopping.set()
        return True

    async def command(self, egress_id: str, command: Command) -> CommandReply:
        if egress_id not in self._jobs:
            raise Conflict("EGRESS_NOT_ACTIVE", f"egress {egress_id} is not running")
        self.commands.append((egress_id, command))
        if isinstance(command, Pause | Resume):
            spans = self._pauses.setdefault(egress_id, [])
            if isinstance(command, Pause):
                spans.append({"start": time.time(), "end": None})
            else:
                spans[-1]["end"] = time.time()
            return CommandReply(egress_id=egress_id, id=command.id, ok=True, paused=isinstance(command, Pause),
                                pauses=[dict(s) for s in spans])
        return CommandReply(egress_id=egress_id, id=command.id, ok=True)

    async def events(self) -> AsyncIterator[tuple[str, Event]]:
        while (item := await self._events.get()) is not None:
            yield item

    async def resume_delivery(self, egress_id: str) -> None:
        raise OSError("a simulated egress has nothing to deliver")

    def job_request(self, egress_id: str) -> RecordRequest | None:
        return None

    def forget_job(self, egress_id: str, *, keep_storage: bool = True) -> None:
        """Nothing is kept per job."""

    def kept_storage(self, egress_id: str) -> UploadSpec | None:
        return None

    def replenish(self) -> None:
        """No warm workers."""

    async def shutdown(self, grace: float) -> None:
        for stopping in self._stopping.values():
            stopping.set()
        await asyncio.gather(*self._jobs.values(), return_exceptions=True)
        self._events.put_nowait(None)


def lose(service: Service) -> None:
    """Take down a node running on a SimulatedRunner as SIGKILL would: its lease, loops and egresses stop at
    once, nothing is cleaned up or reported; `draining` keeps a later shutdown() from running."""
    runner = service.runner
    assert isinstance(runner, SimulatedRunner), "only a simulated node can be lost this way"
    for task in [*service._tasks, service._reports, service.webhooks._task, *runner._jobs.values()]:
        task.cancel()
    service.draining = True
