"""Serves layout pages to the worker's browser: templates, the page SDK and media.

Bound to 127.0.0.1 on a port the kernel picks, so workers never collide.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from ..layouts import LayoutRef
from ..paths import STATIC_DIR, TEMPLATES_DIR
from ..request import ParticipantSpec


CUSTOM = "/custom"  # where a custom layout's folder is served


def jinja_env(folder: Path | None = None) -> jinja2.Environment:
    """Templates with HTML escaping on; a custom layout's folder first, so it can extend our base."""
    loaders = [jinja2.FileSystemLoader(folder)] if folder else []
    return jinja2.Environment(loader=jinja2.ChoiceLoader([*loaders, jinja2.FileSystemLoader(TEMPLATES_DIR)]),
                              autoescape=True, undefined=jinja2.StrictUndefined)


def render_custom(layout: LayoutRef, theme: str) -> str:
    """A custom layout's page: its template with our context and its declared parameters."""
    template = jinja_env(layout.folder).get_template(layout.template)
    return template.render(static="/static", layout=layout.name, theme=theme, assets=CUSTOM, params=layout.params)


class PageServer:
    """Owns the worker's local HTTP server."""

    def __init__(self):
        self._media: list[Path] = []
        self._env = jinja_env()
        self._runner: web.AppRunner | None = None
        self._custom: LayoutRef | None = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/layouts/{name}", self._layout)
        app.router.add_get("/media/{index}", self._medium)
        app.router.add_get(f"{CUSTOM}/page", self._custom_page)
        app.router.add_get(CUSTOM + "/{path:.+}", self._custom_file)
        app.router.add_static("/static", STATIC_DIR)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def _layout(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            template = self._env.get_template(f"{name}.html.j2")
        except jinja2.TemplateNotFound:
            raise web.HTTPNotFound(text=f"no layout {name!r}") from None
        html = template.render(static="/static", layout=name, theme=request.query.get("theme", "dark"))
        return web.Response(text=html, content_type="text/html")

    async def _custom_page(self, request: web.Request) -> web.Response:
        if self._custom is None:
            raise web.HTTPNotFound(text="no custom layout")
        html = render_custom(self._custom, request.query.get("theme", "dark"))
        return web.Response(text=html, content_type="text/html")

    async def _custom_file(self, request: web.Request) -> web.StreamResponse:
        """A file of the custom layout's folder (its script, CSS, images, fonts), and nothing outside it."""
        if self._custom is None:
            raise web.HTTPNotFound()
        folder = self._custom.folder
        path = (folder / request.match_info["path"]).resolve()
        if not path.is_relative_to(folder) or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

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

    def synthetic_page_url(self, layout: LayoutRef, participants: Sequence[ParticipantSpec], *,
                           room_name: str, sync_markers: bool) -> str:
        """The page URL for a synthetic room, in the LiveKit template shape (url, token, layout)."""
        room = {"name": room_name, "participants": [self._participant_json(p) for p in participants]}
        encoded = base64.urlsafe_b64encode(json.dumps(room, separators=(",", ":")).encode()).decode()
        query = {"url": "synthetic:", "token": "", "layout": layout.name, "theme": layout.theme, "room": encoded}
        if sync_markers:
            query["sync"] = "1"
        if layout.folder:
            self._custom = layout
            return f"{self.base_url}{CUSTOM}/page?{urlencode(query)}"
        return f"{self.base_url}/layouts/{layout.name}?{urlencode(query)}"

    def _participant_json(self, p: ParticipantSpec) -> dict:
        data = p.model_dump(mode="json", exclude_none=True)
        if p.video and p.video != "off" and not p.video.startswith(("http://", "https://")):
            data["video"] = self.media_url(Path(p.video).expanduser().resolve())
        return data

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
