"""What the service and a worker say to each other: the statuses, the worker's events and the service's commands.

Both sides use these models and nothing else: a worker emits events (JSON lines on stdout, one model each), the
service parses them back into the same models; the service sends commands (JSON lines on the worker's stdin),
the worker parses them into the same models. On the wire each is one flat JSON object keyed by `type`
(events) or `op` (commands), as the event stream has always looked to scripts reading `--events json`.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class Status(StrEnum):
    """Where an egress is. A worker reports STARTING to ENDING and then the end it came to."""

    STARTING = "STARTING"
    ACTIVE = "ACTIVE"
    ENDING = "ENDING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    ABORTED = "ABORTED"
    LIMIT_REACHED = "LIMIT_REACHED"


#: An egress in one of these has a worker (or will have one shortly).
ACTIVE_STATUSES = (Status.STARTING, Status.ACTIVE, Status.ENDING)
#: An egress in one of these is over for good.
ENDED_STATUSES = (Status.COMPLETE, Status.FAILED, Status.ABORTED, Status.LIMIT_REACHED)


class StreamStatus(StrEnum):
    """Where one live destination (RTMP, SRT) of a recording is."""

    STARTING = "STARTING"
    ACTIVE = "ACTIVE"
    RECONNECTING = "RECONNECTING"
    FAILED = "FAILED"
    FINISHED = "FINISHED"


class UploadStatus(StrEnum):
    """What happened to one output on its way to storage."""

    RETRYING = "RETRYING"
    STORED = "STORED"
    BACKUP = "BACKUP"


class _Message(BaseModel):
    # Unknown fields are kept, not refused: a newer worker may say more than this service knows.
    model_config = ConfigDict(extra="allow")

    def wire(self) -> str:
        """This message as one JSON line (without the newline)."""
        return self.model_dump_json(exclude_none=True)


class _Event(_Message):
    time: float = Field(default_factory=lambda: round(time.time(), 3))
    egress_id: str | None = None


class WarmEvent(_Event):
    """A warm worker has its display, sink and browser up and waits for its job on stdin."""

    type: Literal["warm"] = "warm"
    width: int
    height: int


class StatusEvent(_Event):
    """The egress moved on. `storing` marks the ENDING of a recording whose outputs now go to storage: a shutdown
    that cuts it short leaves them staged, to be resumed."""

    type: Literal["status"] = "status"
    status: Status
    message: str | None = None
    storing: bool | None = None
    #: what the job holds once ACTIVE (display, workdir, pids), so a supervisor can check it all goes away
    resources: dict[str, Any] | None = None


class ProgressEvent(_Event):
    """The encoder's progress, about once a second."""

    type: Literal["progress"] = "progress"
    elapsed: float
    frames: int
    fps: float
    bitrate_kbps: float
    size: int
    dup_frames: int = 0
    drop_frames: int = 0
    speed: float | None = None


class StreamState(BaseModel):
    """One live destination as events, the API and webhooks show it (its URL redacted)."""

    url: str
    status: StreamStatus
    retries: int = 0
    last_retry_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    error_code: str | None = None


class StreamEvent(_Event, StreamState):
    """A live destination (the `index`-th of the recording) changed."""

    type: Literal["stream"] = "stream"
    index: int

    def wire(self) -> str:
        # A destination always shows every field, null ones too (the API and webhooks copy it as it is).
        return self.model_dump_json()

    def state(self) -> dict:
        """The destination's state without the event's envelope."""
        return self.model_dump(mode="json", include=set(StreamState.model_fields))


class UploadEvent(_Event):
    """An output was stored, is being retried, or the primary storage gave up and the backup takes over."""

    type: Literal["upload"] = "upload"
    status: UploadStatus
    key: str | None = None
    size: int | None = None
    storage: str | None = None
    backup_used: bool | None = None
    attempt: int | None = None
    delay_s: float | None = None
    code: str | None = None
    message: str | None = None


class ResultEvent(_Event):
    """The egress completed: what its outputs became (`stopped_by`: limit, stopped, room_ended or resumed)."""

    type: Literal["result"] = "result"
    status: Status = Status.COMPLETE
    file: dict[str, Any] | None = None
    segments: dict[str, Any] | None = None
    images: dict[str, Any] | None = None
    #: where the stored manifest (every output's location) is
    manifest: str | None = None
    streams: list[dict[str, Any]] | None = None
    #: a track egress to a WebSocket: what was sent
    websocket: dict[str, Any] | None = None
    #: stored outputs: the storage that holds them, and whether it is the backup
    storage: str | None = None
    backup_used: bool | None = None
    timings: dict[str, Any] | None = None
    stopped_by: str | None = None


class ErrorEvent(_Event):
    """The egress failed (or was aborted): why, and the partial file it left, if any (`file.path`)."""

    type: Literal["error"] = "error"
    status: Status = Status.FAILED
    code: str
    message: str
    details: dict[str, Any] | None = None
    file: dict[str, Any] | None = None


class CommandReply(_Event):
    """The worker's answer to the command with this `id`: ok with what it changed, or the error."""

    type: Literal["command"] = "command"
    id: int | None = None
    ok: bool
    code: str | None = None
    message: str | None = None
    details: dict[str, Any] | None = None
    #: update_streams: every destination's state
    streams: list[dict[str, Any]] | None = None
    #: update_layout: the layout now on screen and when it got there
    layout: str | None = None
    at: float | None = None


Event = Annotated[WarmEvent | StatusEvent | ProgressEvent | StreamEvent | UploadEvent | ResultEvent | ErrorEvent
                  | CommandReply, Field(discriminator="type")]
_EVENT = TypeAdapter(Event)


def parse_event(line: bytes | str) -> Event | None:
    """One line of a worker's stdout as its event; None for anything else (a stray print, a newer event kind)."""
    try:
        return _EVENT.validate_json(line)
    except ValueError:
        return None


class _Command(_Message):
    #: the number the reply carries back
    id: int | None = None


class JobCommand(_Command):
    """A warm worker's job. The request stays a plain object here: the worker validates it as a RecordRequest
    so that a bad one comes back as the egress's error event."""

    op: Literal["job"] = "job"
    egress_id: str
    request: dict[str, Any]


class UpdateStreams(_Command):
    """Add and remove live destinations of a running recording."""

    op: Literal["update_streams"] = "update_streams"
    add: list[str] = []
    remove: list[str] = []


class UpdateLayout(_Command):
    """Switch a running recording to another built-in layout (`name` or `name-theme`)."""

    op: Literal["update_layout"] = "update_layout"
    layout: str


Command = Annotated[JobCommand | UpdateStreams | UpdateLayout, Field(discriminator="op")]
COMMAND = TypeAdapter(Command)
