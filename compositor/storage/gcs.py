"""The `gcs` storage: Google Cloud Storage through google-cloud-storage, with a service-account key.

The client is synchronous (requests underneath), so calls run in a worker
thread with asyncio.to_thread; the event loop stays free while bytes move.
Files over 8 MiB go up as resumable uploads in `chunk_size` pieces.
"""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import google.auth
import requests
from google.api_core import exceptions as api_errors
from google.auth import exceptions as auth_errors
from google.auth.transport.requests import AuthorizedSession, Request
from google.cloud import storage
from google.cloud.storage.exceptions import InvalidResponse
from google.cloud.storage.retry import DEFAULT_RETRY
from google.oauth2 import service_account

from .base import Backend, causes
from .config import GCSStorage
from .errors import AUTH_FAILED, BUCKET_NOT_FOUND, FAILED, UNREACHABLE, UploadFailed

_SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]
# The library's own retry covers a dropped chunk (a resumable upload resumes where it was);
# a longer outage is the uploader's to wait out, so this one gives up quickly.
_RETRY = DEFAULT_RETRY.with_timeout(5.0)
_TIMEOUT = (5, 120)  # connect, read (seconds)


class GCSBackend(Backend):
    name = "gcs"

    def __init__(self, config: GCSStorage, proxy: str | None = None):
        self.config = config
        self.proxies = {"http": proxy, "https": proxy} if proxy else None
        self.credentials: service_account.Credentials | None = None
        self.project: str | None = None
        if config.credentials:
            info = json.loads(config.credentials.get_secret_value())
            self.credentials = service_account.Credentials.from_service_account_info(info, scopes=_SCOPES)
            self.project = info.get("project_id")
        self._client: storage.Client | None = None
        self._lock = threading.Lock()

    def secrets(self) -> list[str]:
        if not self.config.credentials:
            return []
        info = json.loads(self.config.credentials.get_secret_value())
        return [self.config.credentials.get_secret_value(), info.get("private_key", ""),
                info.get("private_key_id", "")]

    def _bucket(self) -> storage.Bucket:
        # Made on first use, in the worker thread: without a key, the machine's default credentials
        # are looked up then, and their absence is a classified failure rather than a crash.
        with self._lock:
            if self._client is None:
                options = {"api_endpoint": self.config.endpoint} if self.config.endpoint else None
                self._client = storage.Client(project=self.project, credentials=self.credentials,
                                              client_options=options, _http=self._session())
        return self._client.bucket(self.config.bucket)

    def _session(self) -> AuthorizedSession | None:
        """With a proxy, the requests session the client uses: the key's token requests (its token_uri) go
        through the proxy too. The machine's own credentials fetch their tokens as they always do."""
        if not self.proxies:
            return None
        credentials = self.credentials
        auth = None
        if credentials is None:
            credentials, _ = google.auth.default(scopes=_SCOPES)
        else:
            auth = requests.Session()
            auth.proxies.update(self.proxies)
        session = AuthorizedSession(credentials, auth_request=auth and Request(auth))
        session.proxies.update(self.proxies)
        return session

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def _put(self, path: Path, key: str, content_type: str) -> None:
        blob = self._bucket().blob(key, chunk_size=self.config.chunk_size)
        blob.upload_from_filename(str(path), content_type=content_type, timeout=_TIMEOUT, retry=_RETRY)

    async def put(self, path: Path, key: str, content_type: str) -> None:
        await asyncio.to_thread(self._put, path, key, content_type)

    def _size(self, key: str) -> int:
        blob = self._bucket().get_blob(key, timeout=_TIMEOUT)
        if blob is None or blob.size is None:
            raise UploadFailed("gcs: the stored object is not visible yet", FAILED, transient=True)
        return int(blob.size)

    async def stored_size(self, key: str) -> int:
        return await asyncio.to_thread(self._size, key)

    async def presign(self, key: str, expires_s: int) -> str:
        if self.credentials is None:
            raise UploadFailed("gcs: signed URLs need a service-account key in credentials", FAILED)
        # V4 signing is an RSA signature with the key in hand: no request is made.
        blob = self._bucket().blob(key)
        return blob.generate_signed_url(version="v4", expiration=timedelta(seconds=int(expires_s)), method="GET",
                                        credentials=self.credentials)

    def location(self, key: str) -> str:
        base = self.config.endpoint or "https://storage.googleapis.com"
        return f"{base}/{self.config.bucket}/{quote(key, safe='/')}"

    def classify(self, exc: BaseException) -> UploadFailed:
        if isinstance(exc, UploadFailed):
            return exc
        chain = list(causes(exc))
        for e in list(chain):
            if isinstance(e, api_errors.RetryError) and e.cause is not None:
                chain.extend(causes(e.cause))
        for e in chain:
            if isinstance(e, auth_errors.RefreshError):
                if getattr(e, "retryable", False):
                    return self.fail(f"token service unavailable: {e}", UNREACHABLE, transient=True)
                return self.fail(f"credentials refused: {e}", AUTH_FAILED)
            if isinstance(e, auth_errors.DefaultCredentialsError):
                return self.fail("no credentials: set credentials to a service-account key", AUTH_FAILED)
            if isinstance(e, auth_errors.TransportError):
                return self.fail(f"cannot reach the token service: {e}", UNREACHABLE, transient=True)
            if isinstance(e, api_errors.GoogleAPICallError):
                return self._by_status(int(e.code or 0), e.message or str(e))
            if isinstance(e, InvalidResponse):
                status = int(getattr(e.response, "status_code", 0) or 0)
                return self._by_status(status, str(e))
            if isinstance(e, (requests.ConnectionError, requests.Timeout)):
                return self.fail(f"cannot reach the storage: {e}", UNREACHABLE, transient=True)
        return self.classify_common(exc) or self.fail(str(exc) or type(exc).__name__, FAILED)

    def _by_status(self, status: int, text: str) -> UploadFailed:
        if status in (401, 403):
            return self.fail(f"credentials refused ({status}: {text})", AUTH_FAILED)
        if status == 404:
            return self.fail(f"bucket {self.config.bucket!r} not found ({text})", BUCKET_NOT_FOUND)
        if status in (408, 429) or status >= 500:
            return self.fail(f"{status}: {text}", FAILED, transient=True)
        return self.fail(f"{status}: {text}", FAILED)
