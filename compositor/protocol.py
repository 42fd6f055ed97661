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

from .request import ParticipantFilter


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
    """The egress completed: what its outputs became (`stopped_by`: limit, stopped, room_ended, idle,
    streams_removed or resumed; `reason`: why in words, for idle)."""

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
    #: where the page's frames landed in Chromium's tick (ms on the monotonic clock), when steady: the service
    #: aims the next job of the same frame by it (JobCommand.landing_ms)
    landing_ms: float | None = None
    stopped_by: str | None = None
    reason: str | None = None


#: the timings of a result (their names begin so) that say how its frames landed against the grabs
#: (pipeline/grab_clock's margins, and how far that moved the file's sound)
GRAB_FIGURES = ("landing", "picture_wait", "sound_shift")


def grab_figures(timings: dict[str, Any] | None) -> dict[str, Any]:
    """The GRAB_FIGURES among a result's timings."""
    return {k: v for k, v in (timings or {}).items() if k.startswith(GRAB_FIGURES)}


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
    #: update_participants: the filter now applied (at `at`)
    participants: dict[str, Any] | None = None
    #: pause/resume: whether the recording is paused now, and every paused span so far ({start, end}: epoch
    #: seconds; the open one has no end)
    paused: bool | None = None
    pauses: list[dict[str, float | None]] | None = None


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
    #: where frames landed in the tick in this node's last job of this frame (ResultEvent.landing_ms)
    landing_ms: float | None = None


class UpdateStreams(_Command):
    """Add and remove live destinations of a running recording."""

    op: Literal["update_streams"] = "update_streams"
    add: list[str] = []
    remove: list[str] = []


class UpdateLayout(_Command):
    """Switch a running recording to another built-in layout (`name` or `name-theme`)."""

    op: Literal["update_layout"] = "update_layout"
    layout: str


class UpdateParticipants(_Command):
    """Change who a running recording shows and plays: the new filter replaces the old one."""

    op: Literal["update_participants"] = "update_participants"
    participants: ParticipantFilter


class Pause(_Command):
    """Stop recording into the files and HLS while the egress goes on: live destinations show the slate."""

    op: Literal["pause"] = "pause"


class Resume(_Command):
    """Record again after a pause: the files and HLS go on from here, as if the paused span never was."""

    op: Literal["resume"] = "resume"


Command = Annotated[JobCommand | UpdateStreams | UpdateLayout | UpdateParticipants | Pause | Resume,
                    Field(discriminator="op")]
COMMAND = TypeAdapter(Command)


# --- Ingress: what the service and an ingress worker (`compositor ingress`) say to each other ---------------


class IngressState(StrEnum):
    """Where an ingress is, as LiveKit's IngressState.Status names it. A reusable one (RTMP, WHIP) goes back to
    INACTIVE when its publisher leaves; a URL pull ends COMPLETE; either may end in ERROR."""

    INACTIVE = "ENDPOINT_INACTIVE"
    BUFFERING = "ENDPOINT_BUFFERING"
    PUBLISHING = "ENDPOINT_PUBLISHING"
    ERROR = "ENDPOINT_ERROR"
    COMPLETE = "ENDPOINT_COMPLETE"


#: An ingress in one of these has a live session (and a worker).
LIVE_INGRESS_STATES = (IngressState.BUFFERING, IngressState.PUBLISHING)


class InputKind(StrEnum):
    """How media comes in."""

    RTMP = "rtmp"
    WHIP = "whip"
    URL = "url"


class VideoLayer(BaseModel):
    """One simulcast layer an ingress publishes."""

    width: int
    height: int
    #: bits per second
    bitrate: int


class IngressVideo(BaseModel):
    """The video track an ingress publishes: its source, frame rate and layers (the first is the top one)."""

    source: Literal["camera", "screen_share"] = "camera"
    name: str | None = None
    fps: float = 30.0
    layers: list[VideoLayer]


class IngressAudio(BaseModel):
    """The Opus audio track an ingress publishes."""

    source: Literal["microphone", "screen_share_audio"] = "microphone"
    name: str | None = None
    #: bits per second
    bitrate: int = 96_000
    channels: Literal[1, 2] = 2


class IngressJob(BaseModel):
    """What one ingress worker runs: where it reads media, and the room it publishes it into."""

    ingress_id: str
    input: InputKind
    #: where the worker reads: the node's own RTMP server (rtmp://127.0.0.1:…/live/KEY) or the request's URL
    #: (http, https, srt); None for WHIP, whose media comes on the peer connection of `whip_offer`
    source_url: str | None = None
    #: WHIP: the publisher's SDP offer; the worker answers it (WhipAnswerEvent)
    whip_offer: str | None = None
    #: the LiveKit server (ws:// or wss://) and a token that joins the room as the ingress's participant
    room_url: str
    token: str
    video: IngressVideo | None = IngressVideo(layers=[VideoLayer(width=1280, height=720, bitrate=1_700_000)])
    audio: IngressAudio | None = IngressAudio()
    #: no media for this long ends the session (a stalled publisher or source)
    stall_s: float = 3.0
    #: WHIP: the publisher's video goes into the room as it came (no decode, one layer: LiveKit's bypass)
    pass_video: bool = False


class _IngressEvent(_Message):
    time: float = Field(default_factory=lambda: round(time.time(), 3))
    ingress_id: str | None = None


class IngressEvent(_IngressEvent):
    """The ingress moved on: BUFFERING (input open, joining the room), PUBLISHING (its tracks are in the room),
    then its end: INACTIVE (the publisher left), COMPLETE (a URL ran out) or ERROR (`code`, `error`)."""

    type: Literal["ingress"] = "ingress"
    state: IngressState
    code: str | None = None
    error: str | None = None
    #: what came in: {"mime_type", "width", "height", "framerate", "average_bitrate"}
    video: dict[str, Any] | None = None
    #: {"mime_type", "channels", "sample_rate", "average_bitrate"}
    audio: dict[str, Any] | None = None
    #: the room's id and the published tracks: [{"sid", "type", "source", "name", "width", "height"}]
    room_id: str | None = None
    tracks: list[dict[str, Any]] | None = None


class IngressReadyEvent(_IngressEvent):
    """A warm ingress worker has loaded its libraries and waits for its job (one IngressJob JSON line on stdin)."""

    type: Literal["ready"] = "ready"


class WhipAnswerEvent(_IngressEvent):
    """A WHIP ingress's SDP answer to its publisher's offer."""

    type: Literal["whip_answer"] = "whip_answer"
    sdp: str


IngressWorkerEvent = Annotated[IngressEvent | WhipAnswerEvent | IngressReadyEvent, Field(discriminator="type")]
_INGRESS_EVENT = TypeAdapter(IngressWorkerEvent)


def parse_ingress_event(line: bytes | str) -> IngressEvent | WhipAnswerEvent | IngressReadyEvent | None:
    """One line of an ingress worker's stdout as its event; None for anything else."""
    try:
        return _INGRESS_EVENT.validate_json(line)
    except ValueError:
        return None
