"""The worker's control channel: commands as JSON lines on stdin, each answered by a `command` event.

A warm worker takes its job this way; a recording takes changes to its live
destinations and its layout.
"""

from __future__ import annotations

import asyncio
import json
import sys

from ..errors import CompositorError, Conflict, InvalidRequest
from ..events import EventSink
from .recorder import Recorder


class Control:
    """Reads commands from stdin for as long as the worker runs; `recorder` is set once there is one."""

    def __init__(self, events: EventSink):
        self.events = events
        self.recorder: Recorder | None = None
        self.job: asyncio.Future[dict] = asyncio.get_running_loop().create_future()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        async for line in reader:
            try:
                cmd = json.loads(line)
                if not isinstance(cmd, dict):
                    raise ValueError
            except ValueError:
                self.events.emit("command", ok=False, code="INVALID_ARGUMENT",
                                 message="a command is one JSON object per line")
                continue
            try:
                self.events.emit("command", id=cmd.get("id"), ok=True, **await self._take(cmd))
            except CompositorError as exc:
                self.events.emit("command", id=cmd.get("id"), ok=False, **exc.to_dict())

    async def _take(self, cmd: dict) -> dict:
        op = cmd.get("op")
        if op == "job":
            if self.job.done():
                raise Conflict("HAS_JOB", "this worker already has its job")
            self.job.set_result(cmd)
            return {}
        if op not in ("update_streams", "update_layout"):
            raise InvalidRequest("unknown command; known: job, update_streams, update_layout")
        if self.recorder is None:
            raise Conflict("EGRESS_NOT_ACTIVE", "no recording is running yet")
        if op == "update_layout":
            return await self.recorder.update_layout(str(cmd.get("layout") or ""))
        return {"streams": await self.recorder.update_streams(list(cmd.get("add") or []),
                                                              list(cmd.get("remove") or []))}
