"""Signed, expiring download URLs for files kept by the `local` storage.

The URL is `{base_url}/v1/download/{key}?expires=EPOCH&sig=HEX`, where
`sig` is HMAC-SHA256 of `key` and `expires` under the server's secret:
anyone holding the URL may download that one file until it expires, and
no one can forge one for another key or a later time.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote

DOWNLOAD_PATH = "/v1/download/"


def _mac(key: str, expires: int, secret: str | bytes) -> str:
    if not secret:
        raise ValueError("a signing secret is required")
    secret_bytes = secret.encode() if isinstance(secret, str) else secret
    # The newline cannot appear in a key (names.check_key refuses control characters),
    # so "key\nexpires" is unambiguous.
    message = f"{key}\n{expires}".encode()
    return hmac.new(secret_bytes, message, hashlib.sha256).hexdigest()


def sign_local_url(base_url: str, key: str, secret: str | bytes, expires_s: float, *,
                   now: float | None = None) -> str:
    """A URL under `base_url` that downloads `key` for the next `expires_s` seconds."""
    if expires_s <= 0:
        raise ValueError("expires_s must be positive")
    expires = int((time.time() if now is None else now) + expires_s)
    sig = _mac(key, expires, secret)
    return f"{base_url.rstrip('/')}{DOWNLOAD_PATH}{quote(key, safe='/')}?expires={expires}&sig={sig}"


def verify_local_signature(key: str, expires: int | str, sig: str, secret: str | bytes, *,
                           now: float | None = None, longest: float | None = None) -> bool:
    """True when `sig` was made for this `key` and `expires` with `secret`, and `expires` is still ahead (and,
    with `longest`, no further ahead than that: the server never signs URLs living longer).

    `key` is the decoded path after /v1/download/ (as aiohttp's match_info gives it).
    The comparison takes constant time so the signature cannot be guessed byte by byte.
    """
    try:
        expires_at = int(expires)
    except (TypeError, ValueError):
        return False
    if not isinstance(sig, str) or not sig:
        return False
    expected = _mac(key, expires_at, secret)
    # bytes, because compare_digest refuses non-ASCII str (a tampered URL may have any).
    if not hmac.compare_digest(expected.encode(), sig.lower().encode("utf-8", "replace")):
        return False
    now = time.time() if now is None else now
    return now < expires_at and (longest is None or expires_at <= now + longest)
