"""Getting finished files into storage without losing any.

Each file is put, then its stored size is checked against the local one.
Transient failures (network, 5xx, throttling, a size that does not match
yet) are retried with backoff (1, 2, 4, 8 s…) for `RetryPolicy.window_s`;
a refusal for good (credentials, no such bucket) or an exhausted window
moves to the backup storage when there is one. The local file is never
deleted or changed: the caller removes it once a result confirms the upload.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import InvalidRequest
from .backends import make_backend
from .base import Backend, content_type_for
from .config import AzureStorage, GCSStorage, LocalStorage, S3Storage
from .errors import FAILED, UploadFailed
from .local import LocalSite
from .names import check_key

log = logging.getLogger(__name__)

AnyStorage = LocalStorage | S3Storage | GCSStorage | AzureStorage
#: The longest a signed URL may live: S3's and GCS's V4 signatures allow 7 days.
MAX_URL_EXPIRY_S = 7 * 24 * 3600
PLAYLIST_SUFFIXES = (".m3u8",)


@dataclass(frozen=True)
class RetryPolicy:
    """How long transient failures are retried: `first_delay_s`, doubling up to `max_delay_s`, for `window_s`."""

    window_s: float = 300.0
    first_delay_s: float = 1.0
    max_delay_s: float = 30.0


@dataclass(frozen=True)
class StoredFile:
    """A confirmed upload: `location` is the object's URL (or path, for local storage without a base URL)."""

    location: str
    key: str
    size: int
    backend: str
    backup_used: bool = False

    def to_dict(self) -> dict:
        """The result as it appears in events and the API."""
        return asdict(self)


@dataclass(frozen=True)
class RetryNotice:
    """Told to `on_retry` before each wait: which storage, which key, the attempt that failed, the wait."""

    backend: str
    key: str
    attempt: int
    delay_s: float
    error: UploadFailed


OnRetry = Callable[[RetryNotice], None]


class Uploader:
    """Stores files in one storage, with an optional backup. Use `async with`, or call `close()`."""

    def __init__(self, storage: AnyStorage | Backend, *, backup: AnyStorage | Backend | None = None,
                 local: LocalSite | None = None, retry: RetryPolicy | None = None,
                 on_retry: OnRetry | None = None, proxy: str | None = None):
        """`proxy`: the http:// proxy cloud storages are reached through (the worker's outbound gate)."""
        self.primary = storage if isinstance(storage, Backend) else make_backend(storage, local, proxy)
        self.backup = (backup if isinstance(backup, Backend) or backup is None
                       else make_backend(backup, local, proxy))
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry

    async def __aenter__(self) -> "Uploader":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        """Release the backends' connections."""
        for backend in (self.primary, self.backup):
            if backend is not None:
                await backend.close()

    async def store_file(self, path: str | Path, key: str, *, content_type: str | None = None) -> StoredFile:
        """Upload `path` under `key` and confirm it; raises UploadFailed (with a stable code) if neither
        the storage nor the backup took it. The local file is left in place either way."""
        return (await self.store_files([(Path(path), key)], content_type=content_type))[0]

    async def store_folder(self, folder: str | Path, prefix: str, *, concurrency: int = 4) -> list[StoredFile]:
        """Upload every file under `folder` to `prefix/<relative path>` (an HLS folder: segments first,
        playlists last, so a reader never sees a playlist naming a segment not yet stored)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise UploadFailed(f"local folder missing: {folder}", FAILED)
        prefix = prefix.strip("/")
        files = [(p, f"{prefix}/{p.relative_to(folder).as_posix()}" if prefix else p.relative_to(folder).as_posix())
                 for p in sorted(folder.rglob("*")) if p.is_file()]
        if not files:
            raise UploadFailed(f"local folder is empty: {folder}", FAILED)
        return await self.store_files(files, concurrency=concurrency)

    async def store_files(self, files: Sequence[tuple[Path, str]], *, concurrency: int = 4,
                          content_type: str | None = None) -> list[StoredFile]:
        """Upload `(path, key)` pairs, all to the same storage: if the primary refuses any for good,
        the whole set goes to the backup, so a recording is never split between two places."""
        files = [(Path(p), check_key(k, "key")) for p, k in files]
        for path, _ in files:
            if not path.is_file():
                raise UploadFailed(f"local file missing: {path}", FAILED)
        try:
            return await self._store_all(self.primary, files, concurrency, content_type, backup_used=False)
        except UploadFailed as primary_error:
            if self.backup is None:
                raise
            log.warning("storage %s failed for good (%s: %s); storing on the backup %s",
                        self.primary.name, primary_error.code, primary_error.message, self.backup.name)
            try:
                return await self._store_all(self.backup, files, concurrency, content_type, backup_used=True)
            except UploadFailed as backup_error:
                raise UploadFailed(f"{primary_error.message}; backup: {backup_error.message}", primary_error.code,
                                   details={**primary_error.details, "backup": backup_error.to_dict()}) from None

    async def presign(self, key: str, expires_s: int, *, backup_used: bool = False) -> str:
        """A download URL for `key` valid `expires_s` seconds (1 s to 7 days), from the storage that holds it."""
        if not 1 <= int(expires_s) <= MAX_URL_EXPIRY_S:
            raise InvalidRequest(f"expires must be 1 to {MAX_URL_EXPIRY_S} seconds", details={"field": "expires"})
        check_key(key, "key")
        backend = self.backup if backup_used and self.backup is not None else self.primary
        try:
            return await backend.presign(key, int(expires_s))
        except Exception as exc:  # noqa: BLE001 - every failure leaves as a classified UploadFailed
            raise backend.classify(exc) from None

    async def _store_all(self, backend: Backend, files: list[tuple[Path, str]], concurrency: int,
                         content_type: str | None, *, backup_used: bool) -> list[StoredFile]:
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(path: Path, key: str) -> StoredFile:
            async with gate:
                return await self._store_one(backend, path, key, content_type or content_type_for(key), backup_used)

        # Playlists after everything else (see store_folder); results keep the order given.
        order = sorted(range(len(files)), key=lambda i: files[i][1].lower().endswith(PLAYLIST_SUFFIXES))
        results: dict[int, StoredFile] = {}
        for last in (False, True):
            batch = [i for i in order if files[i][1].lower().endswith(PLAYLIST_SUFFIXES) == last]
            done = await _gather_or_cancel([one(*files[i]) for i in batch])
            results.update(zip(batch, done))
        return [results[i] for i in range(len(files))]

    async def _store_one(self, backend: Backend, path: Path, key: str, content_type: str,
                         backup_used: bool) -> StoredFile:
        size = path.stat().st_size

        async def attempt() -> None:
            await backend.put(path, key, content_type)
            stored = await backend.stored_size(key)
            if stored != size:
                raise backend.fail(f"stored size {stored} differs from the local {size} bytes", FAILED,
                                   transient=True)

        await self._with_retries(backend, key, attempt)
        return StoredFile(location=backend.location(key), key=key, size=size, backend=backend.name,
                          backup_used=backup_used)

    async def _with_retries(self, backend: Backend, key: str, attempt: Callable[[], Awaitable[None]]) -> None:
        policy = self.retry
        started = time.monotonic()
        delay = policy.first_delay_s
        tries = 0
        while True:
            tries += 1
            try:
                await attempt()
                return
            except Exception as exc:  # noqa: BLE001 - classify() turns every failure into a coded one
                error = backend.classify(exc)
            remaining = started + policy.window_s - time.monotonic()
            if not error.transient:
                raise error
            if remaining <= 0:
                raise UploadFailed(f"{error.message} (gave up after {tries} attempts in "
                                   f"{time.monotonic() - started:.0f} s)", error.code,
                                   details={**error.details, "attempts": tries})
            wait = min(delay, policy.max_delay_s, remaining)
            log.info("upload of %s to %s failed (%s), retrying in %.1f s", key, backend.name, error.message, wait)
            if self.on_retry:
                self.on_retry(RetryNotice(backend.name, key, tries, wait, error))
            await asyncio.sleep(wait)
            delay *= 2


async def _gather_or_cancel(coros: list[Awaitable[StoredFile]]) -> list[StoredFile]:
    """All results, or the first failure with the rest cancelled (not left running unawaited)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def store_file(storage: AnyStorage, path: str | Path, key: str, *, backup: AnyStorage | None = None,
                     local: LocalSite | None = None, retry: RetryPolicy | None = None,
                     content_type: str | None = None) -> StoredFile:
    """One upload with a short-lived Uploader (see Uploader.store_file)."""
    async with Uploader(storage, backup=backup, local=local, retry=retry) as uploader:
        return await uploader.store_file(path, key, content_type=content_type)


async def presign(storage: AnyStorage, key: str, expires_s: int, *, local: LocalSite | None = None) -> str:
    """A download URL for `key` in `storage` (see Uploader.presign)."""
    async with Uploader(storage, local=local) as uploader:
        return await uploader.presign(key, expires_s)
