"""The egress service: state (store), admission, and one worker per egress."""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from .api_models import StartEgressRequest
from .config import new_egress_id, resolve
from .errors import CapacityExceeded, Conflict, Draining, InvalidRequest
from .jobs import WorkerRunner, kept_file
from .presets import find_preset
from .store import EgressRecord, SqliteStore

log = logging.getLogger(__name__)

# CPU cores one egress uses, by output height (bench/record.py, 4 tiles, x264
# superfast + zerolatency): 720p30 ~0.6, 1080p30 ~1.2. Rounded up a little.
COST_BY_HEIGHT = [(480, 0.4), (720, 0.7), (1080, 1.3), (2160, 4.0)]


@dataclass
class Settings:
    data_dir: Path
    api_keys: list[str] = field(default_factory=list)
    capacity: float = float(os.cpu_count() or 1)  # cores egresses may use in all

    @property
    def recordings_dir(self) -> Path:
        return self.data_dir / "recordings"


def egress_cost(req: StartEgressRequest) -> float:
    preset = find_preset(req.quality)
    height = (req.advanced and req.advanced.height) or (preset.height if preset else 720)
    height = min(height, (req.advanced and req.advanced.width) or height) if height > 1080 else height
    return next((cost for h, cost in COST_BY_HEIGHT if height <= h), COST_BY_HEIGHT[-1][1])


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


class Service:
    """Owns the store, admission and the workers of one node."""

    def __init__(self, settings: Settings):
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = SqliteStore(settings.data_dir / "compositor.db")
        self.admission = Admission(settings.capacity)
        self.runner = WorkerRunner(self.store, settings.data_dir / "jobs", on_change=self._changed)
        self.draining = False

    def settle_unfinished(self) -> list[EgressRecord]:
        """After a crash or kill -9: end every egress left running, keeping its file."""
        return [self.store.update(rec.id, status="FAILED", ended_at=time.time(), error_code="SERVICE_RESTARTED",
                                  error="the service stopped while this egress ran; its file is kept as it was",
                                  file=kept_file(rec.request))
                for rec in self.store.unfinished()]

    async def start(self, req: StartEgressRequest) -> EgressRecord:
        if self.draining:
            raise Draining("the service is shutting down")
        egress_id = new_egress_id()
        ext = (req.file.file_type if req.file else "MP4").lower()
        name = (req.file and req.file.filepath) or f"{egress_id}.{ext}"
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise InvalidRequest("file.filepath must be a relative name without '..'",
                                 details={"field": "file.filepath"})
        record_req = req.to_record_request(str(self.settings.recordings_dir / name))
        resolve(record_req, egress_id)  # every check that needs no process, before admitting
        cost = egress_cost(req)
        if not self.admission.try_hold(egress_id, cost):
            raise CapacityExceeded(
                f"no capacity for this egress (needs {cost} cores, {max(self.admission.free, 0):.2f} free)",
                details={"needed": cost, "free": round(self.admission.free, 3)})
        rec = EgressRecord(id=egress_id, room_name=req.room_name, mode=req.mode, layout=req.layout,
                           quality=req.quality, request=record_req.model_dump(mode="json", exclude_none=True))
        self.store.create(rec)
        try:
            await self.runner.start(egress_id, record_req)
        except OSError as exc:
            self.admission.release(egress_id)
            return self.store.update(egress_id, status="FAILED", ended_at=time.time(), error_code="WORKER_START",
                                     error=f"could not start the worker: {exc}")
        return self.store.get(egress_id)

    async def stop(self, egress_id: str) -> EgressRecord:
        rec = self.store.get(egress_id)
        if rec.ended:
            raise Conflict("EGRESS_ENDED", f"egress {egress_id} has already ended ({rec.status})")
        if self.runner.stop(egress_id) and rec.status == "ACTIVE":
            return self.store.update(egress_id, status="ENDING")
        return self.store.get(egress_id)

    def _changed(self, rec: EgressRecord) -> None:
        if rec.ended:
            self.admission.release(rec.id)
        log.info("egress %s %s", rec.id, rec.status)

    async def shutdown(self) -> None:
        """Drain: take no new work, let running egresses finish their files."""
        self.draining = True
        await self.runner.shutdown()
        self.store.close()


def load_settings(data_dir: str | None, api_keys: list[str] | None, capacity: float | None) -> Settings:
    """Settings from flags, then COMPOSITOR_* environment variables, then embedded defaults."""
    directory = Path(data_dir or os.environ.get("COMPOSITOR_DATA_DIR") or "compositor-data").resolve()
    keys = list(api_keys or []) or [k for k in os.environ.get("COMPOSITOR_API_KEYS", "").split(",") if k]
    if not keys:
        # No key configured: make one once and keep it in the data dir (0600).
        key_file = directory / "api-key"
        directory.mkdir(parents=True, exist_ok=True)
        if not key_file.exists():
            key_file.write_text(secrets.token_urlsafe(32))
            key_file.chmod(0o600)
        keys = [key_file.read_text().strip()]
        log.warning("no API key configured; using the one in %s", key_file)
    cap = capacity or float(os.environ.get("COMPOSITOR_CAPACITY") or (os.cpu_count() or 1))
    return Settings(data_dir=directory, api_keys=keys, capacity=cap)
