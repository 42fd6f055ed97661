"""The stage a recording plays on: a display, a sound sink, the page server and a browser, in a temp dir.

A cold worker opens one for its job; a warm worker opens one first and waits
for a job of its size. Temp dirs are named after the worker's pid, so the next
worker removes those of killed ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..layouts import DEFAULT_LAYOUT, resolve_layout
from ..paths import WORKDIR_PREFIX
from ..pipeline.audio import AudioSink
from ..pipeline.browser import Browser, remove_chromium_temp
from ..pipeline.display import Display
from ..pipeline.page_server import PageServer, PageSpec
from ..request import Overlays
from .gate import OutboundGate

WARM = "warm"  # a warm worker's temp dir carries this instead of an egress id


def sweep_stale_workdirs() -> None:
    """Remove temp dirs of workers that were killed (SIGKILL leaves them; nothing else does)."""
    tmp = Path(tempfile.gettempdir())
    for path in [*tmp.glob(f"{WORKDIR_PREFIX}*-EG_*"), *tmp.glob(f"{WORKDIR_PREFIX}*-{WARM}-*")]:
        pid = path.name.removeprefix(WORKDIR_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            remove_chromium_temp(path / "profile")
            shutil.rmtree(path, ignore_errors=True)


@dataclass
class Stage:
    """What a recording plays on: a display, a sound sink, the page server and a browser, in a temp dir."""

    workdir: Path
    display: Display
    sink: AudioSink
    pages: PageServer
    browser: Browser

    async def warm_up(self) -> None:
        """Let the browser load a page of ours once (the default layout, an empty synthetic room), so that a
        warm worker's job opens its page sooner."""
        layout = resolve_layout(DEFAULT_LAYOUT)
        await self.browser.warm_up(self.pages.show(PageSpec(layout, Overlays(), (), WARM)))


async def open_stage(stack: contextlib.AsyncExitStack, workdir: Path, width: int, height: int,
                     sample_rate: int, gate: OutboundGate) -> Stage:
    """Start display, sink, page server and browser; `stack` stops them, last first. The browser reaches its
    page server directly and everything else through `gate`."""
    display = Display(width, height)
    sink = AudioSink(workdir / "pulse", sample_rate)
    stack.push_async_callback(display.stop)
    stack.push_async_callback(sink.stop)
    await asyncio.gather(display.start(), sink.start())
    pages = PageServer()
    stack.push_async_callback(pages.stop)
    await pages.start()
    browser = Browser(display=display.name, pulse_server=sink.server, width=width, height=height,
                      profile_dir=workdir / "profile", proxy=gate.url, direct=f"127.0.0.1:{pages.port}")
    stack.push_async_callback(browser.stop)
    await browser.start()
    return Stage(workdir=workdir, display=display, sink=sink, pages=pages, browser=browser)
