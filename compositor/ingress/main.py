"""The ingress worker (`compositor ingress`): one live ingress, from its input into its room.

It reads its IngressJob (the file holds the room token), opens the input while it joins the room, publishes
a track for each stream the input has, and paces the decoded frames into them. On stdout (JSON lines, one
IngressEvent each) it says ENDPOINT_BUFFERING once the input is open (what it carries), ENDPOINT_PUBLISHING
once its tracks are in the room (which), then exactly one end, after leaving the room:

- ENDPOINT_INACTIVE: an RTMP or WHIP publisher ended, or the worker was stopped (SIGINT, SIGTERM); exit 0;
- ENDPOINT_COMPLETE: a URL ran to its end; exit 0;
- ENDPOINT_ERROR with a stable code; exit 1: INPUT_UNREACHABLE (cannot open or lost the input),
  INPUT_INVALID (nothing decodable), INPUT_STALLED (no media for the job's stall_s), ROOM_UNREACHABLE (cannot
  join or publish), ROOM_DISCONNECTED (the room dropped the participant), ADDRESS_NOT_ALLOWED /
  HOST_NOT_FOUND (an untrusted URL the outbound policy refuses), INVALID_ARGUMENT (a bad job), INTERNAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from ..errors import CompositorError, InvalidRequest
from ..outbound import OutboundPolicy
from ..protocol import IngressEvent, IngressJob, IngressReadyEvent, IngressState, InputKind, WhipAnswerEvent
from ..request import first_error
from ..worker.gate import OutboundGate
from .errors import InputInvalid, RoomLost
from .inputs import InputInfo, MediaInput, WhipSource, input_for
from .pacing import Clock, Pump
from .room import IngressRoom

log = logging.getLogger(__name__)

SDK_SETTLE_S = 0.2


class IngressEvents:
    """Where the worker's events go: JSON lines on stdout (for the service) or a line each on stderr."""

    def __init__(self, mode: str = "text"):
        self.mode = mode
        self.ingress_id: str | None = None

    def emit(self, event: IngressEvent | WhipAnswerEvent | IngressReadyEvent) -> None:
        """Write one event (stamped with the ingress's id)."""
        event.ingress_id = event.ingress_id or self.ingress_id
        if self.mode == "json":
            sys.stdout.write(event.wire() + "\n")
            sys.stdout.flush()
            return
        if isinstance(event, IngressReadyEvent):
            line = "READY (waiting for the job on stdin)"
        elif isinstance(event, WhipAnswerEvent):
            line = "WHIP answer ready"
        else:
            line = event.state.removeprefix("ENDPOINT_")
            if event.code:
                line += f" [{event.code}] {event.error}"
            for track in event.tracks or ():
                size = f" {track['width']}x{track['height']}" if track.get("width") else ""
                line += f"\n  {track['type']} track {track['sid']} ({track['source']}{size})"
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


class _Stopped(Exception):
    """SIGINT or SIGTERM came: the ingress ends INACTIVE."""


async def ingress(job_file: Path | None, events_mode: str, policy: OutboundPolicy) -> int:
    """Run the ingress `job_file` describes (None: warm, the job comes as one line on stdin once READY) until it
    ends; its final event is the last line; returns the exit status (0 INACTIVE/COMPLETE, 1 ERROR)."""
    events = IngressEvents(events_mode)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if job_file is None:
            from .whip import WhipInput  # noqa: F401  (loaded now: a WHIP job then starts at once)

            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            events.emit(IngressReadyEvent())
            job = IngressJob.model_validate_json(await _until(reader.readline(), stop))
        else:
            job = IngressJob.model_validate_json(job_file.read_bytes())
    except _Stopped:
        return 0  # a warm worker let go before it had a job: nothing to report
    except (OSError, ValidationError) as exc:
        why = first_error(exc) if isinstance(exc, ValidationError) else f"cannot read {job_file}: {exc.strerror}"
        events.emit(IngressEvent(state=IngressState.ERROR, code="INVALID_ARGUMENT", error=why))
        return 1
    events.ingress_id = job.ingress_id
    try:
        final = await _session(job, events, policy, stop)
    except CompositorError as exc:
        final = IngressEvent(state=IngressState.ERROR, code=exc.code, error=exc.message)
    except Exception as exc:  # a bug: the service must still hear how the ingress ended
        log.exception("ingress %s failed", job.ingress_id)
        final = IngressEvent(state=IngressState.ERROR, code="INTERNAL", error=f"{type(exc).__name__}: {exc}")
    events.emit(final)
    # The WebRTC SDK's threads still log their last lines (a failed join's) as it reports back; shutting it
    # down (at exit) under them aborts the process (SIGABRT, not this exit status) now and then.
    await asyncio.sleep(SDK_SETTLE_S)
    return 1 if final.state == IngressState.ERROR else 0


async def _session(job: IngressJob, events: IngressEvents, policy: OutboundPolicy,
                   stop: asyncio.Event) -> IngressEvent:
    """Open, join, publish and pump; the final event (emitted by the caller once the room is left)."""
    async with contextlib.AsyncExitStack() as stack:
        # Last in, first out: the room is left before the input closes, and the gate goes last.
        source = await _input(job, policy, stack)
        # A passed video's subscribers ask the publisher itself for key frames.
        room = IngressRoom(job, request_keyframe=source.request_keyframe if isinstance(source, WhipSource) else None)
        stack.push_async_callback(source.close)
        stack.push_async_callback(room.leave)
        try:
            if isinstance(source, WhipSource):
                events.emit(WhipAnswerEvent(sdp=await _until(_answer(source), stop)))
            # Joining while the input opens: the first frame reaches the room sooner.
            joining = asyncio.create_task(room.join())
            opening = asyncio.create_task(source.open())
            stack.push_async_callback(_cancelled, opening)
            # A join is never called off halfway (the SDK carries it on regardless, and would answer into a
            # process on its way out): it ends, within its timeout, and then the room is left.
            stack.push_async_callback(_settled, joining)
            info = await _until(_opened(opening, joining), stop)
            events.emit(IngressEvent(state=IngressState.BUFFERING, video=info.video, audio=info.audio))
            await _until(asyncio.shield(joining), stop)
            await _until(room.publish(info), stop)
            events.emit(IngressEvent(state=IngressState.PUBLISHING, room_id=await room.room_id(),
                                     tracks=room.tracks))
            pump = Pump(Clock(info.live), video=room.send_video if room.video else None,
                        prepare_video=room.prepare_video, fps=job.video.fps if job.video else 30.0,
                        audio=room.send_audio if room.audio else None, audio_queued=room.audio_queued,
                        channels=job.audio.channels if job.audio else 2, stall_s=job.stall_s)
            await _until(pump.run(source.frames()), stop, room.lost)
        except _Stopped:
            log.info("stopped")
            return IngressEvent(state=IngressState.INACTIVE)
    if job.input == InputKind.URL:
        return IngressEvent(state=IngressState.COMPLETE)
    return IngressEvent(state=IngressState.INACTIVE)


async def _input(job: IngressJob, policy: OutboundPolicy, stack: contextlib.AsyncExitStack) -> MediaInput:
    """The job's input, not yet open; an untrusted URL gets its outbound gate (on `stack`)."""
    if job.input == InputKind.WHIP:
        if not job.whip_offer:
            raise InvalidRequest("a WHIP ingress needs its publisher's SDP offer (whip_offer)")
        from .whip import WhipInput, WhipOfferInvalid  # only a WHIP ingress needs aiortc's peer connection

        try:
            return WhipSource(WhipInput(job.whip_offer, stall_s=job.stall_s, pass_video=job.pass_video))
        except WhipOfferInvalid as exc:
            raise InputInvalid(str(exc)) from None
    proxy = None
    if not policy.trusted and job.input == InputKind.URL:
        # Every connection an untrusted URL leads to (redirects, HLS segments) goes through the gate.
        gate = await stack.enter_async_context(OutboundGate(policy))
        proxy = gate.url
    return await input_for(job, policy, proxy)


async def _answer(source: WhipSource) -> str:
    """The WHIP publisher's SDP answer; an offer that cannot be answered is the input's fault."""
    from .whip import WhipOfferInvalid

    try:
        return await source.whip.answer()
    except WhipOfferInvalid as exc:
        raise InputInvalid(str(exc)) from None


async def _opened(opening: asyncio.Task, joining: asyncio.Task) -> InputInfo:
    """The input's streams once it is open; a join that fails ends the wait at once (an RTMP input can take
    seconds to open)."""
    await asyncio.wait([opening, joining], return_when=asyncio.FIRST_COMPLETED)
    if joining.done() and not opening.done():
        joining.result()
    return await opening


async def _until(aw, stop: asyncio.Event, lost: asyncio.Event | None = None):
    """`aw`'s result, unless a stop (_Stopped) or the room's loss (RoomLost) comes first; it is cancelled then."""
    task = asyncio.ensure_future(aw)
    watchers = [asyncio.ensure_future(e.wait()) for e in (stop, lost) if e is not None]
    try:
        await asyncio.wait([task, *watchers], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for watcher in watchers:
            watcher.cancel()
    if task.done():
        return task.result()
    await _cancelled(task)
    if stop.is_set():
        raise _Stopped()
    raise RoomLost("the room disconnected the ingress")


async def _settled(task: asyncio.Task) -> None:
    """Wait for `task` to end; what it raised is moot now (the session is over)."""
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()


async def _cancelled(task: asyncio.Future) -> None:
    """Cancel `task` and wait for it to wind down (whatever it raised is moot now)."""
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
