"""The dashboard: a page served at `/` that runs the service through its own API, and what only it needs — the
stream of egress changes, an egress's latest thumbnail, and the layouts with their snapshots.

The page and its static files need no key; every data call does (`Authorization: Bearer`, which the page
keeps in sessionStorage and never puts in a URL). Browsers' EventSource cannot send that header, so the page
reads the event stream with fetch(): it is server-sent events all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from aiohttp import web

from ..errors import Conflict, InvalidRequest, NotFound, TemplateFailed
from ..layouts import CUSTOM_PREFIX, TEMPLATE, builtin_layouts, describe, resolve_layout
from ..paths import DASHBOARD_DIR
from ..request import Model
from ..service.changes import RESYNC, next_batch
from ..service.service import Service
from .models import EgressInfo, LayoutInfo, LayoutList, egress_model

log = logging.getLogger(__name__)

#: the paths the page and its files are served at (no key needed)
PAGE_PATH = "/"
ASSET_PREFIX = "/dashboard/"
EVENTS_PATH = "/v1/events"
# The files the page is made of, by the name it loads them under, with their types.
ASSETS = {"app.js": "text/javascript", "app.css": "text/css", "favicon.svg": "image/svg+xml"}
# Sent while nothing changes, so proxies and the page both know the stream is alive.
KEEPALIVE_S = 15.0
# Layout snapshots: the synthetic room they show and their size (small: they are rendered on demand).
SNAPSHOT_PARTICIPANTS = 4
SNAPSHOT_SIZE = (480, 270)
SNAPSHOT_TIMEOUT_S = 120.0

# The page loads only its own files and talks only to this origin; it may not be framed (clickjacking), and the
# blob: images are the thumbnails and snapshots it fetched with its key.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


class EgressChanged(Model):
    """An egress was created or changed: it as it is now (the JSON of GET /v1/egress/{id})."""

    type: Literal["egress"] = "egress"
    egress: EgressInfo


class EgressDeleted(Model):
    """An egress was deleted."""

    type: Literal["deleted"] = "deleted"
    id: str


class Resync(Model):
    """Changes may have been missed (the stream just opened, or fell behind): read the lists again."""

    type: Literal["resync"] = "resync"


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer of the API says how a browser must treat it (the dashboard is one of its faces)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(DASHBOARD_DIR / "index.html", headers={"Content-Type": "text/html; charset=utf-8",
                                                                   "Cache-Control": "no-cache"})


async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise NotFound(f"no dashboard file {name!r}")
    return web.FileResponse(DASHBOARD_DIR / name, headers={"Content-Type": f"{ASSETS[name]}; charset=utf-8",
                                                           "Cache-Control": "no-cache"})


def _event(model: Model) -> bytes:
    return f"data: {model.model_dump_json(by_alias=True)}\n\n".encode()


async def events(request: web.Request, service: Service) -> web.StreamResponse:
    """Server-sent events: `resync` first, then each egress as it changes (`egress`) or goes (`deleted`)."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    streams = request.app[STREAMS_KEY]
    streams.add(task := asyncio.current_task())
    with service.changes.watch() as queue, _discarded(streams, task), contextlib.suppress(ConnectionResetError):
        # (The page went away: its stream ends at the next write.)
        await response.prepare(request)
        await response.write(_event(Resync()))
        while True:
            try:
                batch = await asyncio.wait_for(next_batch(queue), KEEPALIVE_S)
            except asyncio.TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if batch is RESYNC:
                await response.write(_event(Resync()))
                continue
            for egress_id in batch:
                rec = await service.store.get(egress_id)
                if rec is None:
                    await response.write(_event(EgressDeleted(id=egress_id)))
                else:
                    info = egress_model(rec, await service.queue_position(rec.id))
                    await response.write(_event(EgressChanged(egress=info)))
    return response


@contextlib.contextmanager
def _discarded(streams: set[asyncio.Task], task: asyncio.Task) -> Iterator[None]:
    try:
        yield
    finally:
        streams.discard(task)


async def close_streams(app: web.Application) -> None:
    """The server stops: end the event streams (which never end by themselves) instead of waiting for them."""
    for task in list(app[STREAMS_KEY]):
        task.cancel()


async def preview(request: web.Request, service: Service) -> web.FileResponse:
    """The latest thumbnail of a running egress's images output, on this node's disk."""
    rec = await service.get(request.match_info["id"])
    prefix = (rec.request.get("images") or {}).get("filename_prefix")
    if not prefix:
        raise Conflict("NO_IMAGES_OUTPUT", f"egress {rec.id} has no images output to preview; start it with images")
    if service.cluster and rec.node and rec.node != service.cluster.node.id:
        raise Conflict("ON_ANOTHER_NODE", f"egress {rec.id} runs on node {rec.node}: its thumbnails are on that "
                                          "node's disk; ask that node")
    folder, stem = Path(prefix).parent, Path(prefix).name
    if service.settings.data_dir.resolve() not in folder.resolve().parents:
        raise NotFound(f"the thumbnails of {rec.id} are not on this server's disk")
    images = sorted(folder.glob(f"{glob_escape(stem)}*.jp*g"), key=lambda p: p.stat().st_mtime_ns)
    if not images:
        raise NotFound(f"egress {rec.id} has no thumbnail yet")
    return web.FileResponse(images[-1], headers={"Content-Type": "image/jpeg", "Cache-Control": "no-store"})


def glob_escape(text: str) -> str:
    """`text` as a glob pattern that matches only itself."""
    return re.sub(r"([*?\[])", r"[\1]", text)


async def layouts(request: web.Request, service: Service) -> web.Response:
    """The built-in layouts and those of the server's layouts_dir (as custom/NAME)."""
    found = [LayoutInfo(name=name, builtin=True, description=describe(resolve_layout(name)))
             for name in builtin_layouts()]
    folder = service.settings.layouts_dir
    if folder and folder.is_dir():
        for path in sorted(folder.iterdir()):
            if (path.is_dir() and (path / TEMPLATE).is_file()) or path.name.endswith(".html.j2"):
                name = CUSTOM_PREFIX + path.name.removesuffix(".html.j2")
                try:
                    ref = resolve_layout(name, layouts_dir=folder)
                except InvalidRequest:
                    continue  # a name requests could not give either
                found.append(LayoutInfo(name=name, builtin=False, description=describe(ref)))
    return web.json_response(LayoutList(items=found).model_dump(by_alias=True))


class Snapshots:
    """Layout snapshots rendered on demand through the real pipeline (`compositor layouts snapshot`, its own
    process like any worker), one at a time, kept in the data dir until the layout's template changes."""

    def __init__(self, service: Service):
        self.service = service
        self.folder = service.settings.data_dir / "snapshots"
        self._lock = asyncio.Lock()

    async def get(self, name: str) -> Path:
        """The PNG of layout `name` (a built-in, or custom/NAME)."""
        ref = resolve_layout(name, layouts_dir=self.service.settings.layouts_dir)
        template = ref.folder / ref.template
        out = self.folder / f"{name.replace('/', '--')}-{template.stat().st_mtime_ns}.png"
        async with self._lock:
            if not out.exists():
                await self._render(name if ref.builtin else str(template if ref.template != TEMPLATE
                                                                  else ref.folder), out)
        return out

    async def _render(self, layout: str, out: Path) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = out.with_suffix(".part.png")
        width, height = SNAPSHOT_SIZE
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "compositor", "layouts", "snapshot", layout, "--participants",
            str(SNAPSHOT_PARTICIPANTS), "--width", str(width), "--height", str(height), "--names",
            *(f"--allow-host={host}" for host in self.service.settings.trusted_hosts.entries), "-o", str(partial),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), SNAPSHOT_TIMEOUT_S)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise TemplateFailed(f"the snapshot of {layout} took over {SNAPSHOT_TIMEOUT_S:g} s") from None
        if proc.returncode != 0 or not partial.exists():
            log.warning("snapshot of %s failed: %s", layout, err.decode(errors="replace")[-2000:])
            raise TemplateFailed(f"the snapshot of layout {layout} failed: {err.decode(errors='replace')[-300:]}")
        partial.rename(out)


#: the open event streams' handlers, ended when the server stops
STREAMS_KEY: web.AppKey[set[asyncio.Task]] = web.AppKey("event_streams", set)
SNAPSHOTS_KEY: web.AppKey[Snapshots] = web.AppKey("snapshots", Snapshots)


async def snapshot(request: web.Request, service: Service) -> web.FileResponse:
    """A PNG of a layout showing a synthetic room (rendered the first time it is asked for)."""
    path = await request.app[SNAPSHOTS_KEY].get(request.match_info["name"])
    return web.FileResponse(path, headers={"Content-Type": "image/png", "Cache-Control": "no-cache"})
