"""The `local` storage: a folder on this server, downloaded through signed, expiring URLs."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from .base import Backend
from .errors import FAILED, UploadFailed
from .local_urls import DOWNLOAD_PATH, sign_local_url
from .names import check_key


@dataclass(frozen=True)
class LocalSite:
    """The service's side of local storage: the folder, its public base URL and the URL-signing secret."""

    root: Path
    #: e.g. `https://compositor.example.com`; empty: locations are file paths and URLs cannot be signed.
    base_url: str = ""
    signing_secret: bytes = field(default=b"", repr=False)


class LocalBackend(Backend):
    """Stores files under `site.root/key`, each one complete or absent (written aside, then renamed)."""

    name = "local"

    def __init__(self, site: LocalSite):
        self.site = site

    def path_for(self, key: str) -> Path:
        """The file that holds `key`; refuses any key that would land outside the root."""
        check_key(key, "key")
        root = self.site.root.resolve()
        path = (root / key).resolve()
        if root not in path.parents:
            raise UploadFailed(f"local: key {key!r} leaves the storage folder", FAILED)
        return path

    async def put(self, path: Path, key: str, content_type: str) -> None:
        dest = self.path_for(key)
        # Copying a large recording blocks on disk I/O: a thread keeps the event loop free.
        await asyncio.to_thread(self._put, Path(path), dest)

    @staticmethod
    def _put(src: Path, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
        try:
            try:
                # Same filesystem: a hard link stores the file without a second copy on disk,
                # and still survives the caller deleting its own path later.
                os.link(src, tmp)
            except OSError:
                with open(src, "rb") as fin, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1024 * 1024)
                    fout.flush()
                    os.fsync(fout.fileno())
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    async def stored_size(self, key: str) -> int:
        return self.path_for(key).stat().st_size

    async def presign(self, key: str, expires_s: int) -> str:
        if not self.site.base_url or not self.site.signing_secret:
            raise UploadFailed("local: no base URL or signing secret configured to sign download URLs", FAILED)
        check_key(key, "key")
        return sign_local_url(self.site.base_url, key, self.site.signing_secret, expires_s)

    def location(self, key: str) -> str:
        if self.site.base_url:
            return f"{self.site.base_url.rstrip('/')}{DOWNLOAD_PATH}{quote(key, safe='/')}"
        return str(self.path_for(key))

    def classify(self, exc: BaseException) -> UploadFailed:
        if isinstance(exc, UploadFailed):
            return exc
        if isinstance(exc, OSError) and exc.errno in (errno.EAGAIN, errno.EINTR, errno.EBUSY):
            return self.fail(str(exc), transient=True)
        # Disk full, read-only, permission denied: waiting will not fix it; the backup may.
        return self.fail(f"cannot write the file: {exc}")
