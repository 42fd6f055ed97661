"""Which addresses a layout page may reach besides its own server: the operator's allow list.

Entries are `host`, `host:port`, `*.example.com` (any subdomain) or `*`
(anything). Local files are never reachable.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import InvalidRequest

SCHEMES = ("http", "https", "ws", "wss")
OPTION = "page_allowed_hosts"  # the service setting; `--allow-host` on the command line


@dataclass(frozen=True)
class AllowedHosts:
    entries: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entries: list[str] | tuple[str, ...] | None) -> AllowedHosts:
        """Check the operator's entries, refusing ones that name more than a host (scheme, path)."""
        cleaned = []
        for entry in entries or ():
            entry = entry.strip().lower()
            if not entry:
                continue
            host, _, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
            if "/" in entry or (port and not port.isdigit()) or not host:
                raise InvalidRequest(f"allowed host {entry!r}: give host, host:port, *.domain or *",
                                     details={"field": OPTION})
            cleaned.append(entry)
        return cls(tuple(cleaned))

    def including(self, *entries: str) -> AllowedHosts:
        """These entries too (a room server the worker itself was pointed at)."""
        return AllowedHosts(self.entries + tuple(e.lower() for e in entries))

    def permits(self, url: str) -> bool:
        """True when the page may request `url`."""
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES or not parts.hostname:
            return False
        host = parts.hostname.lower()
        port = parts.port or {"http": 80, "ws": 80, "https": 443, "wss": 443}[parts.scheme]
        for entry in self.entries:
            if entry == "*":
                return True
            name, _, want = entry.partition(":") if entry.count(":") == 1 else (entry, "", "")
            if want and int(want) != port:
                continue
            if name == host or (name.startswith("*.") and host.endswith(name[1:])):
                return True
        return False
