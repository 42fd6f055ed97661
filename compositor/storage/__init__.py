"""Storage: where finished recordings go (local folder, S3-compatible, GCS, Azure), how they are named,
and how they get there without loss.

- `config`: the `StorageConfig` models (secrets redacted in logs), `parse_storage`.
- `names`: LiveKit filename templates (`render_name`) and key checks (`check_key`).
- `uploader`: `Uploader` / `store_file` (retries, verification, backup), `presign`.
- `local_urls`: signed, expiring download URLs for local storage.
- `s3`, `gcs`, `azure`, `local`: one backend each, loaded when used.
"""

from .config import AzureStorage, GCSStorage, LocalStorage, S3Storage, StorageConfig, parse_storage
from .errors import AUTH_FAILED, BUCKET_NOT_FOUND, FAILED, UNREACHABLE, UploadFailed
from .local import LocalSite
from .local_urls import sign_local_url, verify_local_signature
from .names import DEFAULT_TEMPLATE, NameValues, check_key, render_name, with_extension
from .uploader import RetryNotice, RetryPolicy, StoredFile, Uploader, presign, store_file

__all__ = [
    "AUTH_FAILED", "BUCKET_NOT_FOUND", "DEFAULT_TEMPLATE", "FAILED", "UNREACHABLE",
    "AzureStorage", "GCSStorage", "LocalSite", "LocalStorage", "NameValues", "RetryNotice", "RetryPolicy",
    "S3Storage", "StorageConfig", "StoredFile", "UploadFailed", "Uploader",
    "check_key", "parse_storage", "presign", "render_name", "sign_local_url", "store_file",
    "verify_local_signature", "with_extension",
]
