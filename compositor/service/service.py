"""The egress service: one node's state (store), admission, workers, webhooks and auto egress."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from ..destinations import parse_stream_urls, redact_url, redact_ws
from ..errors import CapacityExceeded, Conflict, Draining, InvalidRequest, NotFound
from ..layouts import resolve_layout
from ..outbound import check_urls
from ..plan import new_egress_id, outbound_urls, resolve
from ..protocol import Status, UpdateLayout
from ..request import RecordRequest, UploadSpec
from ..storage import LocalStorage, NameValues, Uploader, render_name, sign_local_url
from ..storage.manifest import find_manifest
from .admission import Admission, Queued, egress_cost
from .auto_egress import AutoEgress
from .requests import StartEgressRequest
from .results import pending_streams
from .settings import Settings, private_dir
from .store import EgressRecord, SqliteStore
from .webhooks import Webhooks
from .workers import WorkerRunner, kept_file

log = logging.getLogger(__name__)


class Service:
    """Owns the store, admission and the workers of one node."""

    def __init__(self, settings: Settings):
        self.settings = settings
        private_dir(settings.data_dir)
        self.store = SqliteStore(settings.data_dir / "compositor.db")
        self.admission = Admission(settings.capacity)
        self.webhooks = Webhooks(self.store, settings.webhook_urls, settings.webhook_secret,
                                 settings.webhook_retry_base_s, settings.webhook_formats, settings.livekit_api_key,
                                 settings.livekit_api_secret)
        self.runner = WorkerRunner(self.store, settings.data_dir / "jobs", change=self._change,
                                   change_stream=self._change_stream, warm_target=settings.warm_workers,
                                   warm_size=settings.warm_size, worker_args=settings.worker_args,
                                   worker_env=settings.livekit_env)
        #: what requests may reach; the same flags hold every worker to it
        self.policy = settings.outbound_policy
        self.draining = False
        self._queue: list[Queued] = []
        self._background: set[asyncio.Task] = set()
        self.auto_egress = AutoEgress(self.store, self.start, self.stop)

    def start_background(self) -> None:
        """Start the service's own tasks (webhook delivery, warm workers); needs the running loop."""
        self.webhooks.start()
        self.runner.replenish()

    async def recover(self) -> tuple[list[EgressRecord], list[EgressRecord]]:
        """After a restart: resume the deliveries left unfinished (outputs staged, manifest written), and end
        every other egress left running, keeping its file. Returns (resumed, settled)."""
        resumed, settled = [], []
        for rec in self.store.unfinished():
            job = self.runner.job_request(rec.id)
            upload = job and job.upload
            if upload and not upload.in_place and find_manifest(Path(upload.staging), rec.id):
                await self.runner.resume_delivery(rec.id)
                resumed.append(rec)
                continue
            done = self._change(rec.id, status=Status.FAILED, ended_at=time.time(), error_code="SERVICE_RESTARTED",
                                error="the service stopped while this egress ran; its file is kept as it was",
                                file=kept_file(rec.request))
            self.runner.forget_job(rec.id)
            settled.append(done)
        return resumed, settled

    async def start(self, req: StartEgressRequest) -> EgressRecord:
        if self.draining:
            raise Draining("the service is shutting down")
        egress_id = new_egress_id()
        upload = self._upload_spec(req, egress_id)
        paths = self._output_paths(req, egress_id, Path(upload.staging))
        record_req = req.to_record_request(paths, upload, self.settings.server_facts)
        # every check that needs no process, before admitting
        config = resolve(record_req, egress_id, {**os.environ, **self.settings.livekit_env}, self.policy)
        cost = egress_cost(config)
        if cost > self.admission.capacity:
            raise InvalidRequest(f"this egress needs {cost} cores and this server has {self.admission.capacity:g} in "
                                 "all: ask for a smaller frame", details={"field": "quality", "needed": cost})
        self._check_room(req, cost)  # before resolving its hosts, which may take a while
        await check_urls(self.policy, outbound_urls(config))
        admitted = not self._queue and self.admission.try_hold(egress_id, cost)
        if not admitted:
            self._check_room(req, cost)
        # The record keeps the layout the caller named, never the server's path of a custom one.
        rec = EgressRecord(id=egress_id, room_name=req.room_name, mode=req.mode, kind=req.kind, layout=req.layout,
                           quality=req.quality, request=_stored(record_req),
                           streams=pending_streams(config.stream.targets) if config.stream else None)
        self.store.create(rec)
        if not admitted:
            self._queue.append(Queued(egress_id, record_req, cost, config.frame))
            return rec
        return await self._launch(egress_id, record_req, config.frame)

    def _check_room(self, req: StartEgressRequest, cost: float) -> None:
        """CapacityExceeded unless an egress of `cost` cores would start now, or may wait in the queue."""
        if (not self._queue and cost <= self.admission.free + 1e-9) or (
                req.queue and len(self._queue) < self.settings.max_queue):
            return
        full = " and the wait queue is full" if req.queue else ""
        raise CapacityExceeded(
            f"no capacity for this egress (needs {cost} cores, {max(self.admission.free, 0):.2f} free){full}",
            details={"needed": cost, "free": round(self.admission.free, 3), "queued": len(self._queue)})

    def _upload_spec(self, req: StartEgressRequest, egress_id: str) -> UploadSpec:
        """Where this egress's outputs go: the request's storage or the server's, staged locally first."""
        s = self.settings
        storage = req.storage or s.storage
        in_place = isinstance(storage, LocalStorage)
        return UploadSpec(storage=storage, backup=req.backup_storage or s.backup_storage,
                          staging=str(s.recordings_dir if in_place else s.staging_dir(egress_id)),
                          local_root=str(s.recordings_dir), retry_window_s=s.upload_retry_window_s)

    def _output_paths(self, req: StartEgressRequest, egress_id: str, staging: Path) -> dict[str, str]:
        """Each output's storage key from its filename template, as a path under `staging`."""
        values = NameValues(room_name=req.room_name, egress_id=egress_id)
        now = datetime.now(timezone.utc)
        paths = {}
        if req.wants_file:
            ext = req.file_type.lower()
            key = render_name(req.file and req.file.filepath, values, ext, now=now, field="file.filepath")
            in_use = {r.request.get("file", {}).get("filepath") for r in self.store.unfinished()}
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

    async def _launch(self, egress_id: str, record_req: RecordRequest, frame: tuple[int, int, int]) -> EgressRecord:
        try:
            await self.runner.start(egress_id, record_req, frame)
        except OSError as exc:
            self.admission.release(egress_id)
            self.runner.forget_job(egress_id)
            self._change(egress_id, status=Status.FAILED, ended_at=time.time(), error_code="WORKER_START",
                         error=f"could not start the worker: {exc}")
        return self.store.get(egress_id)

    def queue_position(self, egress_id: str) -> int | None:
        """1 for the next egress to start, None when it is not waiting."""
        return next((i + 1 for i, q in enumerate(self._queue) if q.egress_id == egress_id), None)

    async def _admit_queued(self) -> None:
        while self._queue and not self.draining and self.admission.try_hold(self._queue[0].egress_id,
                                                                            self._queue[0].cost):
            head = self._queue.pop(0)
            await self._launch(head.egress_id, head.request, head.frame)

    async def stop(self, egress_id: str) -> EgressRecord:
        """Ask an egress to finish (a queued one ends ABORTED at once)."""
        rec = self.store.get(egress_id)
        if rec is None:
            raise NotFound(f"no egress {egress_id!r}")
        if rec.ended:
            raise Conflict("EGRESS_ENDED", f"egress {egress_id} has already ended ({rec.status})")
        if self.queue_position(egress_id):
            self._queue = [q for q in self._queue if q.egress_id != egress_id]
            return self._change(egress_id, status=Status.ABORTED, ended_at=time.time(), error_code="ABORTED",
                                error="stopped while waiting for capacity")
        if self.runner.stop(egress_id) and rec.status == Status.ACTIVE:
            return self.store.update(egress_id, status=Status.ENDING)
        return self.store.get(egress_id)

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
            return sign_local_url(origin, key, self.settings.url_signing_key, ttl)
        upload = self.runner.kept_storage(rec.id)
        if upload is None:
            raise Conflict("NOT_AVAILABLE", f"the storage credentials of {rec.id} are gone; sign a URL with your own")
        async with Uploader(upload.storage, backup=upload.backup) as uploader:
            return await uploader.presign(f["key"], ttl, backup_used=bool(f.get("backup_used")))

    def delete(self, egress_id: str) -> None:
        """Forget an ended egress (its stored files stay where they are)."""
        self.store.delete(egress_id)
        self.runner.forget_job(egress_id, keep_storage=False)

    async def update_streams(self, egress_id: str, add: list[str], remove: list[str]) -> EgressRecord:
        """Add and remove live destinations of a running egress."""
        rec = self.store.get(egress_id)
        if rec is None:
            raise NotFound(f"no egress {egress_id!r}")
        if "stream" not in rec.request:
            raise Conflict("NO_STREAM_OUTPUT", f"egress {egress_id} has no stream output; start it with mode "
                                               f"'stream' or 'both' (urls may be empty) to add destinations later")
        if rec.status != Status.ACTIVE:
            raise Conflict("EGRESS_NOT_ACTIVE", f"egress {egress_id} is {rec.status}; destinations change only "
                                                f"while it is ACTIVE")
        added = parse_stream_urls(add, "add")
        parse_stream_urls(remove, "remove")
        await check_urls(self.policy, [(f"add.{i}", t.url) for i, t in enumerate(added)])
        await self.runner.update_streams(egress_id, add, remove)
        return self.store.get(egress_id)

    async def update_layout(self, egress_id: str, layout: str) -> EgressRecord:
        """Switch a recording egress to another built-in layout (`grid`, `speaker-light`, …)."""
        rec = self.store.get(egress_id)
        if rec is None:
            raise NotFound(f"no egress {egress_id!r}")
        if "template_url" not in rec.request:  # a template's layouts are its own to name
            # Never a path: that would probe the server's disk.
            if "/" in layout or layout.endswith(".j2"):
                raise InvalidRequest("a running egress switches between built-in layouts; a custom layout is chosen "
                                     "when the egress starts", details={"field": "layout"})
            resolve_layout(layout)
        if rec.status != Status.ACTIVE:
            raise Conflict("EGRESS_NOT_ACTIVE", f"egress {egress_id} is {rec.status}; its layout changes only while "
                                                f"it is ACTIVE")
        await self.runner.command(egress_id, UpdateLayout(layout=layout))
        return self.store.update(egress_id, layout=layout)

    def _change(self, egress_id: str, **fields) -> EgressRecord:
        """Change an egress and queue the webhooks the change causes, in one transaction; an egress that ended
        gives its capacity to the next in the queue."""
        rec = self.store.update(egress_id, events=self.webhooks.for_change, **fields)
        if "status" in fields:
            self._settled(rec)
        return rec

    def _change_stream(self, egress_id: str, index: int, state: dict) -> None:
        """The `index`-th live destination of an egress changed (a new index: one was added)."""
        streams = list(self.store.get(egress_id).streams or [])
        streams[index:index + 1] = [state]
        self.store.update(egress_id, events=self.webhooks.for_stream(index), streams=streams)

    def _settled(self, rec: EgressRecord) -> None:
        if rec.ended:
            self.admission.release(rec.id)
            if self._queue:
                task = asyncio.get_running_loop().create_task(self._admit_queued())
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        log.info("egress %s %s", rec.id, rec.status)

    async def shutdown(self) -> None:
        """Drain: take no new work, let running egresses finish their files."""
        self.draining = True
        await self.auto_egress.close()
        for queued in list(self._queue):
            await self.stop(queued.egress_id)  # never started: ABORTED
        await self.runner.shutdown(self.settings.stop_grace_s)
        await self.webhooks.stop()
        self.store.close()


def _stored(request: RecordRequest) -> dict:
    """The worker's request as the store keeps it: no stream key, SRT passphrase or WebSocket query (those
    stay in the worker's 0600 job file), storage secrets already `***`."""
    data = request.model_dump(mode="json", exclude_none=True)
    if request.stream:
        data["stream"]["urls"] = [redact_url(url) for url in request.stream.urls]
    if request.websocket:
        data["websocket"] = redact_ws(request.websocket)
    return data
