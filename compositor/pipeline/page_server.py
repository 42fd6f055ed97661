"""Serves layout pages to the worker's browser: the page, the layouts' files, the page SDK and media.

Bound to 127.0.0.1 on a port the kernel picks (or the one asked for, for
previews), so workers never collide.
"""

from __future__ import annotations

import base64
import json
import re
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

import jinja2
from aiohttp import web

from ..errors import TemplateFailed
from ..layouts import LayoutRef
from ..paths import LAYOUTS_DIR, LIVEKIT_CLIENT, STATIC_DIR, TEMPLATES_DIR
from ..request import AudioSpec, IdleStop, Overlays, ParticipantFilter, ParticipantSpec

PAGE = "/page"
LIVEKIT_CLIENT_URL = "/vendor/livekit-client.mjs"  # livekit-client's ESM bundle, from npm
SYNTHETIC = "synthetic:"  # the room URL of the scripted room


@dataclass(frozen=True)
class PageSpec:
    """What the page shows: a layout, with its overlays, for a synthetic room or a LiveKit one."""

    layout: LayoutRef
    overlays: Overlays
    participants: tuple[ParticipantSpec, ...]
    room_name: str
    sync_markers: bool = False
    #: a LiveKit server's ws(s) URL and the recorder's token ("synthetic:": the scripted room)
    room_url: str = SYNTHETIC
    token: str = field(default="", repr=False)
    #: the page's query for a participant or track egress (identity, share, tracks)
    focus: dict[str, str] = field(default_factory=dict)
    #: which voice plays in which channel (None: every voice in both)
    routing: AudioSpec | None = None
    #: when the page ends the recording for an idle room (None: never)
    idle_stop: IdleStop | None = None
    #: who is seen and heard (None: everyone)
    participant_filter: ParticipantFilter | None = None
    #: the page reports joins, leaves and speaking (ROOM_EVENT) for the participants and speakers sidecars
    sidecars: bool = False


def render_page(layout: LayoutRef, overlays: dict, live: bool = False) -> str:
    """The layout's page: its template with our context, or TemplateFailed naming the file and line. `live`: the
    page joins a LiveKit room (its client is among the modules it asks for up front)."""
    env = jinja2.Environment(loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(layout.folder),
                                                         jinja2.FileSystemLoader(TEMPLATES_DIR)]),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    try:
        return env.get_template(layout.template).render(
            static="/static", assets=layout.assets, layout=layout.name, theme=layout.theme, script=layout.script,
            params=layout.params, overlays=overlays, modules=page_modules(layout, live))
    except jinja2.TemplateSyntaxError as exc:
        where = f"{_shown(exc.filename or exc.name or layout.template, layout)}:{exc.lineno}"
        raise TemplateFailed(f"{where}: {exc.message}", details={"template": where}) from None
    except jinja2.TemplateError as exc:
        where = _template_line(exc, layout)
        raise TemplateFailed(f"{where}: {exc.message or exc}" if where else str(exc),
                             details={"template": where} if where else {}) from None


#: the page's first module: it imports the rest of the SDK
BOOT_MODULE = "/static/sdk/boot.js"
#: the LiveKit room's module (boot imports it when the page joins one)
LIVEKIT_MODULE = "/static/sdk/livekit.js"
#: a module's static imports (`import ... from "url"`, `import "url"`); a dynamic import() is left to the page
_IMPORT = re.compile(r"""^\s*import\s+(?:[^'";]*?\s+from\s+)?['"]([^'"]+)['"]""", re.MULTILINE)
#: more than any page of ours imports; past it, the page finds the rest itself
MAX_MODULES = 64
#: how much of a module is read for its imports (they come first; a custom layout's folder may hold anything)
MAX_MODULE_CHARS = 256 * 1024


def page_modules(layout: LayoutRef, live: bool = False) -> list[str]:
    """Every module the page imports before it can start (the SDK's and the layout's script's, followed through
    their static imports; with `live`, the LiveKit room's), for the page to ask for all at once (modulepreload).
    Found one import at a time, they took a round trip per level: about 100 ms of every start. Only files this
    server has are named: a preload that fails would fail the page."""
    found: list[str] = []
    pending = [BOOT_MODULE, *([layout.script] if layout.script else []), *([LIVEKIT_MODULE] if live else [])]
    while pending and len(found) < MAX_MODULES:
        url = pending.pop(0)
        if url in found:
            continue
        if url == LIVEKIT_CLIENT_URL:  # a bundle: nothing more to follow
            if LIVEKIT_CLIENT.is_file():
                found.append(url)
            continue
        path = _module_file(url, layout)
        if path is None:
            continue
        found.append(url)
        with path.open(errors="replace") as module:
            text = module.read(MAX_MODULE_CHARS)
        for target in _IMPORT.findall(text):
            if not urlsplit(target).scheme:
                pending.append(urljoin(url, target))
    return found


def _module_file(url: str, layout: LayoutRef) -> Path | None:
    """The file the page server answers `url` with (the routes below), or None: another server's, or none."""
    parts = url.split("/", 3)
    if len(parts) < 3 or parts[0]:
        return None
    try:
        if parts[1] == "static":
            return _inside(STATIC_DIR, "/".join(parts[2:]))
        if parts[1] == "custom" and not layout.builtin:
            return _inside(layout.folder, "/".join(parts[2:]))
        if parts[1] == "layouts" and len(parts) == 4:
            return _inside(_builtin_folder(parts[2]), parts[3])
    except web.HTTPNotFound:
        pass
    return None


def _template_line(exc: Exception, layout: LayoutRef) -> str:
    """file:line of the template frame that raised (Jinja maps its frames to template lines)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(".j2")]
    return f"{_shown(frames[-1].filename, layout)}:{frames[-1].lineno}" if frames else ""


def _shown(path: str, layout: LayoutRef) -> str:
    p = Path(path)
    for root in (layout.folder, TEMPLATES_DIR):
        if p.is_relative_to(root):
            return str(p.relative_to(root))
    return p.name


def _builtin_folder(name: str) -> Path:
    """A shipped layout's folder, by the name in its URL (never a hidden or private one)."""
    if name.startswith((".", "_")) or "/" in name:
        raise web.HTTPNotFound()
    return LAYOUTS_DIR / name


def _inside(folder: Path, relative: str) -> Path:
    """A file under `folder`, and nothing outside it (no `..`, no symlink out)."""
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()) or not path.is_file():
        raise web.HTTPNotFound()
    return path


class PageServer:
    """Owns the worker's local HTTP server."""

    def __init__(self, port: int = 0):
        self._media: list[Path] = []
        self._runner: web.AppRunner | None = None
        self.spec: PageSpec | None = None
        #: the shown page, rendered once by `show` (or why it could not be)
        self._html: str | None = None
        self._failure: TemplateFailed | None = None
        self._port = port
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, extra_routes: Sequence[web.RouteDef] = ()) -> None:
        app = web.Application()
        app.router.add_get(PAGE, self._page)
        app.router.add_get("/layouts/{name}/{path:.+}", self._builtin_file)
        app.router.add_get("/custom/{path:.+}", self._custom_file)
        app.router.add_get("/media/{index}", self._medium)
        app.router.add_get(LIVEKIT_CLIENT_URL, self._livekit_client)
        app.router.add_static("/static", STATIC_DIR)
        app.add_routes(extra_routes)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def show(self, spec: PageSpec) -> str:
        """Serve `spec` from now on and return its URL; rendered here, once, so a broken template raises
        TemplateFailed before any browser loads it (the page then answers with the error)."""
        self.spec, self._html, self._failure = spec, None, None
        overlays = spec.overlays.model_dump()
        if spec.overlays.logo and not spec.overlays.logo_is_url:
            overlays["logo"] = self.media_url(Path(spec.overlays.logo))
        url = self.page_url(spec)
        try:
            self._html = render_page(spec.layout, overlays, live=spec.room_url != SYNTHETIC)
        except TemplateFailed as exc:
            self._failure = exc
            raise
        return url

    async def _page(self, request: web.Request) -> web.Response:
        if self._failure is not None:
            # The browser shows it (and reports the 500); whoever showed the page has the error already.
            raise web.HTTPInternalServerError(text=f"TEMPLATE_ERROR {self._failure.message}")
        if self._html is None:
            raise web.HTTPNotFound(text="no page yet")
        return web.Response(text=self._html, content_type="text/html")

    async def _builtin_file(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(_inside(_builtin_folder(request.match_info["name"]), request.match_info["path"]))

    async def _custom_file(self, request: web.Request) -> web.StreamResponse:
        """A file of the custom layout's folder (its script, CSS, images, fonts), and nothing outside it."""
        if self.spec is None or self.spec.layout.builtin:
            raise web.HTTPNotFound()
        return web.FileResponse(_inside(self.spec.layout.folder, request.match_info["path"]))

    async def _livekit_client(self, request: web.Request) -> web.StreamResponse:
        if not LIVEKIT_CLIENT.is_file():
            raise web.HTTPNotFound(text="livekit-client is not installed: run `make setup` (npm ci)")
        return web.FileResponse(LIVEKIT_CLIENT, headers={"Content-Type": "text/javascript"})

    async def _medium(self, request: web.Request) -> web.StreamResponse:
        try:
            path = self._media[int(request.match_info["index"])]
        except (ValueError, IndexError):
            raise web.HTTPNotFound() from None
        return web.FileResponse(path)

    def media_url(self, path: Path) -> str:
        if path not in self._media:
            self._media.append(path)
        return f"/media/{self._media.index(path)}"

    def page_url(self, spec: PageSpec) -> str:
        """The page's URL, in the LiveKit template shape (url, token, layout)."""
        query = {"url": spec.room_url, "token": spec.token, "layout": spec.layout.name, "theme": spec.layout.theme}
        if spec.room_url == SYNTHETIC:
            room = {"name": spec.room_name, "participants": [self._participant_json(p) for p in spec.participants]}
            query["room"] = base64.urlsafe_b64encode(json.dumps(room, separators=(",", ":")).encode()).decode()
        if spec.sync_markers:
            query["sync"] = "1"
        query.update(spec.focus)
        if spec.routing:
            query["audio"] = spec.routing.model_dump_json(by_alias=True, exclude_none=True)
        if spec.idle_stop:
            query["idle"] = spec.idle_stop.model_dump_json(by_alias=True, exclude_none=True)
        if spec.participant_filter:
            # JSON in the query, read by the page's script only: identities never become markup.
            query["participants"] = spec.participant_filter.model_dump_json(exclude_none=True)
        if spec.sidecars:
            query["sidecars"] = "1"
        return f"{self.base_url}{PAGE}?{urlencode(query)}"

    def _participant_json(self, p: ParticipantSpec) -> dict:
        data = p.model_dump(mode="json", exclude_none=True)
        if p.video and p.video != "off" and not p.video.startswith(("http://", "https://")):
            data["video"] = self.media_url(Path(p.video).expanduser().resolve())
        return data

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
