"""What every storage backend does: put a file under a key, report its stored size, sign a URL.

Backends only talk to their service and say what a failure means
(`classify`); retries, verification and the backup belong to the uploader.
"""

from __future__ import annotations

import mimetypes
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from .errors import FAILED, UNREACHABLE, UploadFailed, redact

_TYPES = {
    ".mp4": "video/mp4", ".webm": "video/webm", ".ogg": "audio/ogg", ".mp3": "audio/mpeg",
    ".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
    ".json": "application/json",
}


def content_type_for(key: str) -> str:
    """The Content-Type a player expects for `key`, by extension."""
    suffix = Path(key).suffix.lower()
    return _TYPES.get(suffix) or mimetypes.guess_type(key)[0] or "application/octet-stream"


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps: SDKs re-raise (boto3's S3UploadFailedError hides the ClientError)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


class Backend(ABC):
    """One configured storage."""

    #: The `kind` reported in results: local, s3, gcs, azure.
    name: ClassVar[str]

    @abstractmethod
    async def put(self, path: Path, key: str, content_type: str) -> None:
        """Store the file at `path` under `key`, replacing any object of that name."""

    @abstractmethod
    async def stored_size(self, key: str) -> int:
        """The size the storage reports for `key` (HEAD / properties), to verify an upload."""

    @abstractmethod
    async def presign(self, key: str, expires_s: int) -> str:
        """A URL that downloads `key` without other credentials for `expires_s` seconds."""

    @abstractmethod
    def location(self, key: str) -> str:
        """Where `key` lives, as LiveKit reports it (the object's URL)."""

    @abstractmethod
    def classify(self, exc: BaseException) -> UploadFailed:
        """What a failure means: a stable code, a secret-free message, and whether to try again."""

    def secrets(self) -> list[str]:
        """Values that must never appear in a message (scrubbed by `fail`)."""
        return []

    async def close(self) -> None:
        """Release connections."""

    def fail(self, message: str, code: str = FAILED, *, transient: bool = False) -> UploadFailed:
        """An UploadFailed for this backend, its message scrubbed of secrets."""
        return UploadFailed(redact(f"{self.name}: {message}", self.secrets()), code, transient=transient,
                            details={"backend": self.name})

    def classify_common(self, exc: BaseException) -> UploadFailed | None:
        """Failures every backend shares: the network, and the local file."""
        for e in causes(exc):
            if isinstance(e, FileNotFoundError) and e.filename and not str(e.filename).startswith("http"):
                return self.fail(f"local file missing: {e.filename}")
            if isinstance(e, (ConnectionError, TimeoutError)):
                return self.fail(f"cannot reach the storage: {e}", UNREACHABLE, transient=True)
        return None
