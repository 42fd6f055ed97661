"""The `azure` storage: Azure Blob Storage block blobs, through azure-storage-blob's asyncio client.

Files over `block_size` go up as blocks of that size, committed as one block list.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobSasPermissions, ContentSettings, generate_blob_sas
from azure.storage.blob.aio import BlobServiceClient, LinearRetry

from .base import Backend, causes
from .config import AzureStorage
from .errors import AUTH_FAILED, BUCKET_NOT_FOUND, FAILED, UNREACHABLE, UploadFailed

_AUTH_CODES = {"AuthenticationFailed", "AuthorizationFailure", "AuthorizationPermissionMismatch",
               "InvalidAuthenticationInfo", "AccountIsDisabled", "InsufficientAccountPermissions"}


class AzureBackend(Backend):
    name = "azure"

    def __init__(self, config: AzureStorage, proxy: str | None = None):
        self.config = config
        self.proxies = {"http": proxy, "https": proxy} if proxy else None
        self.account_url = config.endpoint or f"https://{config.account_name}.blob.core.windows.net"

    def secrets(self) -> list[str]:
        return [self.config.account_key.get_secret_value()]

    def _service(self) -> BlobServiceClient:
        # One client per operation, closed by `async with`: nothing is left open between uploads,
        # and the client's aiohttp session always belongs to the running loop.
        return BlobServiceClient(
            self.account_url,
            credential={"account_name": self.config.account_name,
                        "account_key": self.config.account_key.get_secret_value()},
            max_single_put_size=self.config.block_size, max_block_size=self.config.block_size,
            # The SDK's default waits 15 s between its retries; a dropped block is retried
            # quickly here, and a longer outage is the uploader's to wait out.
            retry_policy=LinearRetry(backoff=1, retry_total=2, random_jitter_range=1),
            connection_timeout=5, read_timeout=120, proxies=self.proxies,
        )

    async def put(self, path: Path, key: str, content_type: str) -> None:
        async with self._service() as service:
            blob = service.get_blob_client(self.config.container_name, key)
            # The SDK reads the open file a block at a time between network writes; local
            # disk reads of one block are short enough not to need a thread.
            with open(path, "rb") as data:
                await blob.upload_blob(data, overwrite=True, length=Path(path).stat().st_size,
                                       content_settings=ContentSettings(content_type=content_type),
                                       max_concurrency=2)

    async def stored_size(self, key: str) -> int:
        async with self._service() as service:
            props = await service.get_blob_client(self.config.container_name, key).get_blob_properties()
            return int(props.size)

    async def presign(self, key: str, expires_s: int) -> str:
        # A SAS token is an HMAC with the account key: computed here, no request made.
        # Starting a minute back tolerates a little clock skew with the storage.
        now = datetime.now(timezone.utc)
        sas = generate_blob_sas(self.config.account_name, self.config.container_name, key,
                                account_key=self.config.account_key.get_secret_value(),
                                permission=BlobSasPermissions(read=True),
                                start=now - timedelta(minutes=1), expiry=now + timedelta(seconds=int(expires_s)))
        return f"{self.location(key)}?{sas}"

    def location(self, key: str) -> str:
        return f"{self.account_url}/{self.config.container_name}/{quote(key, safe='/')}"

    def classify(self, exc: BaseException) -> UploadFailed:
        if isinstance(exc, UploadFailed):
            return exc
        for e in causes(exc):
            if isinstance(e, ClientAuthenticationError):
                return self.fail(f"credentials refused ({_first_line(e)})", AUTH_FAILED)
            if isinstance(e, ResourceNotFoundError):
                if _error_code(e) == "BlobNotFound":
                    return self.fail("the stored blob is not visible yet", FAILED, transient=True)
                return self.fail(f"container {self.config.container_name!r} not found ({_first_line(e)})",
                                 BUCKET_NOT_FOUND)
            if isinstance(e, HttpResponseError):
                status = int(e.status_code or 0)
                code = _error_code(e)
                if code in _AUTH_CODES or status in (401, 403):
                    return self.fail(f"credentials refused ({code or status})", AUTH_FAILED)
                if status in (408, 429) or status >= 500:
                    return self.fail(f"{status} {code}: {_first_line(e)}", FAILED, transient=True)
                return self.fail(f"{status} {code}: {_first_line(e)}", FAILED)
            if isinstance(e, (ServiceRequestError, ServiceResponseError)):
                return self.fail(f"cannot reach the storage: {_first_line(e)}", UNREACHABLE, transient=True)
        return self.classify_common(exc) or self.fail(str(exc) or type(exc).__name__, FAILED)


def _error_code(exc: BaseException) -> str:
    """The service's error code as plain text (the SDK gives an enum member, or a string)."""
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


def _first_line(exc: BaseException) -> str:
    """The service's message without the request dump (signature details) the SDK appends."""
    text = getattr(exc, "message", None) or str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
