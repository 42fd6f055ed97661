"""The service's seams: what it keeps (`Store`), how it admits (`Dispatcher`), how it runs workers (`Runner`)
and how a call reaches a running worker (`Control`), with the records that cross them.

`Service` is built from one implementation of each. On one node they are SQLite (store.SqliteStore), an
in-process queue (dispatch.LocalDispatcher) and worker processes (workers.WorkerRunner, which is also the
Control); benchmarks plug in simulation.SimulatedRunner, which runs no process.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Protocol

from ..protocol import ENDED_STATUSES, LIVE_INGRESS_STATES, Command, CommandReply, Event, IngressState, Status
from ..request import RecordRequest, UploadSpec


@dataclass
class EgressRecord:
    """One egress as stored: its request, where it is, and what came of it."""

    id: str
    room_name: str
    mode: str
    layout: str
    quality: str
    request: dict
    status: Status = Status.STARTING
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    error_code: str | None = None
    file: dict | None = None
    worker_pid: int | None = None
    #: each live destination as the worker last reported it (URLs redacted)
    streams: list | None = None
    #: what the other outputs became: {"segments": {...}, "images": {...}}
    outputs: dict | None = None
    #: LiveKit's egress type: room_composite, web, participant, track_composite or track
    kind: str = "room_composite"
    #: while its outputs wait on a storage: {"status": RETRYING or BACKUP, "attempt", "key", "error",
    #: "error_code", "retry_in_s"} (UploadStatus); None once they go through
    upload: dict | None = None
    #: "start_egress" when it came as LiveKit's unified StartEgressRequest (its answers carry that shape back);
    #: "" for the older per-source requests and ours
    request_shape: str = ""
    #: the node whose worker runs it (in a cluster; None on a single node, or until placed)
    node: str | None = None
    #: the receivers its request named, which get its own events beside the server's
    #: ({"url", "format", "include_events", "exclude_events"}: webhooks.RequestedReceiver as JSON)
    webhooks: list | None = None
    #: why a completed egress ended (the worker's stopped_by: limit, stopped, room_ended, idle, …)
    stopped_by: str | None = None
    #: with stopped_by idle: why, in words ("no one published for 30 s")
    end_reason: str | None = None
    #: every paused span ({"start", "end"}: epoch seconds; the open one has no end), as the worker said
    pauses: list | None = None

    @property
    def paused(self) -> bool:
        """It is paused now."""
        return bool(self.pauses) and self.pauses[-1].get("end") is None

    @property
    def ended(self) -> bool:
        return self.status in ENDED_STATUSES


@dataclass
class IngressRecord:
    """One ingress as stored: what the caller asked for, and its current (or last) session's state."""

    id: str
    #: rtmp, whip or url (protocol.InputKind)
    input_type: str
    room_name: str
    participant_identity: str
    name: str = ""
    participant_name: str = ""
    participant_metadata: str = ""
    #: RTMP and WHIP: the publisher's secret (the RTMP stream name, the WHIP bearer token); "" for URL
    stream_key: str = ""
    #: URL: where media is pulled from (kept as given: it may hold credentials, shown redacted)
    url: str = ""
    enabled: bool = True
    enable_transcoding: bool = True
    #: the request's video and audio options as given ({"source", "preset"|"options", "name"})
    video: dict = field(default_factory=dict)
    audio: dict = field(default_factory=dict)
    state: IngressState = IngressState.INACTIVE
    error: str = ""
    error_code: str = ""
    #: the current session: its id, its input as received, the room's id and the published tracks
    resource_id: str = ""
    input_video: dict | None = None
    input_audio: dict | None = None
    room_id: str = ""
    tracks: list | None = None
    started_at: float | None = None
    ended_at: float | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    worker_pid: int | None = None
    #: the cluster node that runs its current (or last) session; "" on a single node
    node: str = ""

    @property
    def live(self) -> bool:
        """A session is on: a worker buffers or publishes it."""
        return self.state in LIVE_INGRESS_STATES

    @property
    def reusable(self) -> bool:
        """RTMP and WHIP take publisher after publisher; a URL is pulled once."""
        return self.input_type != "url"


_INGRESS_FIELDS = frozenset(f.name for f in fields(IngressRecord))


def ingress_to_json(rec: IngressRecord) -> str:
    """An ingress as every store keeps it: one JSON document of all its fields."""
    return json.dumps(asdict(rec))


def ingress_from_json(raw: str) -> IngressRecord:
    """The ingress `ingress_to_json` wrote (fields a newer node added are left out: a cluster upgrades node by
    node)."""
    data = json.loads(raw)
    return IngressRecord(**{k: v for k, v in data.items() if k in _INGRESS_FIELDS}
                         | {"state": IngressState(data["state"])})


@dataclass(frozen=True)
class OutboxEvent:
    """One webhook event for one receiver, as the outbox keeps it until it is delivered or given up."""

    event_id: str
    egress_id: str
    url: str
    #: baxcloud or livekit: how it is signed
    format: str
    body: str
    attempts: int = 0
    created_at: float = 0.0
    #: the outbox's own order; 0 until stored
    seq: int = 0
    #: a receiver a request named (not the operator): reached only under the outbound policy, no redirects
    untrusted: bool = False


#: What a change causes: the events for (the egress before, the egress after).
EventsOf = Callable[[EgressRecord, EgressRecord], list[OutboxEvent]]
#: What an ingress's change causes: the events for (before, after).
IngressEventsOf = Callable[[IngressRecord, IngressRecord], list[OutboxEvent]]


class Store(Protocol):
    """Egresses, ingresses, settings and the webhook outbox. A change and the events it causes commit together; a
    settled egress's status is final (a change of it is dropped whole, and the record returned as stored).
    The outbox hands out, per egress and receiver, only the oldest pending event, claimed for a lease: an
    event whose sender died is due again when its lease ends."""

    async def create(self, rec: EgressRecord) -> None: ...
    async def get(self, egress_id: str) -> EgressRecord | None: ...
    async def update(self, egress_id: str, *, events: EventsOf | None = None, **fields) -> EgressRecord: ...
    async def list(self, *, room_name: str | None = None, status: str | None = None,
                   modes: tuple[str, ...] = (), page: int = 1, limit: int = 20,
                   oldest_first: bool = False) -> tuple[list[EgressRecord], int]:
        """One page of egresses (of a room, a status, any of `modes`), newest first, and how many match."""
        ...
    async def delete(self, egress_id: str) -> None: ...
    def changes(self) -> AsyncIterator[str | None]:
        """The id of each egress as it is created, changed or deleted, by any node, once committed; None when
        changes may have been missed (a lost connection), so a follower reads everything again."""
        ...
    async def unfinished(self) -> list[EgressRecord]: ...
    async def get_setting(self, key: str) -> dict | None: ...
    async def put_setting(self, key: str, value: dict) -> None: ...
    async def counts(self) -> list[tuple[str, str, int]]: ...
    async def first_sighting(self, event_id: str, keep_s: float) -> bool: ...
    async def claim_events(self, now: float, lease_s: float) -> list[OutboxEvent]: ...
    async def next_event_at(self) -> float | None: ...
    async def event_delivered(self, seq: int, attempts: int) -> None: ...
    async def event_retry(self, seq: int, attempts: int, next_at: float, error: str) -> None: ...
    async def event_given_up(self, seq: int, attempts: int, error: str) -> None: ...
    async def event_backlog(self) -> int: ...
    async def create_ingress(self, rec: IngressRecord) -> None: ...
    async def get_ingress(self, ingress_id: str) -> IngressRecord | None: ...
    async def ingress_of_key(self, stream_key: str) -> IngressRecord | None: ...
    async def update_ingress(self, ingress_id: str, *, events: IngressEventsOf | None = None,
                             **fields) -> IngressRecord: ...
    async def list_ingress(self, *, room_name: str | None = None) -> list[IngressRecord]: ...
    async def delete_ingress(self, ingress_id: str) -> None: ...
    async def close(self) -> None: ...


# Needs are sums of decimals: compared with this much slack.
EPSILON = 1e-9


@dataclass(frozen=True)
class Need:
    """What a job holds while it runs, or what a node has to give: CPU cores and memory."""

    cores: float
    memory_mb: float

    def fits(self, free: Need) -> bool:
        """Whether this much fits in `free`, on both counts."""
        return self.cores <= free.cores + EPSILON and self.memory_mb <= free.memory_mb + EPSILON

    def __add__(self, other: Need) -> Need:
        return Need(self.cores + other.cores, self.memory_mb + other.memory_mb)

    def __sub__(self, other: Need) -> Need:
        return Need(self.cores - other.cores, self.memory_mb - other.memory_mb)

    def lacking(self, free: Need) -> str:
        """What of this `free` lacks, said for a refusal: '0.7 cores, 0.30 free' and/or memory."""
        said = []
        if self.cores > free.cores + EPSILON:
            said.append(f"{self.cores} cores, {max(free.cores, 0):.2f} free")
        if self.memory_mb > free.memory_mb + EPSILON:
            said.append(f"{self.memory_mb:.0f} MB of memory, {max(free.memory_mb, 0):.0f} MB free")
        return "; ".join(said) or f"{self.cores} cores and {self.memory_mb:.0f} MB"

    def details(self, free: Need) -> dict:
        """The refusal's machine-readable facts."""
        return {"needed": self.cores, "free": round(max(free.cores, 0), 3), "neededMemoryMb": round(self.memory_mb),
                "freeMemoryMb": round(max(free.memory_mb, 0))}


@dataclass
class Job:
    """An egress ready to run: what its worker gets, and what it costs. (An ingress session holds its cost as a
    Job of its ingress id and no request: admission counts both kinds against one capacity.)"""

    egress_id: str
    request: RecordRequest | None
    #: the cores and memory it holds while it runs
    cost: Need
    #: (width, height, sample rate): a warm worker takes only a job of its own frame
    frame: tuple[int, int, int]


class Placed(StrEnum):
    """Where admission put a job."""

    #: it holds its cost on this node: run it here now
    HERE = "here"
    #: it holds its cost on another node of the cluster, which runs it
    ELSEWHERE = "elsewhere"
    #: it waits for capacity
    QUEUED = "queued"


class Dispatcher(Protocol):
    """Admission: a job runs while the summed cost of running jobs fits the capacity; otherwise it waits in a
    bounded queue, first come first served, or is refused."""

    @property
    def capacity(self) -> Need: ...
    async def free(self) -> Need:
        """What this node has not given to jobs."""
    async def check(self, cost: Need, queue: bool) -> None:
        """Raise InvalidRequest for a cost no capacity holds, CapacityExceeded when a job of `cost` could
        neither run now nor wait (with `queue`): the cheap refusal before any slow check."""
    async def admit(self, job: Job, queue: bool) -> Placed:
        """Place `job`: it holds its cost on a node and runs there now, or waits in the queue (with `queue`);
        CapacityExceeded when neither."""
    async def admit_here(self, job: Job) -> None:
        """Hold `job`'s cost on this node now, for work that can neither wait nor move (an ingress session: its
        publisher is connected to this node); CapacityExceeded when it does not fit here or egresses wait, Conflict
        when its id holds capacity already (two publishers of one key on two nodes at once)."""
    async def release(self, egress_id: str) -> list[Job]:
        """An egress ended: its cost is free again. Returns the queued jobs that now hold theirs on this node,
        to run here (those placed on other nodes reach them through their `placed()`)."""
    def placed(self) -> AsyncIterator[Job]:
        """Jobs other nodes placed on this one, to run here, as they come."""
    async def withdraw(self, egress_id: str) -> bool:
        """Take a job out of the queue; False when it was not waiting."""
    async def position(self, egress_id: str) -> int | None:
        """1 for the next job to run, None when it is not waiting."""
    async def drain(self) -> list[Job]:
        """This node takes no more jobs. Returns the waiting jobs that end with it (a cluster's queue outlives
        any node: none there), for the service to abort."""


class Control(Protocol):
    """Calls that reach the worker of a running egress."""

    async def stop(self, egress_id: str) -> bool:
        """Ask it to finish its outputs; False when no worker runs it."""
    async def command(self, egress_id: str, command: Command) -> CommandReply:
        """Its answer to `command`; Conflict/InvalidRequest when it is not running or refuses."""


class Runner(Protocol):
    """Runs egresses, and reports what their workers say as (egress id, event) in order, until closed."""

    @property
    def running(self) -> list[str]: ...
    @property
    def warm(self) -> int: ...
    async def start(self, job: Job) -> int | None:
        """Run `job`; its worker's pid. Raises OSError when no worker could start."""
    async def resume_delivery(self, egress_id: str) -> None:
        """Store the outputs an earlier run staged but did not store."""
    def events(self) -> AsyncIterator[tuple[str, Event]]: ...
    def job_request(self, egress_id: str) -> RecordRequest | None:
        """The request (secrets included) an unfinished egress's worker got; None when forgotten."""
    def forget_job(self, egress_id: str, *, keep_storage: bool = True) -> None: ...
    def kept_storage(self, egress_id: str) -> UploadSpec | None: ...
    def replenish(self) -> None:
        """Bring up the idle warm workers it keeps ready."""
    async def shutdown(self, grace: float) -> None:
        """Stop every worker (those past `grace` killed); the event stream ends after their last events."""


class NodeRunner(Runner, Control, Protocol):
    """A runner that is also the Control of what it runs: on one node, calls reach workers directly."""
