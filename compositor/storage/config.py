"""Where finished files go: the `StorageConfig` models a request (or the service's settings) carries.

Field names are LiveKit's (`S3Upload`, `GCPUpload`, `AzureBlobUpload`), in
snake_case or camelCase. A config is either tagged with `kind`
(`{"kind": "s3", "bucket": ...}`) or written LiveKit's way, as the key of an
output (`{"s3": {...}}`, `{"gcp": {...}}`, `{"azure": {...}}`).

Secrets are `SecretStr`: repr, str, `model_dump()` and `model_dump_json()`
show `***`. Only `with_secrets()` reveals them, to hand a config to the
worker process that uploads.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Annotated, Any, Literal, Union
from urllib.parse import parse_qsl, urlsplit

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    SerializationInfo,
    TypeAdapter,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from ..errors import InvalidRequest

MiB = 1024 * 1024
REDACTED = "***"
_REVEAL = "reveal_secrets"
#: Serialization context that writes secrets out (`model_dump(context=REVEAL)`): for the worker's job only.
REVEAL = {_REVEAL: True}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class _Storage(BaseModel):
    # hide_input_in_errors: a validation error must never quote a secret back.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True,
                              hide_input_in_errors=True)

    def with_secrets(self) -> dict:
        """The config as JSON-ready data, secrets included: for the worker's --config only, never for logs."""
        return self.model_dump(mode="json", context={_REVEAL: True})


def _dump_secret(value: SecretStr | None, info: SerializationInfo) -> str | None:
    if value is None:
        return None
    if info.context and info.context.get(_REVEAL):
        return value.get_secret_value()
    return REDACTED


def _endpoint(value: str) -> str:
    """An http(s) URL without credentials, query or fragment; '' for the provider's default."""
    value = value.strip().rstrip("/")
    if not value:
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("endpoint must be an http:// or https:// URL")
    if parts.username or parts.password:
        raise ValueError("endpoint must not carry credentials; use the key fields")
    if parts.query or parts.fragment:
        raise ValueError("endpoint must not have a query or fragment")
    return value


def _plain_name(value: str, what: str) -> str:
    if not value or "/" in value or "\\" in value or _CONTROL.search(value):
        raise ValueError(f"{what} must be a plain name (no slashes or control characters)")
    return value


Endpoint = Annotated[str, AfterValidator(_endpoint)]
Bucket = Annotated[str, AfterValidator(lambda v: _plain_name(v, "bucket"))]


class LocalStorage(_Storage):
    """Files stay on this server, in its storage folder, served through signed, expiring URLs."""

    kind: Literal["local"] = "local"


class S3Storage(_Storage):
    """Amazon S3 or any S3-compatible store (MinIO, R2, Spaces, Backblaze…)."""

    kind: Literal["s3"] = "s3"
    access_key: str = ""
    secret: SecretStr | None = Field(None, validation_alias=AliasChoices("secret", "secret_key", "secretKey"))
    session_token: SecretStr | None = None
    region: str = ""
    endpoint: Endpoint = ""
    bucket: Bucket
    force_path_style: bool = False
    metadata: dict[str, str] = Field(default_factory=dict)
    tagging: str = ""
    content_disposition: str = ""
    #: Files at least this large go up as multipart uploads, in parts of `part_size` bytes (S3's minimum is 5 MiB).
    multipart_threshold: int = Field(16 * MiB, ge=5 * MiB)
    part_size: int = Field(16 * MiB, ge=5 * MiB, le=5 * 1024 * MiB)

    dump_secrets = field_serializer("secret", "session_token")(_dump_secret)

    @field_validator("tagging")
    @classmethod
    def _check_tagging(cls, v: str) -> str:
        if v:
            try:
                parse_qsl(v, keep_blank_values=True, strict_parsing=True)
            except ValueError:
                raise ValueError('tagging must be URL-encoded "key=value&key2=value2"') from None
        return v

    @model_validator(mode="after")
    def _region_or_endpoint(self) -> "S3Storage":
        if not self.region and not self.endpoint:
            raise ValueError("region is required when endpoint is not set")
        if bool(self.access_key) != bool(self.secret and self.secret.get_secret_value()):
            raise ValueError("access_key and secret go together (leave both empty to use the machine's credentials)")
        return self


def _credentials_json(value: Any) -> Any:
    """LiveKit's `credentials` is bytes: JSON text, base64 of it (protobuf JSON), or already-parsed JSON."""
    if value is None or isinstance(value, SecretStr):
        return value
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str) and value.strip() and not value.lstrip().startswith("{"):
        try:
            value = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError("credentials must be the service account's JSON (as text or base64)") from None
    return value


class GCSStorage(_Storage):
    """Google Cloud Storage, with a service account's JSON key (`credentials`)."""

    kind: Literal["gcs"] = "gcs"
    #: The service-account JSON key; empty uses the machine's default credentials (no signed URLs then).
    credentials: Annotated[SecretStr | None, BeforeValidator(_credentials_json)] = None
    bucket: Bucket
    #: Another API root, e.g. an emulator (fake-gcs-server).
    endpoint: Endpoint = ""
    #: Files over 8 MiB go up as resumable uploads, `chunk_size` bytes per request (a multiple of 256 KiB).
    chunk_size: int = Field(16 * MiB, ge=256 * 1024)

    dump_secrets = field_serializer("credentials")(_dump_secret)

    @field_validator("credentials")
    @classmethod
    def _check_credentials(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        try:
            info = json.loads(v.get_secret_value())
        except ValueError:
            raise ValueError("credentials is not valid JSON") from None
        if not isinstance(info, dict) or info.get("type") != "service_account":
            raise ValueError('credentials must be a service account key (JSON with "type": "service_account")')
        missing = [k for k in ("client_email", "private_key") if not info.get(k)]
        if missing:
            raise ValueError(f"credentials lacks {', '.join(missing)}")
        return v

    @field_validator("chunk_size")
    @classmethod
    def _check_chunk(cls, v: int) -> int:
        if v % (256 * 1024):
            raise ValueError("chunk_size must be a multiple of 256 KiB (262144)")
        return v


class AzureStorage(_Storage):
    """Azure Blob Storage (block blobs), with the account's shared key."""

    kind: Literal["azure"] = "azure"
    account_name: str
    account_key: SecretStr
    container_name: str
    #: The blob service URL, e.g. an emulator's `http://127.0.0.1:10000/devstoreaccount1`;
    #: empty means `https://{account_name}.blob.core.windows.net`.
    endpoint: Endpoint = ""
    #: Files over `block_size` go up as blocks of that size, committed as one block list.
    block_size: int = Field(8 * MiB, ge=1 * MiB, le=4000 * MiB)

    dump_secrets = field_serializer("account_key")(_dump_secret)

    @field_validator("account_key")
    @classmethod
    def _check_key(cls, v: SecretStr) -> SecretStr:
        try:
            base64.b64decode(v.get_secret_value(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("account_key must be the base64 key Azure shows for the account") from None
        return v

    @field_validator("account_name", "container_name")
    @classmethod
    def _check_names(cls, v: str, info) -> str:
        return _plain_name(v, info.field_name)


_LIVEKIT_KEYS = {"s3": "s3", "gcp": "gcs", "gcs": "gcs", "azure": "azure", "local": "local"}


def _normalize(data: Any) -> Any:
    """Accept LiveKit's shape (`{"gcp": {...}}`) and kind `gcp` alongside ours (`{"kind": "gcs", ...}`)."""
    if not isinstance(data, dict):
        return data
    if "kind" not in data and len(data) == 1:
        (key, inner), = data.items()
        if key in _LIVEKIT_KEYS and isinstance(inner, dict):
            return {**inner, "kind": _LIVEKIT_KEYS[key]}
    if data.get("kind") == "gcp":
        return {**data, "kind": "gcs"}
    return data


StorageConfig = Annotated[
    Annotated[Union[LocalStorage, S3Storage, GCSStorage, AzureStorage], Field(discriminator="kind")],
    BeforeValidator(_normalize),
]
"""One storage, told apart by `kind` (`local`, `s3`, `gcs`/`gcp`, `azure`) or by LiveKit's wrapping key."""

_ADAPTER: TypeAdapter = TypeAdapter(StorageConfig)


def storage_urls(config: _Storage | None) -> list[tuple[str, str]]:
    """The URLs a storage config makes its client connect to besides the provider's own hosts, by field: its
    `endpoint`, and the `token_uri` of a GCS key (where the key's signed assertion is posted)."""
    urls = []
    endpoint = getattr(config, "endpoint", "")
    if endpoint:
        urls.append(("endpoint", endpoint))
    if isinstance(config, GCSStorage) and config.credentials:
        token_uri = json.loads(config.credentials.get_secret_value()).get("token_uri")
        if token_uri:
            urls.append(("credentials.token_uri", str(token_uri)))
    return urls


def parse_storage(data: Any, field: str = "storage") -> LocalStorage | S3Storage | GCSStorage | AzureStorage:
    """Validate a storage config; raises InvalidRequest naming the bad field (never quoting a value)."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        err = exc.errors(include_input=False)[0]
        # The first loc item is the union member's tag (e.g. "s3"): the user did not write it.
        loc = [str(p) for p in err.get("loc", ())]
        if loc and loc[0] in ("local", "s3", "gcs", "azure"):
            loc = loc[1:]
        where = ".".join([field, *loc])
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if err.get("type") == "union_tag_not_found":
            msg = "kind is required: local, s3, gcs or azure"
        elif err.get("type") == "union_tag_invalid":
            msg = "kind must be one of local, s3, gcs, azure"
        raise InvalidRequest(f"{where}: {msg}", details={"field": where}) from None
