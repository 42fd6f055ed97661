"""Object names from LiveKit's filename templates, and the checks every storage key passes.

`{room_name}-{time}` is the default (`{time}` without a room); a trailing `/` puts that default name in
the folder; the extension is corrected for the container. A key is always
relative, without `..`, empty segments or control characters, so it cannot
escape the local storage folder or surprise a bucket's listing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

from ..errors import InvalidRequest

DEFAULT_TEMPLATE = "{room_name}-{time}"
PLACEHOLDERS = ("room_name", "room_id", "egress_id", "time", "utc",
                "publisher_identity", "track_id", "track_type", "track_source")
#: What only the room's server knows (the room's sid; who publishes a track, and what it is).
SERVER_PLACEHOLDERS = ("room_id", "publisher_identity", "track_id", "track_type", "track_source")
#: Extensions a template may carry that name another container: replaced, not kept before ours.
MEDIA_EXTENSIONS = {"mp4", "webm", "ogg", "oga", "opus", "m3u8", "ts", "jpg", "jpeg", "png", "ivf", "mkv",
                    "mov", "m4a", "mp3", "aac", "wav", "flv"}
_SAME = {"jpeg": "jpg"}
MAX_KEY_BYTES = 1024  # S3's, GCS's and Azure's common limit on object names
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BRACES = re.compile(r"\{([^{}]*)\}")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Characters a substituted value may not bring in: path separators, controls, and what
# Windows or shells choke on when the file is downloaded.
_UNSAFE_VALUE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')


@dataclass(frozen=True)
class NameValues:
    """What the placeholders stand for; empty ones render as nothing."""

    room_name: str = ""
    room_id: str = ""
    egress_id: str = ""
    publisher_identity: str = ""
    track_id: str = ""
    track_type: str = ""
    track_source: str = ""


def render_name(template: str | None, values: NameValues, extension: str | None, *,
                now: datetime | None = None, field: str = "filepath") -> str:
    """The storage key for `template` (LiveKit's `filepath` / `filename_prefix`).

    `extension` (`mp4`, `webm`, `ogg`, `m3u8`, `jpg`…) is added when missing
    and replaces another media extension; None leaves the name as is (a
    segment prefix). `{time}` is local time `2006-01-02T150405`, `{utc}` is
    LiveKit's UTC `20060102150405` plus milliseconds. Raises InvalidRequest
    (details.field = `field`) for absolute paths, `..`, control characters,
    unknown placeholders and URLs.
    """
    template = (template or "").strip()
    _check_template(template, field)
    if not template or template.endswith("/"):
        # Without a room (a web egress) the default is the time alone, as LiveKit's.
        template += DEFAULT_TEMPLATE if values.room_name else "{time}"
    now = now or datetime.now(timezone.utc)
    subs = {name: _safe_value(getattr(values, name)) for name in NameValues.__dataclass_fields__}
    subs["time"] = now.astimezone().strftime("%Y-%m-%dT%H%M%S")
    utc = now.astimezone(timezone.utc)
    subs["utc"] = utc.strftime("%Y%m%d%H%M%S") + f"{utc.microsecond // 1000:03d}"
    name = _BRACES.sub(lambda m: subs[m.group(1)], template)
    # An empty value (no room name in a web egress) must not leave an empty segment or a leading /.
    name = "/".join(part for part in name.split("/") if part)
    if extension:
        name = with_extension(name, extension)
    check_key(name, field)
    return name


def with_extension(name: str, extension: str) -> str:
    """`name` ending in `.extension`: a wrong media extension is replaced, an unknown one kept before it."""
    ext = extension.lower().lstrip(".")
    folder, _, base = name.rpartition("/")
    stem, dot, current = base.rpartition(".")
    if dot and stem:
        cur = current.lower()
        if _SAME.get(cur, cur) == _SAME.get(ext, ext):
            return name
        if cur in MEDIA_EXTENSIONS:
            base = stem
    base = f"{base}.{ext}"
    return f"{folder}/{base}" if folder else base


def check_key(key: str, field: str = "filepath") -> str:
    """Refuse a key that is absolute, climbs (`..`), has empty segments or control characters; return it."""
    def bad(reason: str) -> InvalidRequest:
        return InvalidRequest(f"{field} {reason}", details={"field": field})

    if not key:
        raise bad("is empty")
    parts = _segments(key, bad)
    if any(p in ("", ".") for p in parts[:-1]) or parts[-1] in ("", ".", ".."):
        raise bad("has an empty or '.' path segment")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise bad(f"is longer than {MAX_KEY_BYTES} bytes")
    return key


def _segments(path: str, bad) -> list[str]:
    """The path's segments, after refusing control characters, absolute paths and `..`."""
    if _CONTROL.search(path):
        raise bad("contains control characters")
    if path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", path):
        raise bad("must be relative to the storage (no leading / or drive)")
    segments = path.replace("\\", "/").split("/")
    if any(p == ".." for p in segments):
        raise bad("must not contain '..'")
    return segments


def _check_template(template: str, field: str) -> None:
    def bad(reason: str) -> InvalidRequest:
        return InvalidRequest(f"{field} {reason}", details={"field": field})

    if _SCHEME.match(template):
        raise bad("is a path inside the storage, not a URL (give the bucket in the storage config)")
    segments = _segments(template, bad)
    if any(p == "" for p in segments[:-1]):
        raise bad("has an empty path segment ('//')")
    unknown = sorted({m for m in _BRACES.findall(template) if m not in PLACEHOLDERS})
    if unknown:
        raise bad(f"has unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}; "
                  f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    if "{" in _BRACES.sub("", template) or "}" in _BRACES.sub("", template):
        raise bad("has an unmatched { or }")


def _safe_value(value: str) -> str:
    """A substituted value stays inside its path segment: separators and controls become `_`."""
    value = _UNSAFE_VALUE.sub("_", value or "").strip()
    return "_" * len(value) if value in (".", "..") else value
