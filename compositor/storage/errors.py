"""Storage failures, each with a stable code (part of the contract, like every CompositorError).

`transient` tells the uploader whether trying again may help (network error,
5xx, throttling) or whether the storage refused for good (bad credentials,
no such bucket), in which case it moves on to the backup storage, if any.
"""

from __future__ import annotations

from ..errors import CompositorError

AUTH_FAILED = "STORAGE_AUTH_FAILED"
BUCKET_NOT_FOUND = "STORAGE_BUCKET_NOT_FOUND"
UNREACHABLE = "STORAGE_UNREACHABLE"
FAILED = "STORAGE_FAILED"


class UploadFailed(CompositorError):
    """A file could not be stored (or a URL signed); the local file is untouched."""

    code = FAILED
    http_status = 502

    def __init__(self, message: str, code: str = FAILED, *, transient: bool = False, details: dict | None = None):
        super().__init__(message, details=details)
        self.code = code
        self.transient = transient

    def __repr__(self) -> str:
        return f"UploadFailed({self.code}: {self.message})"


def redact(text: str, secrets: list[str]) -> str:
    """`text` with every secret replaced by ***, shortened to a log-friendly length.

    SDK error messages can quote request details; scrubbing here means no
    message we raise can carry a key, whatever the SDK put in it.
    """
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= 400 else text[:397] + "..."
