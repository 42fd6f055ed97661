"""Checks that run before any process starts, so bad input fails fast and clearly."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import aiohttp
from yarl import URL

from ..errors import InvalidRequest, MissingDependency, OutputNotWritable, WebUrlUnreachable
from ..outbound import check_urls
from ..pipeline.browser import chromium_path
from ..plan import EgressConfig, outbound_urls
from .gate import GATE_HEADER, OutboundGate

# program -> Debian package that provides it
MAX_REDIRECTS = 10

PROGRAMS = {"Xvfb": "xvfb", "pulseaudio": "pulseaudio", "ffmpeg": "ffmpeg", "ffprobe": "ffmpeg"}


def check_programs() -> None:
    """Raise MissingDependency naming the first missing program and how to install it."""
    missing = [(prog, pkg) for prog, pkg in PROGRAMS.items() if shutil.which(prog) is None]
    if missing:
        progs = ", ".join(p for p, _ in missing)
        pkgs = " ".join(sorted({pkg for _, pkg in missing}))
        raise MissingDependency(f"missing {progs}: run `sudo apt-get install {pkgs}` (or `make setup`)",
                                details={"programs": [p for p, _ in missing]})
    chromium_path()


def check_output(path: Path) -> None:
    """The output's folder exists (or can be made) and is writable; the path is no folder."""
    if path.is_dir():
        raise OutputNotWritable(f"output {str(path)!r} is a directory; give a file name")
    check_folder(path.parent)
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputNotWritable(f"output {str(path)!r} exists and is not writable")


def check_folder(folder: Path) -> None:
    """The folder exists (or can be made) and is writable."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputNotWritable(f"cannot create output folder {str(folder)!r}: {exc.strerror}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputNotWritable(f"output folder {str(folder)!r} is not writable")


async def check_web_url(url: str, gate: OutboundGate, timeout: float = 10.0) -> None:
    """The page answers (any status below 400), or raise WebUrlUnreachable. Each redirect is checked under the
    gate's policy before it is followed (AddressRefused), and every request goes through the gate."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if not Path(parsed.path).is_file():
            raise WebUrlUnreachable(f"web page {url!r} does not exist")
        return
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            for _ in range(MAX_REDIRECTS):
                async with session.get(url, allow_redirects=False, proxy=gate.url) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                        url = str(resp.url.join(URL(resp.headers["Location"])))
                        await gate.policy.check_url(url, "web_url (a redirect)")
                        continue
                    if GATE_HEADER in resp.headers:
                        raise aiohttp.ClientConnectionError(resp.reason)  # the gate's answer, not the page's
                    if resp.status >= 400:
                        raise WebUrlUnreachable(f"web page {url!r} answered HTTP {resp.status}",
                                                details={"status": resp.status})
                    return
        raise WebUrlUnreachable(f"web page {url!r} redirects more than {MAX_REDIRECTS} times")
    except (aiohttp.ClientError, TimeoutError, OSError):
        # Refused, reset or silent: one message, so the answer tells nothing of which ports are open.
        raise WebUrlUnreachable(f"web page {url!r} is unreachable (no connection or no answer within "
                                f"{timeout:g} s)") from None


def check_media(config: EgressConfig) -> None:
    """Every participant's camera clip that is a local file exists."""
    for p in config.participants:
        if p.video and p.video != "off" and not p.video.startswith(("http://", "https://")):
            if not Path(p.video).expanduser().is_file():
                raise InvalidRequest(f"participant {p.name!r}: video file {p.video!r} does not exist",
                                     details={"field": "room.participants.video"})


async def preflight(config: EgressConfig, gate: OutboundGate) -> None:
    """Every check that needs the machine, run before anything starts (connections through `gate`)."""
    check_programs()
    await check_urls(gate.policy, outbound_urls(config))
    if config.output:
        check_output(config.output)
    for series in (config.segments, config.images):
        if series:
            check_folder(series.directory)
    if config.segments:
        check_output(config.segments.playlist)
    if config.stream and config.stream.ca_file and not Path(config.stream.ca_file).is_file():
        raise InvalidRequest(f"stream.caFile {config.stream.ca_file!r} does not exist",
                             details={"field": "stream.caFile"})
    check_media(config)
    if config.web_url:
        await check_web_url(config.web_url, gate)
