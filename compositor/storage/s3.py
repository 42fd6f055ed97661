"""The `s3` storage: Amazon S3 or any S3-compatible service, through boto3.

boto3 is synchronous, and its managed transfer (multipart, part retries)
has no asyncio counterpart we trust (aioboto3 pins old boto3), so calls run
in a worker thread with asyncio.to_thread: the event loop stays free while
bytes move.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import quote, urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from .base import Backend, causes
from .config import S3Storage
from .errors import AUTH_FAILED, BUCKET_NOT_FOUND, FAILED, UNREACHABLE, UploadFailed

_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "InvalidToken",
               "TokenRefreshRequired", "AuthorizationHeaderMalformed", "InvalidClientTokenId",
               "AllAccessDisabled", "AccountProblem", "Forbidden", "403"}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                    "InternalError", "ServiceUnavailable", "503", "500", "502", "504", "429"}


class S3Backend(Backend):
    name = "s3"

    def __init__(self, config: S3Storage, proxy: str | None = None):
        self.config = config
        secret = config.secret.get_secret_value() if config.secret else None
        token = config.session_token.get_secret_value() if config.session_token else None
        session = boto3.session.Session(
            aws_access_key_id=config.access_key or None, aws_secret_access_key=secret or None,
            aws_session_token=token or None, region_name=config.region or "us-east-1")
        self.client = session.client("s3", endpoint_url=config.endpoint or None, config=BotoConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path" if config.force_path_style else "auto"},
            # A few quick retries cover a dropped part; longer outages are the uploader's to wait out.
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=5, read_timeout=60,
            # S3-compatible stores (older MinIO, R2, Spaces) reject the CRC trailers newer botocore
            # adds by default; checksums only where the API requires them keeps every store working.
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
            proxies={"http": proxy, "https": proxy} if proxy else None,
        ))
        self.transfer = TransferConfig(multipart_threshold=config.multipart_threshold,
                                       multipart_chunksize=config.part_size, max_concurrency=4)

    def secrets(self) -> list[str]:
        return [s.get_secret_value() for s in (self.config.secret, self.config.session_token) if s]

    async def close(self) -> None:
        self.client.close()

    def _extra_args(self, content_type: str) -> dict:
        extra: dict = {"ContentType": content_type}
        if self.config.metadata:
            extra["Metadata"] = dict(self.config.metadata)
        if self.config.tagging:
            extra["Tagging"] = self.config.tagging
        if self.config.content_disposition:
            extra["ContentDisposition"] = self.config.content_disposition
        return extra

    async def put(self, path: Path, key: str, content_type: str) -> None:
        await asyncio.to_thread(self.client.upload_file, str(path), self.config.bucket, key,
                                ExtraArgs=self._extra_args(content_type), Config=self.transfer)

    async def stored_size(self, key: str) -> int:
        head = await asyncio.to_thread(self.client.head_object, Bucket=self.config.bucket, Key=key)
        return int(head["ContentLength"])

    async def presign(self, key: str, expires_s: int) -> str:
        # Signing is local computation (no request), cheap enough for the event loop.
        return self.client.generate_presigned_url("get_object", Params={"Bucket": self.config.bucket, "Key": key},
                                                  ExpiresIn=int(expires_s))

    def location(self, key: str) -> str:
        bucket, quoted = self.config.bucket, quote(key, safe="/")
        if not self.config.endpoint:
            return f"https://{bucket}.s3.amazonaws.com/{quoted}"
        if self.config.force_path_style:
            return f"{self.config.endpoint}/{bucket}/{quoted}"
        parts = urlsplit(self.config.endpoint)
        return f"{parts.scheme}://{bucket}.{parts.netloc}{parts.path}/{quoted}"

    def classify(self, exc: BaseException) -> UploadFailed:
        if isinstance(exc, UploadFailed):
            return exc
        for e in causes(exc):
            if isinstance(e, ClientError):
                err = e.response.get("Error", {})
                code = str(err.get("Code", ""))
                status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
                text = f"{code or status}: {err.get('Message') or e}"
                if e.operation_name == "HeadObject" and status == 404:
                    # Only asked right after a successful put: a store that lists lazily.
                    return self.fail("the stored object is not visible yet", FAILED, transient=True)
                if code == "NoSuchBucket" or (status == 404 and code in ("", "404")):
                    return self.fail(f"bucket {self.config.bucket!r} not found ({text})", BUCKET_NOT_FOUND)
                if code in _AUTH_CODES or status == 403:
                    return self.fail(f"credentials refused ({text})", AUTH_FAILED)
                if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                    return self.fail(text, FAILED, transient=True)
                return self.fail(text, FAILED)
            if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
                return self.fail("no credentials: set access_key and secret", AUTH_FAILED)
            if isinstance(e, (EndpointConnectionError, ConnectTimeoutError, ConnectionClosedError)):
                return self.fail(f"cannot reach the storage: {e}", UNREACHABLE, transient=True)
            if isinstance(e, ReadTimeoutError):
                return self.fail(f"the storage stopped answering: {e}", UNREACHABLE, transient=True)
        common = self.classify_common(exc)
        if common:
            return common
        if isinstance(exc, BotoCoreError):
            return self.fail(str(exc), FAILED, transient=True)
        return self.fail(str(exc) or type(exc).__name__, FAILED)

