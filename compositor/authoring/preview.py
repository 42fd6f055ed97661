"""`compositor layouts preview`: a layout with a scripted synthetic room in your own browser.

The preview page holds the layout in a frame of exactly the output size
(scaled down to fit the window, and saying so) and reloads it whenever a
file of the layout changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from watchfiles import awatch

from ..errors import CompositorError
from ..layouts import LayoutRef
from ..pipeline.page_server import PageServer, PageSpec

log = logging.getLogger(__name__)

_WRAPPER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>preview: {name}</title>
<style>
 body {{ margin: 0; background: #2a2a2e; color: #ddd; font: 14px "DejaVu Sans", sans-serif; }}
 header {{ padding: 8px 12px; display: flex; gap: 16px; align-items: baseline; }}
 #size {{ font-weight: bold; color: #fff; }} #status.bad {{ color: #ff6b6b; white-space: pre-wrap; }}
 #holder {{ margin: 0 12px; transform-origin: 0 0; outline: 1px dashed #888; width: {w}px; height: {h}px; }}
 iframe {{ border: 0; width: {w}px; height: {h}px; display: block; }}
</style></head>
<body>
<header><span id="size">{w} × {h} px</span><span id="scale"></span><span id="status">watching {folder}</span></header>
<div id="holder"><iframe id="frame" src="{src}"></iframe></div>
<script>
const W = {w}, H = {h};
const holder = document.getElementById('holder'), frame = document.getElementById('frame');
const status = document.getElementById('status');
function fit() {{
  const s = Math.min(1, (innerWidth - 24) / W, (innerHeight - 48) / H);
  holder.style.transform = `scale(${{s}})`;
  document.getElementById('scale').textContent = s < 1 ? `shown at ${{Math.round(s * 100)}}%` : 'shown at 100%';
}}
addEventListener('resize', fit); fit();
const events = new EventSource('/preview/events');
events.onmessage = (m) => {{
  const e = JSON.parse(m.data);
  status.className = e.error ? 'bad' : '';
  status.textContent = e.error ? e.error : `reloaded (${{e.changed.join(', ')}})`;
  if (!e.error) frame.src = frame.src;
}};
</script></body></html>
"""


class Preview:
    """Serves the preview page and tells it to reload when the layout's folder changes."""

    def __init__(self, spec: PageSpec, reload_layout: Callable[[], LayoutRef], *, frame: tuple[int, int],
                 port: int):
        self.layout = spec.layout
        self._reload_layout = reload_layout
        self.pages = PageServer(port)
        self._spec = spec
        self._frame = frame
        self._clients: set[asyncio.Queue] = set()
        self._watch: asyncio.Task | None = None
        self._page_url = ""

    @property
    def url(self) -> str:
        return f"{self.pages.base_url}/preview"

    async def start(self) -> None:
        await self.pages.start([web.get("/preview", self._wrapper), web.get("/preview/events", self._events)])
        # A broken template still gets a preview: the frame shows the error until the file is fixed.
        self._page_url = self.pages.page_url(self._spec)
        try:
            self.pages.show(self._spec)
        except CompositorError as exc:
            log.warning("%s", exc.message)
        self._watch = asyncio.create_task(self._watch_files())

    async def _wrapper(self, request: web.Request) -> web.Response:
        width, height = self._frame
        html = _WRAPPER.format(name=self.layout.name, w=width, h=height, folder=self.layout.folder,
                               src=self._page_url.removeprefix(self.pages.base_url))
        return web.Response(text=html, content_type="text/html")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: one message per change of the layout's files."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        queue: asyncio.Queue = asyncio.Queue()
        self._clients.add(queue)
        try:
            while (event := await queue.get()) is not None:  # None: the preview is stopping
                await response.write(f"data: {json.dumps(event)}\n\n".encode())
        except ConnectionResetError:
            pass
        finally:
            self._clients.discard(queue)
        return response

    async def _watch_files(self) -> None:
        async for changes in awatch(self.layout.folder, debounce=200, step=50):
            changed = sorted({Path(path).name for _, path in changes})
            event: dict = {"changed": changed}
            try:
                # layout.json may have changed its parameters: take the layout again, then render it.
                self.layout = self._reload_layout()
                self._spec = dataclasses.replace(self._spec, layout=self.layout)
                self.pages.show(self._spec)
            except CompositorError as exc:
                event["error"] = exc.message
            log.info("layout changed: %s%s", ", ".join(changed), f" ({event['error']})" if "error" in event else "")
            for queue in self._clients:
                queue.put_nowait(event)

    async def stop(self) -> None:
        for queue in self._clients:
            queue.put_nowait(None)
        if self._watch:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.pages.stop()
