"""Live destination URLs: which are valid, how they are pushed, how they are shown.

A stream URL carries a secret (the stream key, an SRT passphrase), so the
full URL stays inside the worker's request; everything that leaves the
process (API, webhooks, logs, events, error messages) uses `redacted`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from .errors import InvalidRequest

SCHEMES = ("rtmp", "rtmps", "srt")
# LiveKit's shorthand for Mux: mux://KEY is Mux's RTMPS ingest with that key.
MUX_INGEST = "rtmps://global-live.mux.com:443/app/"
# SRT query parameters whose values are secrets.
SRT_SECRETS = {"passphrase", "streamid"}
MASK = "***"


@dataclass(frozen=True)
class StreamTarget:
    """One destination: the URL to push to and the form that may be shown."""

    url: str
    redacted: str

    @property
    def scheme(self) -> str:
        return self.url.split(":", 1)[0]

    @property
    def protocol(self) -> str:
        """RTMP or SRT: the prefix of this destination's error codes."""
        return "SRT" if self.scheme == "srt" else "RTMP"

    @property
    def muxer(self) -> str:
        return "mpegts" if self.scheme == "srt" else "flv"

    def redact(self, text: str) -> str:
        """`text` with this destination's secrets replaced by the redacted form."""
        text = text.replace(self.url, self.redacted)
        for secret in _secrets(self.url):
            text = text.replace(secret, MASK)
        return text


def _secrets(url: str) -> list[str]:
    parts = urlsplit(url)
    found = [v for k, v in parse_qsl(parts.query) if k in SRT_SECRETS or parts.scheme != "srt"]
    if parts.scheme != "srt":
        key = parts.path.rstrip("/").rsplit("/", 1)[-1]
        found += [key, parts.query] if parts.query else [key]
    if parts.password:
        found.append(parts.password)
    # Longest first, so a key is not half-replaced by a shorter secret inside it.
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)


def redact_url(url: str) -> str:
    """The URL as it may be shown: `rtmp://host/app/***`, `srt://host:port?passphrase=***` (`scheme://***` for
    one that does not parse: nothing of it can be told apart from a secret)."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port out of range
    except ValueError:
        return f"{url.split(':', 1)[0][:10]}://{MASK}"
    netloc = parts.netloc
    if parts.password:
        netloc = f"{parts.username}:{MASK}@{parts.netloc.rpartition('@')[2]}"
    if parts.scheme == "srt":
        query = urlencode([(k, MASK if k in SRT_SECRETS else v) for k, v in parse_qsl(parts.query)], safe="*")
        return f"srt://{netloc}" + (f"?{query}" if query else "")
    app = parts.path.rstrip("/").rsplit("/", 1)[0]
    return f"{parts.scheme}://{netloc}{app}/{MASK}"


def redact_ws(url: str) -> str:
    """The URL without its query (where such services put their keys) or credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}" + (
        "?***" if parts.query else "")


def parse_stream_url(url: str, field: str = "stream.urls") -> StreamTarget:
    """Validate a destination URL (scheme, host, app and key) or raise InvalidRequest.

    Error messages show the redacted URL only: a typo must not leak a key.
    """
    url = url.strip()
    if url.startswith("mux://"):
        key = url.removeprefix("mux://").strip("/")
        if not key:
            raise InvalidRequest("mux:// needs a stream key: mux://STREAM_KEY", details={"field": field})
        url = MUX_INGEST + key
    if re.search(r"[\s\x00-\x1f|\[\]\\]", url):
        raise InvalidRequest(f"stream URL {redact_url(url)!r} contains spaces, control characters or |[]\\",
                             details={"field": field})
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidRequest(f"stream URL {redact_url(url)!r} is not a valid URL", details={"field": field}) from None
    shown = redact_url(url)
    if parts.scheme not in SCHEMES:
        raise InvalidRequest(f"stream URL {shown!r}: scheme must be one of {', '.join(s + '://' for s in SCHEMES)}",
                             details={"field": field})
    if not parts.hostname:
        raise InvalidRequest(f"stream URL {shown!r} has no host", details={"field": field})
    if parts.scheme == "srt":
        if not port:
            raise InvalidRequest(f"stream URL {shown!r}: SRT needs a port (srt://host:port)", details={"field": field})
        params = dict(parse_qsl(parts.query))
        if params.get("mode", "caller") != "caller":
            raise InvalidRequest(f"stream URL {shown!r}: the compositor calls the destination (mode=caller)",
                                 details={"field": field})
        passphrase = params.get("passphrase")
        if passphrase is not None and not 10 <= len(passphrase) <= 79:
            raise InvalidRequest(f"stream URL {shown!r}: an SRT passphrase has 10 to 79 characters",
                                 details={"field": field})
        return StreamTarget(url=url, redacted=shown)
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) < 2:
        raise InvalidRequest(f"stream URL {shown!r} needs an application and a stream key: "
                             f"{parts.scheme}://host/app/STREAM_KEY", details={"field": field})
    return StreamTarget(url=url, redacted=shown)


def parse_stream_urls(urls: list[str], field: str = "stream.urls") -> tuple[StreamTarget, ...]:
    """Every URL parsed; the same destination twice is refused."""
    targets = tuple(parse_stream_url(u, f"{field}.{i}") for i, u in enumerate(urls))
    seen: set[str] = set()
    for i, t in enumerate(targets):
        if t.url in seen:
            raise InvalidRequest(f"stream URL {t.redacted!r} is given twice", details={"field": f"{field}.{i}"})
        seen.add(t.url)
    return targets
