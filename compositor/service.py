"""The egress service: state (store), admission, and one worker per egress."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .api_models import StartEgressRequest, pending_streams
from .auto_egress import AutoEgress
from .config import WARM_SIZE, EgressConfig, new_egress_id, outbound_urls, resolve
from .destinations import parse_stream_urls, redact_url
from .errors import CapacityExceeded, Conflict, Draining, InvalidRequest, NotFound
from .jobs import WorkerRunner, kept_file
from .layouts import CUSTOM_PREFIX, TEMPLATE, resolve_layout
from .outbound import AllowedHosts, OutboundPolicy, check_urls, host_port
from .pipeline.pcm_socket import redact_ws
from .request import RecordRequest, RoomSpec, UploadSpec, first_error
from .storage import LocalStorage, NameValues, Uploader, parse_storage, render_name, sign_local_url
from .storage.config import storage_urls
from .storage.delivery import find_manifest
from .storage.uploader import MAX_URL_EXPIRY_S, AnyStorage
from .store import EgressRecord, SqliteStore
from .webhooks import Webhooks

log = logging.getLogger(__name__)

# CPU cores one egress uses, by output height (bench/record.py, 4 tiles, x264
# superfast + zerolatency): 720p30 ~0.6, 1080p30 ~1.2. Rounded up a little.
COST_BY_HEIGHT = [(480, 0.4), (720, 0.7), (1080, 1.3), (2160, 4.0)]


@dataclass
class Settings:
    data_dir: Path
    api_keys: list[str] = field(default_factory=list)
    capacity: float = float(os.cpu_count() or 1)  # cores egresses may use in all
    webhook_urls: list[str] = field(default_factory=list)
    webhook_secret: str = ""
    webhook_retry_base_s: float = 2.0
    webhook_formats: tuple[str, ...] = ("baxcloud",)
    livekit_api_key: str = ""
    livekit_api_secret: str = ""
    #: the LiveKit server rooms are recorded from (with the key and secret above); "" for none
    livekit_url: str = ""
    warm_workers: int = 0
    warm_size: tuple[int, int] = WARM_SIZE
    max_queue: int = 16
    max_file_duration_s: float | None = None
    max_stream_duration_s: float | None = None
    max_segment_duration_s: float | None = None
    url_signing_key: str = ""
    download_url_ttl_s: int = 3600
    #: no download URL lives longer, whatever a caller asks (signed ones are refused past it too)
    download_url_max_ttl_s: int = 24 * 3600
    layouts_dir: Path | None = None
    #: hosts requests may reach even where their addresses are private (and layout pages may reach at all)
    allowed_hosts: tuple[str, ...] = ()
    #: seconds a client has to send a request's headers, and then its body
    request_timeout_s: float = 30.0
    #: where outputs go unless a request says (default: the recordings folder, served by signed URLs)
    storage: AnyStorage = field(default_factory=LocalStorage)
    backup_storage: AnyStorage | None = None
    upload_retry_window_s: float = 300.0
    stop_grace_s: float = 30.0

    @property
    def livekit_env(self) -> dict[str, str]:
        """What workers get to join rooms of the LiveKit server (nothing without one)."""
        if not self.livekit_url:
            return {}
        return {"LIVEKIT_URL": self.livekit_url, "LIVEKIT_API_KEY": self.livekit_api_key,
                "LIVEKIT_API_SECRET": self.livekit_api_secret}

    @property
    def trusted_hosts(self) -> AllowedHosts:
        """The allowed hosts, and the hosts of what the operator configured: the LiveKit server and storages."""
        urls = [url for s in (self.storage, self.backup_storage) for _, url in storage_urls(s)]
        hosts = ["{}:{}".format(*host_port(url)) for url in [*urls, self.livekit_url] if url]
        return AllowedHosts.parse(self.allowed_hosts).including(*hosts)

    @property
    def outbound_policy(self) -> OutboundPolicy:
        """What requests from the HTTP APIs may reach: public addresses and the trusted hosts, no local file."""
        return OutboundPolicy(self.trusted_hosts, trusted=False)

    @property
    def worker_args(self) -> tuple[str, ...]:
        """The flags that hold every worker to the same policy."""
        return ("--untrusted", *(f"--allow-host={host}" for host in self.trusted_hosts.entries))

    @property
    def recordings_dir(self) -> Path:
        return self.data_dir / "recordings"

    def staging_dir(self, egress_id: str) -> Path:
        """Where an egress bound for remote storage writes its outputs until they are stored."""
        return self.data_dir / "uploads" / egress_id


def egress_cost(config: EgressConfig) -> float:
    """Cores an egress needs, by its frame's short side (so portrait costs as landscape)."""
    side = min(config.width, config.height)
    return next((cost for h, cost in COST_BY_HEIGHT if side <= h), COST_BY_HEIGHT[-1][1])


class Admission:
    """Admits egresses while their summed CPU cost fits the capacity; never oversubscribes."""

    def __init__(self, capacity: float):
        self.capacity = capacity
        self._held: dict[str, float] = {}

    @property
    def free(self) -> float:
        return self.capacity - sum(self._held.values())

    def try_hold(self, egress_id: str, cost: float) -> bool:
        if cost > self.free + 1e-9:
            return False
        self._held[egress_id] = cost
        return True

    def release(self, egress_id: str) -> None:
        self._held.pop(egress_id, None)


@dataclass
class Queued:
    """An admitted-later egress, waiting for capacity."""

    egress_id: str
    request: RecordRequest
    cost: float
    frame: tuple[int, int, int]


class Service:
    """Owns the store, admission and the workers of one node."""

    def __init__(self, settings: Settings):
        self.settings = settings
        private_dir(settings.data_dir)
        self.store = SqliteStore(settings.data_dir / "compositor.db")
        self.admission = Admission(settings.capacity)
        self.webhooks = Webhooks(settings.data_dir / "compositor.db", settings.webhook_urls, settings.webhook_secret,
                                 settings.webhook_retry_base_s, settings.webhook_formats, settings.livekit_api_key,
                                 settings.livekit_api_secret)
        self.runner = WorkerRunner(self.store, settings.data_dir / "jobs", on_change=self._changed,
                                   on_stream=self.webhooks.enqueue_stream, warm_target=settings.warm_workers,
                                   warm_size=settings.warm_size, worker_args=settings.worker_args,
                                   worker_env=settings.livekit_env)
        #: what requests may reach; the same flags hold every worker to it
        self.policy = settings.outbound_policy
        self.draining = False
        self._queue: list[Queued] = []
        self._background: set[asyncio.Task] = set()
        self.auto_egress = AutoEgress(self)

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
            done = self.store.update(rec.id, status="FAILED", ended_at=time.time(), error_code="SERVICE_RESTARTED",
                                     error="the service stopped while this egress ran; its file is kept as it was",
                                     file=kept_file(rec.request))
            self.runner.forget_job(rec.id)
            self._changed(done, rec.status)
            settled.append(done)
        return resumed, settled

    async def start(self, req: StartEgressRequest) -> EgressRecord:
        if self.draining:
            raise Draining("the service is shutting down")
        egress_id = new_egress_id()
        upload = self._upload_spec(req, egress_id)
        paths = self._output_paths(req, egress_id, Path(upload.staging))
        if self.settings.livekit_url and req.room is None and not req.web_url:
            # With a LiveKit server configured, a room name names one of its rooms.
            req = req.model_copy(update={"room": RoomSpec(kind="livekit")})
        named_layout = req.layout  # what the caller sees, never the server's path
        if req.layout.startswith(CUSTOM_PREFIX):
            # The worker gets the folder; the caller only ever names a layout of layouts_dir.
            ref = resolve_layout(req.layout, req.layout_params, self.settings.layouts_dir)
            req = req.model_copy(update={"layout": str(ref.folder if ref.template == TEMPLATE
                                                       else ref.folder / ref.template)})
        try:
            # The worker's own model checks combinations the API shape cannot
            # (audio_only with video_only, a room and a web URL at once).
            record_req = req.to_record_request(paths, upload)
        except ValidationError as exc:
            raise InvalidRequest(first_error(exc)) from None
        output = paths.get("file")
        # Session limits: the shortest that applies to one of its outputs ends the egress LIMIT_REACHED.
        s = self.settings
        limits = [d for d, applies in ((record_req.duration, True), (s.max_file_duration_s, output),
                                       (s.max_stream_duration_s, req.stream), (s.max_segment_duration_s, req.segments))
                  if d and applies]
        if limits:
            # The session limit: the egress ends LIMIT_REACHED when it runs out.
            record_req = record_req.model_copy(update={"duration": min(limits)})
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
        rec = EgressRecord(id=egress_id, room_name=req.room_name, mode=req.mode, kind=req.kind, layout=named_layout,
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
            rec = self.store.update(egress_id, status="FAILED", ended_at=time.time(), error_code="WORKER_START",
                                    error=f"could not start the worker: {exc}")
            self._changed(rec, "STARTING")
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
            done = self.store.update(egress_id, status="ABORTED", ended_at=time.time(), error_code="ABORTED",
                                     error="stopped while waiting for capacity")
            self._changed(done, rec.status)
            return done
        if self.runner.stop(egress_id) and rec.status == "ACTIVE":
            return self.store.update(egress_id, status="ENDING")
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
        if rec.status != "ACTIVE":
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
        if rec.status != "ACTIVE":
            raise Conflict("EGRESS_NOT_ACTIVE", f"egress {egress_id} is {rec.status}; its layout changes only while "
                                                f"it is ACTIVE")
        await self.runner.command(egress_id, {"op": "update_layout", "layout": layout})
        return self.store.update(egress_id, layout=layout)

    def _changed(self, rec: EgressRecord, previous: str) -> None:
        if rec.ended:
            self.admission.release(rec.id)
            if self._queue:
                task = asyncio.get_running_loop().create_task(self._admit_queued())
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        self.webhooks.enqueue(rec, previous)
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


def private_dir(path: Path) -> None:
    """A folder only this user can enter (0700): what is inside is nobody else's to read, whatever its mode."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        path.chmod(0o700)
    except PermissionError:  # a volume someone else owns (a container's bind mount): theirs to protect
        log.warning("%s belongs to another user; it stays mode %o", path, path.stat().st_mode & 0o777)


# SHA-256 of secrets that were once published (committed to this repository's history): a data dir that
# still holds one has its key replaced, or anyone could sign download URLs and webhooks with it.
PUBLISHED_SECRETS = {"d88f123bef2f9ab1684778bbe70ae671b61e9de69ecebbe54d4b26e29369b5ad",
                     "56f278aa94c2037b1bc266529e7b60d96c8131d8624fa155a2091c76c5bcdd7a"}


def _secret_file(path: Path) -> str:
    """A secret kept in the data dir (0600), made on first use, and made anew if it is one ever published."""
    private_dir(path.parent)
    value = path.read_text().strip() if path.exists() else ""
    if value and hashlib.sha256(value.encode()).hexdigest() in PUBLISHED_SECRETS:
        log.warning("%s holds a key that was published; replacing it (URLs and signatures made with it no longer "
                    "verify)", path)
        value = ""
    if not value:
        value = secrets.token_urlsafe(32)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(value)
    path.chmod(0o600)
    return value


class ServeConfig(BaseModel):
    """The service's configuration: a YAML file, COMPOSITOR_* variables and flags, later ones winning."""

    model_config = ConfigDict(extra="forbid")

    data_dir: str = "compositor-data"
    api_keys: list[str] = []
    capacity: float | None = Field(None, gt=0)
    webhook_urls: list[str] = []
    webhook_secret: str | None = None
    webhook_retry_base_s: float = Field(2.0, gt=0)
    webhook_format: Literal["baxcloud", "livekit", "both"] = "baxcloud"
    livekit_api_key: str | None = None
    livekit_api_secret: str | None = None
    livekit_url: str | None = Field(None, pattern=r"^(wss?|https?)://[^/?#\s]+",
                                    description="record rooms of this LiveKit server (ws(s):// or http(s)://)")
    download_url_ttl_s: int = Field(3600, gt=0, le=MAX_URL_EXPIRY_S, description="download URLs live this long")
    download_url_max_ttl_s: int = Field(24 * 3600, gt=0, le=MAX_URL_EXPIRY_S,
                                        description="no download URL lives longer (expiresIn is capped by it)")
    request_timeout_s: float = Field(30, gt=0, le=3600, description="seconds a client has to send a request's "
                                     "headers, and then its body")
    max_queue: int = Field(16, ge=0)
    warm_workers: int = Field(0, ge=0, le=16, description="idle workers kept with display and browser up")
    warm_size: str = Field("{}x{}".format(*WARM_SIZE), pattern=r"^\d{2,4}x\d{2,4}$",
                           description="the frame warm workers render")
    max_file_duration_s: float | None = Field(None, gt=0, description="session limit of a file egress")
    max_stream_duration_s: float | None = Field(None, gt=0, description="session limit of a streaming egress")
    max_segment_duration_s: float | None = Field(None, gt=0, description="session limit of an HLS egress")
    layouts_dir: str | None = Field(None, description="custom layouts requests name as custom/NAME")
    allowed_hosts: list[str] = Field([], description="hosts requests may reach even at private addresses (and "
                                     "layout pages may reach besides their own server)")
    storage: dict | None = Field(None, description="where outputs go by default: {kind: local|s3|gcs|azure, …}")
    backup_storage: dict | None = Field(None, description="used when the storage refuses for good")
    upload_retry_window_s: float = Field(300, gt=0, le=86400, description="seconds failed uploads are retried")
    stop_grace_s: float = Field(30, gt=0, le=3600, description="on shutdown, seconds workers get to finish their "
                                "files and uploads (a delivery cut short resumes at the next start)")


_LISTS = {"api_keys", "webhook_urls", "allowed_hosts"}
_JSON = {"storage", "backup_storage"}


def _from_env() -> dict:
    out = {}
    for name in ServeConfig.model_fields:
        value = os.environ.get(f"COMPOSITOR_{name.upper()}")
        if not value:
            continue
        if name in _LISTS:
            out[name] = [v.strip() for v in value.split(",") if v.strip()]
        elif name in _JSON:
            try:
                out[name] = json.loads(value)
            except ValueError:
                raise InvalidRequest(f"COMPOSITOR_{name.upper()} must be a JSON object") from None
        else:
            out[name] = value
    return out


def _from_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidRequest(f"cannot read config {str(path)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"config {str(path)!r} must be a mapping of settings")
    return data


def load_settings(config_file: Path | None = None, **flags) -> Settings:
    """Settings from a YAML file, then COMPOSITOR_* environment variables, then flags; defaults fill the rest."""
    layered = {**(_from_yaml(config_file) if config_file else {}), **_from_env(),
               **{k: v for k, v in flags.items() if v not in (None, [])}}
    try:
        cfg = ServeConfig.model_validate(layered)
    except ValidationError as exc:
        raise InvalidRequest(f"bad service setting: {first_error(exc)}") from None
    formats = ("baxcloud", "livekit") if cfg.webhook_format == "both" else (cfg.webhook_format,)
    if cfg.download_url_ttl_s > cfg.download_url_max_ttl_s:
        raise InvalidRequest("download_url_ttl_s must not exceed download_url_max_ttl_s")
    if cfg.webhook_secret and hashlib.sha256(cfg.webhook_secret.encode()).hexdigest() in PUBLISHED_SECRETS:
        raise InvalidRequest("webhook_secret is a key that was published: set a secret of your own")
    if cfg.livekit_url and not (cfg.livekit_api_key and cfg.livekit_api_secret):
        raise InvalidRequest("livekit_url needs livekit_api_key and livekit_api_secret to join its rooms")
    if "livekit" in formats and not (cfg.livekit_api_key and cfg.livekit_api_secret):
        raise InvalidRequest("webhook_format livekit signs with LiveKit's API key: set livekit_api_key and "
                             "livekit_api_secret (COMPOSITOR_LIVEKIT_API_KEY, COMPOSITOR_LIVEKIT_API_SECRET)")
    directory = Path(cfg.data_dir).resolve()
    keys = cfg.api_keys
    if not keys:
        keys = [_secret_file(directory / "api-key")]
        log.warning("no API key configured; using the one in %s", directory / "api-key")
    return Settings(
        data_dir=directory, api_keys=keys, capacity=cfg.capacity or float(os.cpu_count() or 1),
        webhook_urls=cfg.webhook_urls,
        webhook_secret=cfg.webhook_secret or _secret_file(directory / "webhook-secret"),
        webhook_retry_base_s=cfg.webhook_retry_base_s, webhook_formats=formats,
        livekit_api_key=cfg.livekit_api_key or "", livekit_api_secret=cfg.livekit_api_secret or "",
        livekit_url=cfg.livekit_url or "",
        url_signing_key=_secret_file(directory / "url-signing-key"),
        download_url_ttl_s=cfg.download_url_ttl_s, download_url_max_ttl_s=cfg.download_url_max_ttl_s,
        request_timeout_s=cfg.request_timeout_s, max_queue=cfg.max_queue, warm_workers=cfg.warm_workers,
        warm_size=tuple(int(x) for x in cfg.warm_size.split("x")),
        max_file_duration_s=cfg.max_file_duration_s, max_stream_duration_s=cfg.max_stream_duration_s,
        max_segment_duration_s=cfg.max_segment_duration_s,
        layouts_dir=_layouts_dir(cfg.layouts_dir),
        allowed_hosts=AllowedHosts.parse(cfg.allowed_hosts).entries,
        storage=parse_storage(cfg.storage) if cfg.storage else LocalStorage(),
        backup_storage=parse_storage(cfg.backup_storage, "backup_storage") if cfg.backup_storage else None,
        upload_retry_window_s=cfg.upload_retry_window_s, stop_grace_s=cfg.stop_grace_s)


def _layouts_dir(value: str | None) -> Path | None:
    if not value:
        return None
    folder = Path(value).expanduser().resolve()
    if not folder.is_dir():
        raise InvalidRequest(f"layouts_dir {value!r} is not a folder")
    return folder
