"""The backend for a storage config. Cloud SDKs are imported only when their storage is used:
each costs a noticeable start-up time that a worker recording locally should not pay."""

from __future__ import annotations

from .base import Backend
from .config import AzureStorage, GCSStorage, LocalStorage, S3Storage
from .errors import FAILED, UploadFailed
from .local import LocalBackend, LocalSite


def make_backend(config: LocalStorage | S3Storage | GCSStorage | AzureStorage,
                 local: LocalSite | None = None, proxy: str | None = None) -> Backend:
    """A ready backend for `config`; `local` (the service's folder, URL and secret) is needed for `local`.
    A cloud backend connects through `proxy` (an http:// proxy URL) when one is given."""
    if isinstance(config, LocalStorage):
        if local is None:
            raise UploadFailed("local storage is not set up on this server (no storage folder)", FAILED)
        return LocalBackend(local)
    if isinstance(config, S3Storage):
        from .s3 import S3Backend
        return S3Backend(config, proxy)
    if isinstance(config, GCSStorage):
        from .gcs import GCSBackend
        return GCSBackend(config, proxy)
    if isinstance(config, AzureStorage):
        from .azure import AzureBackend
        return AzureBackend(config, proxy)
    raise TypeError(f"not a storage config: {type(config).__name__}")
