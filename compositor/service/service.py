"""The egress service: admits, runs, controls and settles egresses through its seams (seams.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from ..destinations import parse_stream_urls, redact_url, redact_ws
from ..errors import CapacityExceeded, Conflict, Draining, InvalidRequest, NotFound, Unavailable
from ..layouts import resolve_layout
from ..livekit_room import SourceFacts, server_from_env
from ..outbound import check_urls
from ..plan import EgressConfig, new_egress_id, outbound_urls, resolve
from ..protocol import (
    Event,
    Pause,
    Resume,
    Status,
    StatusEvent,
    StreamEvent,
    UpdateLayout,
    UpdateParticipants,
    UpdateStreams,
    UploadEvent,
    UploadStatus,
)
from ..request import ParticipantFilter, RecordRequest, UploadSpec
from ..storage import LocalStorage, NameValues, Uploader, render_name, sign_local_url
from ..storage.config import REVEAL
from ..storage.manifest import find_manifest
from ..storage.names import SERVER_PLACEHOLDERS
from .auto_egress import AutoEgress, LocalSessions
from .changes import ChangeFeed
from .cluster import Cluster
from .cluster.node import BLOCK_S
from .cluster.store import Fenced
from .dispatch import LocalDispatcher, egress_cost
from .ingress import IngressService
from .ingress_workers import IngressRunner
from .requests import StartEgressRequest
from .results import fold, kept_file, pending_streams
from .seams import Control, Dispatcher, EgressRecord, Job, NodeRunner, Placed, Runner, Store
from .settings import Settings, private_dir
from .store import SqliteStore
from .webhooks import Webhooks
from .workers import WorkerRunner

log = logging.getLogger(__name__)

# A new egress's file name is checked against this many of its room's newest egresses.
RECENT_OF_ROOM = 50


class Service:
    """One node's egress service, built from its seams: it admits, starts, controls and settles egresses, and
    folds what their workers report into the store with the webhooks each change causes."""

    def __init__(self, settings: Settings, *, store: Store, dispatcher: Dispatcher, runner: Runner,
                 control: Control, webhooks: Webhooks, cluster: Cluster | None = None,
                 ingress_runner: IngressRunner | None = None):
        self.settings = settings
        self.store = store
        self.dispatcher = dispatcher
        self.runner = runner
        self.control = control
        self.webhooks = webhooks
        #: this node's membership of its cluster; None on a single node
        self.cluster = cluster
        #: what requests may reach; the same flags hold every worker to it
        self.policy = settings.outbound_policy
        self.draining = False
        #: egresses as they change, on any node (the dashboard's event stream watches it)
        self.changes = ChangeFeed()
        self._background: set[asyncio.Task] = set()
        self._tasks: list[asyncio.Task] = []
        self._reports: asyncio.Task | None = None
        self._ingress_reports: asyncio.Task | None = None
        self.auto_egress = AutoEgress(store, cluster.sessions if cluster else LocalSessions(), self.start, self.stop)
        #: ingresses, when this node runs them (with `ingress_runner`): their sessions share its capacity
        self.ingress = IngressService(settings, store=store, dispatcher=dispatcher, runner=ingress_runner,
                                      webhooks=webhooks, release=self._release,
                                      remote=cluster.control if cluster else None) if ingress_runner else None

    @classmethod
    def on_this_node(cls, settings: Settings, runner: NodeRunner | None = None) -> Service:
        """The service of a single node: SQLite in the data folder, an in-memory queue, worker processes (or
        `runner`, which is also its Control: simulation.SimulatedRunner for benchmarks)."""
        private_dir(settings.data_dir)
        store = SqliteStore(settings.data_dir / "compositor.db")
        runner = runner or _worker_runner(settings)
        return cls(settings, store=store, dispatcher=LocalDispatcher(settings.resources, settings.max_queue),
                   runner=runner, control=runner, webhooks=_webhooks(settings, store),
                   ingress_runner=_ingress_runner(settings))

    @classmethod
    def in_cluster(cls, settings: Settings, runner: NodeRunner | None = None) -> Service:
        """A node of a cluster (settings.cluster): the store, queue and outbox shared on Redis, calls routed to
        the node that runs each egress, and this node's workers (or `runner`)."""
        private_dir(settings.data_dir)
        local = runner or _worker_runner(settings)
        cluster = Cluster.connect(settings.cluster, settings.resources, settings.max_queue, local)
        # Other nodes' events wake no one here: look for them now and then.
        webhooks = _webhooks(settings, cluster.store, idle_s=BLOCK_S)
        return cls(settings, store=cluster.store, dispatcher=cluster.dispatcher, runner=local,
                   control=cluster.control, webhooks=webhooks, cluster=cluster,
                   ingress_runner=_ingress_runner(settings))

    @classmethod
    def from_settings(cls, settings: Settings) -> Service:
        """A cluster node when the settings name a cluster, else a single node."""
        return cls.in_cluster(settings) if settings.cluster else cls.on_this_node(settings)

    @property
    def ready(self) -> bool:
        """Takes new work: not draining, and (in a cluster) holding its lease."""
        return not self.draining and (self.cluster is None or self.cluster.node.ready)

    async def open(self) -> tuple[list[EgressRecord], list[EgressRecord]]:
        """Join the cluster (if any), start the service's own tasks, and recover what a previous run left:
        returns (resumed, settled) as recover() does."""
        if self.cluster:
            await self.cluster.node.join()
        self.start_background()
        if self.ingress:
            await self.ingress.open()
            self._ingress_reports = asyncio.create_task(self.ingress.follow())
        return await self.recover()

    def start_background(self) -> None:
        """Start the service's own tasks (webhook delivery, workers' reports, warm workers, and in a cluster
        the lease, the search for lost nodes, calls from other nodes and jobs they place here); needs the
        running loop."""
        self.webhooks.start()
        self._reports = asyncio.create_task(self._follow_reports())
        self._tasks.append(asyncio.create_task(self._run_placed()))
        self._tasks.append(asyncio.create_task(self.changes.follow(self.store)))
        if self.cluster:
            node = self.cluster.node
            self._tasks += [asyncio.create_task(node.every(self._keep_lease, "the lease")),
                            asyncio.create_task(node.every(self._find_lost, "the search for lost nodes")),
                            asyncio.create_task(self.cluster.control.serve(
                                self.ingress.stop_here if self.ingress else None))]
        self.runner.replenish()

    async def _run_placed(self) -> None:
        async for job in self.dispatcher.placed():
            self._in_background(self._launch(job))

    async def _keep_lease(self) -> None:
        if await self.cluster.node.renew() or self.draining:
            return
        # The cluster declared this node lost and settled its egresses: what its workers do now counts for
        # nothing. Stop them, then join again as a new node.
        log.error("node %s was declared lost by the cluster: stopping its workers, then joining again",
                  self.cluster.node.id)
        for egress_id in self.runner.running:
            await self.runner.stop(egress_id)
        if self.ingress:
            await self.ingress.stop_sessions()
        deadline = time.monotonic() + self.settings.stop_grace_s
        while self.runner.running and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await self.cluster.node.join()

    async def _find_lost(self) -> None:
        if not await self.cluster.node.is_sweeper():
            return
        for node_id in await self.cluster.node.claim_lost():
            log.warning("node %s was lost (no lease renewal for %g s): settling its egresses", node_id,
                        self.cluster.node.lease_s)
        for egress_id in await self.cluster.node.lost_egresses():
            await self._settle_lost(egress_id)
        for job in await self.cluster.dispatcher.pump():
            self._in_background(self._launch(job))

    async def _settle_lost(self, egress_id: str) -> None:
        """An egress of a lost node: one it never started waits again (at the queue's head); one it ran ends
        FAILED (NODE_LOST), its file listed where it was going. (An ingress session of the node ends in error.)"""
        rec = await self.store.get(egress_id)
        if rec is None and self.ingress and await self.store.get_ingress(egress_id):
            await self.ingress.settle_lost(egress_id)
            await self.cluster.node.settled_lost(egress_id)
            return
        if rec is not None and not rec.ended:
            if rec.status == Status.STARTING and rec.worker_pid is None:
                again = await self.cluster.dispatcher.requeue(egress_id)
                for job in again or []:
                    self._in_background(self._launch(job))
                if again is not None:
                    log.info("egress %s never started on its lost node: placed again", egress_id)
                    await self.cluster.node.settled_lost(egress_id)
                    return
            await self._change(egress_id, status=Status.FAILED, ended_at=time.time(), error_code="NODE_LOST",
                               error=f"node {rec.node or 'unknown'} was lost while this egress ran",
                               file=lost_file(rec))
        else:
            await self.dispatcher.release(egress_id)
        await self.cluster.node.settled_lost(egress_id)

    async def recover(self) -> tuple[list[EgressRecord], list[EgressRecord]]:
        """After a restart: resume the deliveries left unfinished (outputs staged, manifest written), and end
        every other egress left running, keeping its file. Returns (resumed, settled). In a cluster, what a
        node left is the cluster's to settle (NODE_LOST), as for any lost node."""
        resumed, settled = [], []
        for rec in [] if self.cluster else await self.store.unfinished():
            job = self.runner.job_request(rec.id)
            upload = job and job.upload
            if upload and not upload.in_place and find_manifest(Path(upload.staging), rec.id):
                await self.runner.resume_delivery(rec.id)
                resumed.append(rec)
                continue
            file = await kept_file(rec.request)
            # The worker finished its file when the service went: the media's end is when it did.
            ended = rec.started_at + file["duration"] if file and file.get("duration") and rec.started_at \
                else time.time()
            done = await self._change(rec.id, status=Status.FAILED, ended_at=ended,
                                      error_code="SERVICE_RESTARTED", file=file,
                                      error="the service stopped while this egress ran; its file is kept as it was")
            self.runner.forget_job(rec.id)
            settled.append(done)
        return resumed, settled

    async def start(self, req: StartEgressRequest, request_shape: str = "") -> EgressRecord:
        """Admit an egress: started at once, or queued for capacity (`req.queue`), or refused. `request_shape`
        says which of LiveKit's request shapes it came in, for answers in the same (see EgressRecord)."""
        if self.draining:
            raise Draining("the service is shutting down")
        if not self.ready:
            raise Unavailable("this node is out of its cluster for now (no lease): try another node")
        job, config = await self._plan(req, new_egress_id())
        egress_id, record_req = job.egress_id, job.request
        hooks = self.webhooks.requested(req.webhooks)
        await self.dispatcher.check(job.cost, req.queue)  # before resolving its hosts, which may take a while
        await check_urls(self.policy, [*outbound_urls(config), *((f"webhooks.{i}.url", h["url"])
                                                                  for i, h in enumerate(hooks))])
        # The record keeps the layout the caller named, never the server's path of a custom one.
        await self.store.create(EgressRecord(
            id=egress_id, room_name=req.room_name, mode=req.mode, kind=req.kind, layout=req.layout,
            quality=req.quality, request=_stored(record_req), request_shape=request_shape,
            webhooks=hooks or None,
            streams=pending_streams(config.stream.targets) if config.stream else None))
        try:
            placed = await self.dispatcher.admit(job, req.queue)
        except CapacityExceeded:
            await self.store.delete(egress_id)
            raise
        if placed is Placed.HERE:
            await self._launch(job)
        return await self.store.get(egress_id)

    async def _plan(self, req: StartEgressRequest, egress_id: str) -> tuple[Job, EgressConfig]:
        """The one planning step: where the outputs go, the worker's request, and the job resolved from it
        with every check that needs no process."""
        upload = self._upload_spec(req, egress_id)
        # Names collide only within a room (they hold its name), and only with its newest egresses.
        recent, _ = await self.store.list(room_name=req.room_name, limit=RECENT_OF_ROOM)
        source = await self._source_facts(req)
        paths = self._output_paths(req, egress_id, Path(upload.staging), [r for r in recent if not r.ended], source)
        record_req = req.to_record_request(paths, upload, self.settings.server_facts, source)
        config = resolve(record_req, egress_id, {**os.environ, **self.settings.livekit_env}, self.policy)
        return Job(egress_id, record_req, egress_cost(config), config.frame), config

    def _upload_spec(self, req: StartEgressRequest, egress_id: str) -> UploadSpec:
        """Where this egress's outputs go: the request's storage or the server's, staged locally first."""
        s = self.settings
        storage = req.storage or s.storage
        outputs = {kind: spec.storage for kind, spec in (("file", req.file), ("segments", req.segments),
                                                         ("images", req.images)) if spec and spec.storage}
        in_place = all(isinstance(st, LocalStorage) for st in (storage, *outputs.values()))
        return UploadSpec(storage=storage, backup=req.backup_storage or s.backup_storage, outputs=outputs,
                          staging=str(s.recordings_dir if in_place else s.staging_dir(egress_id)),
                          local_root=str(s.recordings_dir), retry_window_s=s.upload_retry_window_s)

    async def _source_facts(self, req: StartEgressRequest) -> SourceFacts:
        """What the LiveKit server says of the egress's room, participant or track, asked only when a name
        template needs it ({room_id}, {track_id}…) or a track's file is to keep the track's channels. The
        names are fixed here, before the worker starts: the API shows them from the start."""
        identity = req.participant.identity if req.participant else None
        if not (self.settings.server_facts.room_server and req.room is None and not req.web_url):
            return SourceFacts(publisher_identity=identity or "")
        templates = [req.file and req.file.filepath, req.segments and req.segments.filename_prefix,
                     req.images and req.images.filename_prefix]
        asks = any(f"{{{name}}}" in (t or "") for t in templates for name in SERVER_PLACEHOLDERS)
        if not (asks or (req.track and req.wants_file)):
            return SourceFacts(publisher_identity=identity or "")
        tc = req.track_composite
        tracks = (req.track.track_id,) if req.track else tuple(t for t in (tc.audio_track_id, tc.video_track_id)
                                                                if t) if tc else ()
        return await server_from_env(self.settings.livekit_env).source_facts(req.room_name, identity, tracks)

    @staticmethod
    def _output_paths(req: StartEgressRequest, egress_id: str, staging: Path,
                      unfinished: list[EgressRecord], source: SourceFacts) -> dict[str, str]:
        """Each output's storage key from its filename template, as a path under `staging`."""
        values = NameValues(room_name=req.room_name, egress_id=egress_id, room_id=source.room_id,
                            publisher_identity=source.publisher_identity, track_id=source.track_id,
                            track_type=source.track_type, track_source=source.track_source)
        now = datetime.now(timezone.utc)
        paths = {}
        if req.wants_file:
            ext = req.file_type.lower()
            key = render_name(req.file and req.file.filepath, values, ext, now=now, field="file.filepath")
            in_use = {r.request.get("file", {}).get("filepath") for r in unfinished}
            if (staging / key).exists() or str(staging / key) in in_use:
                # Two egresses of one room in the same second would share {room_name}-{time}.
                stem, dot, suffix = key.rpartition(".")
                key = f"{stem}-{egress_id}{dot}{suffix}"
            paths["file"] = str(staging / key)
        for kind in ("segments", "images"):
            out = getattr(req, kind)
            if out:
                paths[kind] = str(staging / render_name(out.filename_prefix, values, None, now=now,
                                                        field=f"{kind}.filenamePrefix"))
        return paths

    async def _launch(self, job: Job) -> None:
        rec = await self.store.get(job.egress_id)
        if rec is None or rec.ended:  # stopped (or deleted) on its way here
            await self.dispatcher.release(job.egress_id)
            return
        job = await self._on_this_disk(job)
        try:
            pid = await self.runner.start(job)
        except OSError as exc:
            self.runner.forget_job(job.egress_id)
            await self._change(job.egress_id, status=Status.FAILED, ended_at=time.time(), error_code="WORKER_START",
                               error=f"could not start the worker: {exc}")
            return
        rec = await self.store.update(job.egress_id, worker_pid=pid, node=self.settings.node_id)
        if rec.ended:  # stopped while its worker started
            await self.runner.stop(job.egress_id)

    async def _on_this_disk(self, job: Job) -> Job:
        """A job another node planned writes under that node's data dir: here, it writes under this one's (the
        same place on a cluster whose nodes share one data_dir path)."""
        upload = job.request.upload
        theirs = Path(upload.local_root).parent if upload and upload.local_root else None
        if theirs is None or theirs == self.settings.data_dir:
            return job
        data = _rebased(job.request.model_dump(mode="json", exclude_none=True, context=REVEAL), str(theirs),
                        str(self.settings.data_dir))
        request = RecordRequest.model_validate(data)
        await self.store.update(job.egress_id, request=_stored(request))
        return Job(job.egress_id, request, job.cost, job.frame)

    async def queue_position(self, egress_id: str) -> int | None:
        """1 for the next egress to start, None when it is not waiting."""
        return await self.dispatcher.position(egress_id)

    async def stop(self, egress_id: str) -> EgressRecord:
        """Ask an egress to finish (a queued one ends ABORTED at once)."""
        rec = await self._running(egress_id)
        if await self.dispatcher.withdraw(egress_id):
            return await self._change(egress_id, status=Status.ABORTED, ended_at=time.time(), error_code="ABORTED",
                                      error="stopped while waiting for capacity")
        if await self.control.stop(egress_id):
            if rec.status == Status.ACTIVE:
                return await self.store.update(egress_id, status=Status.ENDING)
        elif rec.status == Status.STARTING:
            # Placed, but its worker is not up yet: it ends here, and its worker is stopped as it comes up.
            return await self._change(egress_id, status=Status.ABORTED, ended_at=time.time(), error_code="ABORTED",
                                      error="stopped before it started")
        return await self.store.get(egress_id)

    async def _running(self, egress_id: str) -> EgressRecord:
        """The egress, which must not have ended."""
        rec = await self.get(egress_id)
        if rec.ended:
            raise Conflict("EGRESS_ENDED", f"egress {egress_id} has already ended ({rec.status})")
        return rec

    async def get(self, egress_id: str) -> EgressRecord:
        """The egress; NotFound when there is none of that id."""
        rec = await self.store.get(egress_id)
        if rec is None:
            raise NotFound(f"no egress {egress_id!r}")
        return rec

    async def download_url(self, rec: EgressRecord, origin: str, ttl: int) -> str:
        """A URL that downloads the egress's file for `ttl` seconds: presigned by its storage, or signed here."""
        f = rec.file or {}
        if (f.get("storage") or "local") == "local":
            key = f.get("key")
            if not key:
                root, path = self.settings.recordings_dir.resolve(), Path(f.get("location", "")).resolve()
                if root not in path.parents:
                    raise NotFound(f"the file of {rec.id} is not in the recordings folder")
                key = path.relative_to(root).as_posix()
            if self.cluster and rec.node and rec.node != self.cluster.node.id:
                # The file is on the disk of the node that recorded it: the URL leads there.
                origin = await self.cluster.node.url_of(rec.node) or origin
            return sign_local_url(origin, key, self.settings.url_signing_key, ttl)
        upload = self.runner.kept_storage(rec.id)
        if upload is None:
            raise Conflict("NOT_AVAILABLE", f"the storage credentials of {rec.id} are gone; sign a URL with your own")
        async with Uploader(upload.storage_of("file"), backup=upload.backup) as uploader:
            return await uploader.presign(f["key"], ttl, backup_used=bool(f.get("backup_used")))

    async def delete(self, egress_id: str) -> None:
        """Forget an ended egress (its stored files stay where they are)."""
        await self.store.delete(egress_id)
        self.runner.forget_job(egress_id, keep_storage=False)

    async def update_streams(self, egress_id: str, add: list[str], remove: list[str]) -> EgressRecord:
        """Add and remove live destinations of a running egress."""
        rec = await self.get(egress_id)
        if "stream" not in rec.request:
            raise Conflict("NO_STREAM_OUTPUT", f"egress {egress_id} has no stream output; start it with mode "
                                               f"'stream' or 'both' (urls may be empty) to add destinations later")
        _must_be_active(rec, "destinations change")
        added = parse_stream_urls(add, "add")
        parse_stream_urls(remove, "remove")
        await check_urls(self.policy, [(f"add.{i}", t.url) for i, t in enumerate(added)])
        await self.control.command(egress_id, UpdateStreams(add=add, remove=remove))
        return await self.store.get(egress_id)

    async def update_layout(self, egress_id: str, layout: str) -> EgressRecord:
        """Switch a recording egress to another built-in layout (`grid`, `speaker-light`, …)."""
        rec = await self.get(egress_id)
        if "template_url" not in rec.request:  # a template's layouts are its own to name
            # Never a path: that would probe the server's disk.
            if "/" in layout or layout.endswith(".j2"):
                raise InvalidRequest("a running egress switches between built-in layouts; a custom layout is chosen "
                                     "when the egress starts", details={"field": "layout"})
            resolve_layout(layout)
        _must_be_active(rec, "its layout changes")
        await self.control.command(egress_id, UpdateLayout(layout=layout))
        return await self.store.update(egress_id, layout=layout)

    async def update_participants(self, egress_id: str, participants: ParticipantFilter) -> EgressRecord:
        """Change who a running egress records (its participant filter, replaced whole); the record keeps the
        filter now applied."""
        rec = await self.get(egress_id)
        if rec.kind != "room_composite" or "template_url" in rec.request:
            raise Conflict("NOT_FILTERABLE", f"egress {egress_id} is a {rec.kind.replace('_', ' ')} egress"
                           + (" through template_url" if rec.kind == "room_composite" else "")
                           + "; only a room composite rendered by our layouts filters its participants")
        _must_be_active(rec, "its participants change")
        await self.control.command(egress_id, UpdateParticipants(participants=participants))
        wanted = participants.model_dump(mode="json", exclude_none=True)
        return await self.store.update(egress_id, request=rec.request | {"participants": wanted})

    async def pause(self, egress_id: str) -> EgressRecord:
        """Pause a running egress: its files and HLS leave out what follows, its live destinations show the
        slate; it stays ACTIVE, paused (webhooks say so)."""
        rec = await self.get(egress_id)
        _must_be_active(rec, "it pauses")
        if rec.paused:
            raise Conflict("ALREADY_PAUSED", f"egress {egress_id} is already paused; resume it first")
        reply = await self.control.command(egress_id, Pause())
        return await self._change(egress_id, pauses=reply.pauses)

    async def resume(self, egress_id: str) -> EgressRecord:
        """Resume a paused egress: its files and HLS go on from the next keyframe (within 2 s)."""
        rec = await self.get(egress_id)
        _must_be_active(rec, "it resumes")
        if not rec.paused:
            raise Conflict("NOT_PAUSED", f"egress {egress_id} is not paused")
        reply = await self.control.command(egress_id, Resume())
        return await self._change(egress_id, pauses=reply.pauses)

    async def _follow_reports(self) -> None:
        """Fold each worker's events into the store, in the order they came."""
        async for egress_id, event in self.runner.events():
            while True:
                try:
                    await self._fold(egress_id, event)
                except Fenced:
                    log.warning("egress %s: the worker's %s event is refused: the cluster declared this node "
                                "lost", egress_id, event.type)
                except Unavailable as exc:
                    # (Only a cluster's store is ever away; a node the cluster declared lost drops the event.)
                    if self.cluster and self.cluster.node.joined:
                        # The shared store is away for a moment: keep the event until it is back.
                        log.warning("egress %s: keeping the %s event until the store is back (%s)", egress_id,
                                    event.type, exc.message)
                        await asyncio.sleep(1.0)
                        continue
                except Exception:  # one bad report must not stop the others from being kept
                    log.exception("egress %s: could not keep the worker's %s event", egress_id, event.type)
                break

    async def _fold(self, egress_id: str, event: Event) -> None:
        if isinstance(event, StreamEvent):
            await self._change_stream(egress_id, event.index, event.state())
        elif isinstance(event, UploadEvent) and event.status == UploadStatus.STORED:
            # Stored again after retries: the storage is back.
            if ((await self.get(egress_id)).upload or {}).get("status") == UploadStatus.RETRYING:
                log.info("egress %s: the storage took %s: uploads go on", egress_id, event.key)
                await self._change(egress_id, upload=None)
        elif (fields := fold(event)) is not None:
            if isinstance(event, StatusEvent) and event.status == Status.ACTIVE and event.message:
                log.warning("egress %s: %s", egress_id, event.message)
            if isinstance(event, UploadEvent):
                log.warning("egress %s: storing %s failed (%s: %s); %s", egress_id, event.key, event.code,
                            event.message, f"attempt {event.attempt}, next in {event.delay_s:g} s"
                            if event.status == UploadStatus.RETRYING else "the backup storage takes over")
            await self._change(egress_id, **fields)

    async def _change(self, egress_id: str, **fields) -> EgressRecord:
        """Change an egress and queue the webhooks the change causes, in one transaction; an egress that ended
        gives its capacity to the next in the queue."""
        rec = await self.store.update(egress_id, events=self.webhooks.for_change, **fields)
        if "status" in fields:
            log.info("egress %s %s", rec.id, rec.status)
            if rec.ended:
                await self._release(rec.id)
        return rec

    async def _change_stream(self, egress_id: str, index: int, state: dict) -> None:
        """The `index`-th live destination of an egress changed (a new index: one was added)."""
        streams = list((await self.get(egress_id)).streams or [])
        streams[index:index + 1] = [state]
        await self.store.update(egress_id, events=self.webhooks.for_stream(index), streams=streams)

    async def _release(self, egress_id: str) -> None:
        """An egress ended: run the queued ones its capacity admits (or, draining, abort them)."""
        for job in await self.dispatcher.release(egress_id):
            if self.draining:
                await self._change(job.egress_id, status=Status.ABORTED, ended_at=time.time(), error_code="ABORTED",
                                   error="the service shut down while this egress waited for capacity")
            else:
                self._in_background(self._launch(job))

    def _in_background(self, work) -> None:
        # A launch waits for its worker to start: not inside the change that made room for it.
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def shutdown(self) -> None:
        """Drain: take no new work, let running egresses finish their files (in a cluster, then leave it)."""
        self.draining = True
        await self.auto_egress.close()
        for job in await self.dispatcher.drain():
            await self.stop(job.egress_id)  # never started: ABORTED
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.ingress:
            await self.ingress.shutdown()
            if self._ingress_reports:
                await self._ingress_reports  # the sessions' last states, kept
        await self.runner.shutdown(self.settings.stop_grace_s)
        if self._reports:
            await self._reports  # the runner's last reports, kept
        if self.cluster:
            self.cluster.node.closing = True  # its loops end at their next turn, however a cancel fares
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.cluster:
            await self.cluster.node.leave()
        await self.webhooks.stop()
        await self.store.close()


def _worker_runner(settings: Settings) -> WorkerRunner:
    """This node's worker processes, held to the settings' policy."""
    return WorkerRunner(settings.data_dir / "jobs", warm_target=settings.warm_workers, warm_size=settings.warm_size,
                        worker_args=settings.worker_args, worker_env=settings.livekit_env)


def _ingress_runner(settings: Settings) -> IngressRunner:
    """This node's ingress workers, held to the settings' policy."""
    return IngressRunner(settings.data_dir / "jobs", worker_args=settings.worker_args,
                         warm_target=settings.ingress_warm_workers)


def _webhooks(settings: Settings, store: Store, **kw) -> Webhooks:
    """The settings' webhook receivers, fed from `store`'s outbox."""
    return Webhooks(store, settings.webhook_urls, settings.webhook_secret, settings.webhook_retry_base_s,
                    settings.webhook_formats, settings.livekit_api_key, settings.livekit_api_secret,
                    policy=settings.outbound_policy, **kw)


def _rebased(value, old: str, new: str):
    """`value` (JSON data) with every path under the folder `old` moved under `new`."""
    if isinstance(value, dict):
        return {k: _rebased(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebased(v, old, new) for v in value]
    if isinstance(value, str) and (value == old or value.startswith(old + "/")):
        return new + value[len(old):]
    return value


def lost_file(rec: EgressRecord) -> dict | None:
    """Where a lost node was writing an egress's file (its size unknown: the file is on that node's disk)."""
    path = Path(rec.request.get("file", {}).get("filepath", ""))
    return {"location": str(path), "filename": path.name, "node": rec.node} if path.name else None


def _must_be_active(rec: EgressRecord, what: str) -> None:
    if rec.status != Status.ACTIVE:
        raise Conflict("EGRESS_NOT_ACTIVE", f"egress {rec.id} is {rec.status}; {what} only while it is ACTIVE")


def _stored(request: RecordRequest) -> dict:
    """The worker's request as the store keeps it: no stream key, SRT passphrase or WebSocket query (those
    stay in the worker's 0600 job file), storage secrets already `***`."""
    data = request.model_dump(mode="json", exclude_none=True)
    if request.stream:
        data["stream"]["urls"] = [redact_url(url) for url in request.stream.urls]
    if request.websocket:
        data["websocket"] = redact_ws(request.websocket)
    return data
