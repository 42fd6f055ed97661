"""Where a request may make the server connect, and what it may read: one policy for every URL and path.

A request from the HTTP APIs is untrusted: every URL it names (web page,
template, logo, participant video, stream destination, WebSocket, storage
endpoint) may reach public addresses only, judged on the addresses the host
name resolves to, at every connection (redirects too), unless the operator
allows the host (`allowed_hosts`, `--allow-host`). It may name no local file.
A request an operator gives on the command line is trusted: any address, any
local file.

The decision is `OutboundPolicy.resolve`; what enforces it at connect time:
- Chromium, the worker's own HTTP and WebSocket clients and the storage SDKs
  connect through `OutboundGate`, an HTTP proxy that connects to the address it
  checked (so a name cannot resolve one way for the check and another way for
  the connection), redirects and every request of a page included;
- ffmpeg's stream pushers: `policy.pinned_stream_url` (the checked address in
  the URL; rtmps keeps its name for TLS and is checked just before connecting).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from .errors import InvalidRequest, Unsupported

log = logging.getLogger(__name__)

OPTION = "allowed_hosts"  # the service setting; `--allow-host` on the command line
DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443, "rtmp": 1935, "rtmps": 443}
PAGE_SCHEMES = ("http", "https", "ws", "wss")
RESOLVE_TIMEOUT_S = 10.0


class AddressRefused(InvalidRequest):
    """A URL of the request names a host the policy does not let the server reach (or a local file)."""

    code = "ADDRESS_NOT_ALLOWED"


class HostNotFound(AddressRefused):
    """A URL's host name does not resolve (so it cannot be checked, nor reached)."""

    code = "HOST_NOT_FOUND"


@dataclass(frozen=True)
class AllowedHosts:
    """The operator's allow list: `host`, `host:port`, `*.example.com` (any subdomain) or `*` (anything)."""

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
        """These entries too (a room server or storage the operator configured)."""
        return AllowedHosts(self.entries + tuple(e.lower() for e in entries if e))

    def permits_host(self, host: str, port: int) -> bool:
        """True when the operator allows `host` on `port`."""
        host = host.lower().strip("[]")
        for entry in self.entries:
            if entry == "*":
                return True
            name, _, want = entry.partition(":") if entry.count(":") == 1 else (entry, "", "")
            if want and int(want) != port:
                continue
            if name.strip("[]") == host or (name.startswith("*.") and host.endswith(name[1:])):
                return True
        return False

    def permits(self, url: str) -> bool:
        """True when a layout page may request `url` (an http(s) or ws(s) URL of an allowed host)."""
        try:
            host, port = host_port(url)
        except ValueError:
            return False
        return urlsplit(url).scheme in PAGE_SCHEMES and self.permits_host(host, port)


def host_port(url: str) -> tuple[str, int]:
    """The host and port a URL connects to (the scheme's default port if none); ValueError if it has none."""
    parts = urlsplit(url)
    port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    if not parts.hostname or port is None:
        raise ValueError(f"no host or port in {parts.scheme}:// URL")
    return parts.hostname, port


def is_public(address: str) -> bool:
    """True for an address on the public internet: not loopback, private, link-local (cloud metadata),
    shared, multicast or reserved, nor an IPv6 form that carries such an IPv4 address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if not ip.is_global or ip.is_multicast or ip.is_reserved:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
        if ip in ipaddress.IPv6Network("64:ff9b::/96"):  # NAT64
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return all(is_public(str(v4)) for v4 in embedded if v4 is not None)
    return True


@dataclass(frozen=True)
class OutboundPolicy:
    """What a request may reach: `trusted` (the operator's command line) reaches anything and reads local
    files; otherwise only public addresses and the allowed hosts, and no local file."""

    allowed: AllowedHosts = AllowedHosts()
    trusted: bool = True

    def local_file(self, value: str, field: str) -> None:
        """Refuse a local path or file:// URL unless trusted. Says nothing of whether the file exists."""
        if not self.trusted:
            raise AddressRefused(f"{field}: local files cannot be named through the API; give an http(s) URL",
                                 details={"field": field})

    async def resolve(self, host: str, port: int, field: str = "url") -> list[str]:
        """The addresses `host` may be reached at on `port`, or AddressRefused (nothing is connected to)."""
        allowed = self.trusted or self.allowed.permits_host(host, port)
        try:
            infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S)
        except (OSError, TimeoutError, UnicodeError):
            raise HostNotFound(f"{field}: the host {host!r} does not resolve", details={"field": field}) from None
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        if not allowed:
            # Every address must be public: a name that resolves to a public and a private one is refused.
            private = [a for a in addresses if not is_public(a)]
            if private or not addresses:
                log.warning("refused %s: %s resolves to %s, not a public address", field, host, private[0]
                            if private else "nothing")
                raise AddressRefused(
                    f"{field}: the host {host!r} is not a public address, and not in the server's "
                    f"{OPTION}", details={"field": field})
        return addresses

    async def check_url(self, url: str, field: str) -> list[str]:
        """Resolve a URL's host under the policy (its addresses), or raise AddressRefused."""
        try:
            host, port = host_port(url)
        except ValueError:
            raise InvalidRequest(f"{field}: not a URL with a host", details={"field": field}) from None
        return await self.resolve(host, port, field)

    async def pinned_stream_url(self, url: str) -> tuple[str, list[str]]:
        """A stream destination checked now, and the URL to connect to with the extra ffmpeg options that keep
        what the destination sees: rtmp and srt connect to the checked address itself (the tcUrl keeps the
        name); rtmps keeps its name, which TLS verifies."""
        if self.trusted:
            return url, []
        addresses = await self.check_url(url, "stream.urls")
        parts = urlsplit(url)
        if parts.scheme == "rtmps":
            return url, []
        userinfo, port = parts.netloc.rpartition("@")[0], parts.port or DEFAULT_PORTS.get(parts.scheme)
        host = f"[{addresses[0]}]" if ":" in addresses[0] else addresses[0]
        pinned = urlunsplit(parts._replace(netloc=(f"{userinfo}@" if userinfo else "") + f"{host}:{port}"))
        if parts.scheme == "rtmp":
            app = parts.path.rstrip("/").rsplit("/", 1)[0]
            return pinned, ["-rtmp_tcurl", urlunsplit(parts._replace(path=app, query="", fragment=""))]
        return pinned, []


#: A DASH manifest names further URLs that ffmpeg would open itself: an untrusted pull may not name one.
#: (An HLS playlist is read by the ingress worker itself, each URL under the policy: compositor.ingress.hls.)
PLAYLIST_SUFFIXES = (".mpd",)


def refuse_playlist(url: str, field: str) -> None:
    """An untrusted pull may not name a DASH manifest: ffmpeg opens the URLs it names itself, with any http*
    protocol (httpproxy://HOST/ connects to HOST directly), where the policy cannot follow."""
    if urlsplit(url).path.lower().endswith(PLAYLIST_SUFFIXES):
        raise Unsupported(f"{field}: a DASH manifest names further URLs this server cannot hold to its "
                          "outbound policy; pull an HLS playlist, a file (MP4, WebM, MP3, OGG, WAV, FLAC, AAC, FLV, "
                          "MPEG-TS) or an SRT stream", details={"field": field})


def worker_policy(entries: Iterable[str] | None, trusted: bool, env: Mapping[str, str] = os.environ
                  ) -> OutboundPolicy:
    """A worker's policy: the allowed hosts it was given, and the LiveKit server it records from (LIVEKIT_URL,
    its operator's own)."""
    allowed = AllowedHosts.parse(list(entries or ()))
    server = env.get("LIVEKIT_URL", "")
    if server:
        try:
            allowed = allowed.including("{}:{}".format(*host_port(server)))
        except ValueError:
            pass  # said when a room of it is recorded (livekit_room.server_from_env)
    return OutboundPolicy(allowed, trusted=trusted)


async def check_urls(policy: OutboundPolicy, urls: Iterable[tuple[str, str]]) -> None:
    """Every (field, URL) resolved under the policy at once; the first refusal is raised."""
    await asyncio.gather(*(policy.check_url(url, field) for field, url in urls))
