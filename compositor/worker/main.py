"""The worker process (`compositor record`, `compositor upload`): one egress, start to stored outputs.

It reports on its event stream (JSON lines for the service), takes commands
on its control channel, finishes its file on the first SIGINT/SIGTERM and
stops at once on the second. Every connection its request leads to goes
through its outbound gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from ..errors import Aborted, CompositorError, InvalidRequest
from ..events import EventSink
from ..outbound import OutboundPolicy
from ..paths import WORKDIR_PREFIX
from ..pipeline.delivery import Delivery
from ..plan import DEFAULT_SAMPLE_RATE, EgressConfig, resolve
from ..protocol import ErrorEvent, ResultEvent, Status, WarmEvent
from ..request import RecordRequest, first_error, read_request_file
from ..storage.manifest import find_manifest, read_manifest, result_of
from .control import Control
from .gate import OutboundGate
from .recorder import Outputs, Recorder
from .stage import WARM, open_stage, sweep_stale_workdirs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs (its flags): where events go, its egress id, its control channel, its policy, and for
    a warm worker the frame it sets up before its job comes; `landing_ms`: see Recorder."""

    events: EventSink
    policy: OutboundPolicy
    egress_id: str | None = None
    control: bool = False
    warm: tuple[int, int] | None = None
    landing_ms: float | None = None


@dataclass
class _Job:
    config: EgressConfig | None = None
    recorder: Recorder | None = None


async def record(options: WorkerOptions, request: Callable[[], RecordRequest] | None) -> int:
    """Run one egress (`request()` builds it; a warm worker takes it from its control channel instead) and
    report its result or error; returns the process's exit status."""
    events = options.events
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    signals_seen = 0
    job = _Job()

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if job.recorder is not None and job.recorder.storing:
            # Interrupting a delivery gains nothing: a kill leaves the outputs staged for a resumed one.
            log.warning("storing the outputs; a signal does not stop that")
            return
        if signals_seen == 1:
            stop.set()  # finish the file cleanly
        else:
            task.cancel()  # asked twice: stop now; owners still clean up

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    # The service that started this worker died (its parent-death signal, one per thread of it): finish the
    # file, however many come; never the "asked twice, stop now" of a person's second signal.
    loop.add_signal_handler(signal.SIGHUP, stop.set)
    control = Control(events) if options.control or options.warm else None
    commands = asyncio.create_task(control.run()) if control else None
    try:
        try:
            # Every connection the request leads to goes through the gate, under the worker's policy.
            async with OutboundGate(options.policy) as gate:
                if options.warm:
                    outputs = await _warm(options, stop, control, job, gate)
                else:
                    job.config = resolve(request(), egress_id=options.egress_id, policy=gate.policy)
                    job.recorder = Recorder(job.config, events, stop, gate, landing_ms=options.landing_ms)
                    if control:
                        control.recorder = job.recorder
                    outputs = await job.recorder.run()
        except asyncio.CancelledError:
            if task.cancelling():
                raise  # asked twice: stop now (the command line says so)
            # Nobody cancelled this job: a library let a cancellation of its own out. The owners have cleaned up.
            raise CompositorError("an internal step of the job was cancelled unexpectedly") from None
    except CompositorError as exc:
        events.emit(ErrorEvent(egress_id=job.config.egress_id if job.config else None, status=_status_of(exc),
                               **exc.to_dict(), file={"path": exc.details["file"]} if "file" in exc.details else None))
        return exc.exit_status
    finally:
        if commands:
            commands.cancel()
    result = outputs.to_dict()
    if "file" in result:
        result["file"].update(started_at=job.recorder.timings.get("first_frame"),
                              ended_at=job.recorder.timings.get("stop_requested"))
    events.emit(ResultEvent(egress_id=job.config.egress_id, **result, timings=job.recorder.timings,
                            landing_ms=job.recorder.landing_ms,
                            stopped_by=job.recorder.stopped_by, reason=job.recorder.stop_reason))
    return 0


async def _warm(options: WorkerOptions, stop: asyncio.Event, control: Control, job: _Job,
                gate: OutboundGate) -> Outputs:
    """A warm worker: display, sink and browser up first; then the job that comes on stdin, on them."""
    width, height = options.warm
    sweep_stale_workdirs()
    workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-{WARM}-"))
    try:
        async with contextlib.AsyncExitStack() as stack:
            stage = await open_stage(stack, workdir, width, height, DEFAULT_SAMPLE_RATE, gate)
            await stage.warm_up()
            options.events.emit(WarmEvent(width=width, height=height))
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait([control.job, stopped], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not control.job.done():
                raise Aborted("stopped while warm, before any job")
            cmd = control.job.result()
            try:
                request = RecordRequest.model_validate(cmd.request)
            except ValidationError as exc:
                raise InvalidRequest(first_error(exc)) from None
            job.config = resolve(request, egress_id=cmd.egress_id, policy=gate.policy)
            if job.config.frame != (width, height, DEFAULT_SAMPLE_RATE):
                raise InvalidRequest(f"this warm worker renders {width}x{height} at {DEFAULT_SAMPLE_RATE} Hz; the job "
                                     "needs {}x{} at {} Hz".format(*job.config.frame))
            job.recorder = control.recorder = Recorder(job.config, options.events, stop, gate,
                                                       landing_ms=cmd.landing_ms)
            return await job.recorder.run(stage)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _status_of(exc: CompositorError) -> Status:
    return Status.ABORTED if exc.code == "ABORTED" else Status.FAILED


async def deliver(options: WorkerOptions, job_file: Path) -> int:
    """Store a finished egress's staged outputs by their manifest (a delivery a restart cut short); the same
    result (or error) events as `record`."""
    events, egress_id = options.events, options.egress_id
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        # The recording is over: a stop changes nothing; a kill leaves the rest staged for the next try.
        loop.add_signal_handler(sig, lambda: None)
    try:
        request = RecordRequest.model_validate(read_request_file(job_file, "--config"))
        if request.upload is None:
            raise InvalidRequest("the request has no upload (storage) to deliver to")
        found = find_manifest(Path(request.upload.staging), egress_id)
        if found is None:
            raise InvalidRequest(f"nothing staged for {egress_id} in {request.upload.staging}")
        async with (OutboundGate(options.policy) as gate,
                    Delivery(request.upload, egress_id, events, gate.url) as delivery):
            delivered = await delivery.deliver(read_manifest(found))
    except ValidationError as exc:
        events.emit(ErrorEvent(egress_id=egress_id, code="INVALID_ARGUMENT", message=first_error(exc)))
        return 2
    except CompositorError as exc:
        kept = exc.details.get("kept")
        events.emit(ErrorEvent(egress_id=egress_id, **exc.to_dict(), file={"path": kept} if kept else None))
        return exc.exit_status
    events.emit(ResultEvent(egress_id=egress_id, **result_of(delivered), stopped_by="resumed"))
    return 0
