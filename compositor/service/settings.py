"""The service's settings: a YAML file, COMPOSITOR_* variables and flags, later ones winning; the secrets it
keeps in its data dir; and what follows from them (the outbound policy its workers are held to)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InvalidRequest
from ..outbound import AllowedHosts, OutboundPolicy, host_port
from ..plan import WARM_SIZE
from ..request import MAX_IDLE_S, IdleStop, first_error
from ..storage import LocalStorage, parse_storage
from ..storage.config import storage_urls
from ..storage.uploader import MAX_URL_EXPIRY_S, AnyStorage
from .dispatch import default_memory_mb
from .requests import ServerFacts
from .seams import Need

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterSettings:
    """How a node joins a cluster: the shared Redis, its own name, and the URL other nodes reach it at."""

    redis_url: str
    node_id: str
    #: where this node's HTTP API is reached by the others (download URLs of files on its disk point there)
    advertise_url: str
    #: a node that has not renewed its lease for this long is lost: its egresses are settled by the others
    lease_s: float = 10.0


@dataclass
class Settings:
    data_dir: Path
    api_keys: list[str] = field(default_factory=list)
    capacity: float = float(os.cpu_count() or 1)  # cores egresses may use in all
    #: memory (MB) jobs may hold in all: the machine's or its container's limit less the service's share
    memory_mb: float = field(default_factory=default_memory_mb)
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
    #: idle stop of every room egress unless its request says (seconds per condition; None: off)
    idle_stop: IdleStop | None = None
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
    #: None: a single node (SQLite, nothing shared)
    cluster: ClusterSettings | None = None
    #: RTMP ingest (nginx-rtmp) on this address and port; None: no RTMP ingress
    ingress_rtmp_port: int | None = None
    ingress_rtmp_host: str = "0.0.0.0"
    #: RTMPS (stunnel in front of nginx) on this port, with this certificate and key
    ingress_rtmps_port: int | None = None
    ingress_tls_cert: Path | None = None
    ingress_tls_key: Path | None = None
    #: the host name publishers reach this node at, in ingress URLs (default: the API request's own)
    ingress_public_host: str | None = None
    #: ingress workers kept loaded and waiting, so a publisher's session starts at once
    ingress_warm_workers: int = 0

    @property
    def resources(self) -> Need:
        """What this node gives its jobs in all: cores and memory."""
        return Need(self.capacity, self.memory_mb)

    @property
    def node_id(self) -> str | None:
        """This node's name in its cluster; None on a single node."""
        return self.cluster.node_id if self.cluster else None

    @property
    def server_facts(self) -> ServerFacts:
        """What of these settings shapes a worker's request."""
        return ServerFacts(room_server=bool(self.livekit_url), layouts_dir=self.layouts_dir,
                           max_file_duration_s=self.max_file_duration_s,
                           max_stream_duration_s=self.max_stream_duration_s,
                           max_segment_duration_s=self.max_segment_duration_s, idle_stop=self.idle_stop)

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


class ClusterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    redis_url: str = Field(pattern=r"^rediss?://", description="the cluster's Redis (redis:// or rediss://, "
                           "with its password)")
    node_id: str = Field(default_factory=socket.gethostname, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
                         description="this node's name, unique in the cluster (default: the host name)")
    advertise_url: str = Field(pattern=r"^https?://[^/?#\s]+/?$", description="where the other nodes reach this "
                               "node's API")
    lease_s: float = Field(10.0, ge=2, le=300, description="a node silent this long is lost")


class ServeConfig(BaseModel):
    """The service's configuration: a YAML file, COMPOSITOR_* variables and flags, later ones winning."""

    model_config = ConfigDict(extra="forbid")

    data_dir: str = "compositor-data"
    api_keys: list[str] = []
    capacity: float | None = Field(None, gt=0)
    memory_mb: float | None = Field(None, gt=0, description="memory (MB) jobs may hold in all")
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
    idle_empty_s: float | None = Field(None, gt=0, le=MAX_IDLE_S, description="a room egress ends (COMPLETE, "
                                       "stopped_by idle) when no one but the recorder is in the room this long")
    idle_no_publisher_s: float | None = Field(None, gt=0, le=MAX_IDLE_S, description="the same when no one "
                                              "publishes this long")
    idle_all_muted_s: float | None = Field(None, gt=0, le=MAX_IDLE_S, description="the same when every "
                                           "published track is muted this long")
    layouts_dir: str | None = Field(None, description="custom layouts requests name as custom/NAME")
    allowed_hosts: list[str] = Field([], description="hosts requests may reach even at private addresses (and "
                                     "layout pages may reach besides their own server)")
    storage: dict | None = Field(None, description="where outputs go by default: {kind: local|s3|gcs|azure, …}")
    backup_storage: dict | None = Field(None, description="used when the storage refuses for good")
    upload_retry_window_s: float = Field(300, gt=0, le=86400, description="seconds failed uploads are retried")
    stop_grace_s: float = Field(30, gt=0, le=3600, description="on shutdown, seconds workers get to finish their "
                                "files and uploads (a delivery cut short resumes at the next start)")
    url_signing_key: str | None = Field(None, description="signs download URLs (default: one kept in the data "
                                        "dir; a cluster needs one shared by every node)")
    cluster: ClusterConfig | None = Field(None, description="join a cluster on Redis (several nodes, shared "
                                          "state); without it, one node on SQLite")
    ingress_rtmp_port: int | None = Field(None, ge=1, le=65535, description="take RTMP publishers on this port "
                                          "(nginx-rtmp); unset: no RTMP ingress")
    ingress_rtmp_host: str = Field("0.0.0.0", description="the address RTMP (and RTMPS) ingest listens on")
    ingress_rtmps_port: int | None = Field(None, ge=1, le=65535, description="RTMPS ingest on this port (needs "
                                           "ingress_tls_cert and ingress_tls_key)")
    ingress_tls_cert: str | None = Field(None, description="PEM certificate (chain) of RTMPS ingest")
    ingress_tls_key: str | None = Field(None, description="PEM private key of RTMPS ingest")
    ingress_warm_workers: int | None = Field(None, ge=0, le=16, description="ingress workers kept loaded and "
                                             "waiting (default: 1 when livekit_url is set, else 0)")
    ingress_public_host: str | None = Field(None, pattern=r"^[A-Za-z0-9.:\[\]-]+$", description="the host "
                                            "publishers reach this node at, in ingress URLs (default: the host the "
                                            "API was called at)")


_LISTS = {"api_keys", "webhook_urls", "allowed_hosts"}
_JSON = {"storage", "backup_storage"}


# A cluster's settings from the environment, as COMPOSITOR_<NAME> (no CLUSTER_ in the middle).
_CLUSTER = ("redis_url", "node_id", "advertise_url", "lease_s")


def _from_env() -> dict:
    out = {}
    cluster = {name: value for name in _CLUSTER if (value := os.environ.get(f"COMPOSITOR_{name.upper()}"))}
    if cluster:
        out["cluster"] = cluster
    for name in ServeConfig.model_fields:
        value = os.environ.get(f"COMPOSITOR_{name.upper()}")
        if not value or name == "cluster":
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
    layers = [_from_yaml(config_file) if config_file else {}, _from_env(),
              {k: v for k, v in flags.items() if v not in (None, [], {})}]
    layered = {k: v for layer in layers for k, v in layer.items()}
    # The cluster's fields layer one by one, like the others.
    cluster = {k: v for layer in layers for k, v in (layer.get("cluster") or {}).items()}
    if cluster:
        layered["cluster"] = cluster
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
    if cfg.cluster:
        # Every node must sign and check alike: a secret made per node would split the cluster.
        missing = [name for name in ("api_keys", "webhook_secret", "url_signing_key") if not getattr(cfg, name)]
        if missing:
            raise InvalidRequest(f"a cluster node needs {', '.join(missing)} set alike on every node "
                                 f"({', '.join('COMPOSITOR_' + m.upper() for m in missing)})")
    if cfg.ingress_rtmps_port and not (cfg.ingress_rtmp_port and cfg.ingress_tls_cert and cfg.ingress_tls_key):
        raise InvalidRequest("ingress_rtmps_port needs ingress_rtmp_port, ingress_tls_cert and ingress_tls_key")
    tls = [Path(p).expanduser().resolve() if p else None for p in (cfg.ingress_tls_cert, cfg.ingress_tls_key)]
    for path in tls:
        if path and not path.is_file():
            raise InvalidRequest(f"RTMPS: {path} is not a file")
    directory = Path(cfg.data_dir).resolve()
    keys = cfg.api_keys
    if not keys:
        keys = [_secret_file(directory / "api-key")]
        log.warning("no API key configured; using the one in %s", directory / "api-key")
    return Settings(
        data_dir=directory, api_keys=keys, capacity=cfg.capacity or float(os.cpu_count() or 1),
        memory_mb=cfg.memory_mb or default_memory_mb(),
        webhook_urls=cfg.webhook_urls,
        webhook_secret=cfg.webhook_secret or _secret_file(directory / "webhook-secret"),
        webhook_retry_base_s=cfg.webhook_retry_base_s, webhook_formats=formats,
        livekit_api_key=cfg.livekit_api_key or "", livekit_api_secret=cfg.livekit_api_secret or "",
        livekit_url=cfg.livekit_url or "",
        url_signing_key=cfg.url_signing_key or _secret_file(directory / "url-signing-key"),
        download_url_ttl_s=cfg.download_url_ttl_s, download_url_max_ttl_s=cfg.download_url_max_ttl_s,
        request_timeout_s=cfg.request_timeout_s, max_queue=cfg.max_queue, warm_workers=cfg.warm_workers,
        warm_size=tuple(int(x) for x in cfg.warm_size.split("x")),
        max_file_duration_s=cfg.max_file_duration_s, max_stream_duration_s=cfg.max_stream_duration_s,
        max_segment_duration_s=cfg.max_segment_duration_s,
        idle_stop=_idle_stop(cfg),
        layouts_dir=_layouts_dir(cfg.layouts_dir),
        allowed_hosts=AllowedHosts.parse(cfg.allowed_hosts).entries,
        storage=parse_storage(cfg.storage) if cfg.storage else LocalStorage(),
        backup_storage=parse_storage(cfg.backup_storage, "backup_storage") if cfg.backup_storage else None,
        upload_retry_window_s=cfg.upload_retry_window_s, stop_grace_s=cfg.stop_grace_s,
        cluster=ClusterSettings(**cfg.cluster.model_dump()) if cfg.cluster else None,
        ingress_rtmp_port=cfg.ingress_rtmp_port, ingress_rtmp_host=cfg.ingress_rtmp_host,
        ingress_rtmps_port=cfg.ingress_rtmps_port, ingress_tls_cert=tls[0], ingress_tls_key=tls[1],
        ingress_public_host=cfg.ingress_public_host,
        ingress_warm_workers=cfg.ingress_warm_workers if cfg.ingress_warm_workers is not None
        else int(bool(cfg.livekit_url)))


def _idle_stop(cfg: ServeConfig) -> IdleStop | None:
    """The server's idle stop defaults (None: all off)."""
    idle = IdleStop(empty_seconds=cfg.idle_empty_s, no_publisher_seconds=cfg.idle_no_publisher_s,
                    all_muted_seconds=cfg.idle_all_muted_s)
    return idle if idle.enabled else None


def _layouts_dir(value: str | None) -> Path | None:
    if not value:
        return None
    folder = Path(value).expanduser().resolve()
    if not folder.is_dir():
        raise InvalidRequest(f"layouts_dir {value!r} is not a folder")
    return folder
