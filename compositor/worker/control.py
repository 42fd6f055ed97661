"""The worker's control channel: commands (protocol.Command) as JSON lines on stdin, each answered by a
CommandReply event.

A warm worker takes its job this way; a recording takes changes to its live
destinations, its layout and who it shows (its participant filter), and
pauses and resumes.
"""

from __future__ import annotations

import asyncio
import json
import sys

from pydantic import ValidationError

from ..errors import CompositorError, Conflict
from ..events import EventSink
from ..protocol import (
    COMMAND,
    CommandReply,
    JobCommand,
    Pause,
    Resume,
    UpdateLayout,
    UpdateParticipants,
    UpdateStreams,
)
from .recorder import Recorder


class Control:
    """Reads commands from stdin for as long as the worker runs; `recorder` is set once there is one."""

    def __init__(self, events: EventSink):
        self.events = events
        self.recorder: Recorder | None = None
        self.job: asyncio.Future[JobCommand] = asyncio.get_running_loop().create_future()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        async for line in reader:
            try:
                raw = json.loads(line)
            except ValueError:
                raw = None
            if not isinstance(raw, dict):
                self.events.emit(CommandReply(ok=False, code="INVALID_ARGUMENT",
                                              message="a command is one JSON object per line"))
                continue
            ident = raw.get("id") if isinstance(raw.get("id"), int) else None
            try:
                reply = CommandReply(id=ident, ok=True, **await self._take(COMMAND.validate_python(raw)))
            except ValidationError as exc:
                reply = CommandReply(id=ident, ok=False, code="INVALID_ARGUMENT", message=_why(exc))
            except CompositorError as exc:
                reply = CommandReply(id=ident, ok=False, **exc.to_dict())
            self.events.emit(reply)

    async def _take(self, cmd: JobCommand | UpdateStreams | UpdateLayout | UpdateParticipants | Pause | Resume
                    ) -> dict:
        if isinstance(cmd, JobCommand):
            if self.job.done():
                raise Conflict("HAS_JOB", "this worker already has its job")
            self.job.set_result(cmd)
            return {}
        if self.recorder is None:
            raise Conflict("EGRESS_NOT_ACTIVE", "no recording is running yet")
        if isinstance(cmd, UpdateLayout):
            return await self.recorder.update_layout(cmd.layout)
        if isinstance(cmd, UpdateParticipants):
            return await self.recorder.update_participants(cmd.participants)
        if isinstance(cmd, Pause):
            return await self.recorder.pause()
        if isinstance(cmd, Resume):
            return await self.recorder.resume()
        return {"streams": await self.recorder.update_streams(cmd.add, cmd.remove)}


def _why(exc: ValidationError) -> str:
    first = exc.errors()[0]
    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return "unknown command; known: job, update_streams, update_layout, update_participants, pause, resume"
    return f"{'.'.join(map(str, first['loc'][1:]))}: {first['msg'].removeprefix('Value error, ')}"
