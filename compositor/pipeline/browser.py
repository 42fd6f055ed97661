"""The browser: Debian's Chromium in a kiosk window on our display, driven by Playwright.

We launch Chromium ourselves (its own session, our process owner) and attach
Playwright over CDP: Playwright's own launcher would put Chromium under its
driver, in our process group, where a terminal's Ctrl-C would kill it before
the encoder has finished the file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from playwright.async_api import Browser as PwBrowser
from playwright.async_api import ConsoleMessage, Page, Playwright, async_playwright

from ..errors import BrowserFailed
from ..preflight import chromium_path
from ..process import ManagedProcess

log = logging.getLogger(__name__)

START_RECORDING = "START_RECORDING"
END_RECORDING = "END_RECORDING"

CHROMIUM_FLAGS = [
    "--kiosk",
    "--window-position=0,0",
    "--no-sandbox",  # we run as whatever user the operator picks, often root in containers
    "--disable-gpu",  # software compositing measured fastest here (DESIGN/ENVIRONMENT)
    "--force-device-scale-factor=1",
    "--hide-scrollbars",
    "--no-first-run",
    "--no-default-browser-check",
    "--noerrdialogs",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-breakpad",
    "--disable-dev-shm-usage",
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-renderer-backgrounding",
    "--disable-features=Translate,MediaRouter,OptimizationHints,DialMediaRouteProvider",
    "--autoplay-policy=no-user-gesture-required",
    "--password-store=basic",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


class Browser:
    """Owns one Chromium (and the Playwright connection to it)."""

    def __init__(self, *, display: str, pulse_server: str | None, width: int, height: int, profile_dir: Path):
        self.display = display
        self.pulse_server = pulse_server
        self.width = width
        self.height = height
        self.profile_dir = profile_dir
        self.signals: asyncio.Queue[str] = asyncio.Queue()
        self.failure: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.page_errors: list[str] = []
        self._proc: ManagedProcess | None = None
        self._pw: Playwright | None = None
        self._browser: PwBrowser | None = None
        self.page: Page | None = None
        self._closing = False

    @property
    def process(self) -> ManagedProcess | None:
        return self._proc

    async def start(self, timeout: float = 20.0) -> None:
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "DISPLAY": self.display, "HOME": str(self.profile_dir)}
        if self.pulse_server:
            env["PULSE_SERVER"] = self.pulse_server
        self._proc = ManagedProcess(
            "chromium",
            [chromium_path(), *CHROMIUM_FLAGS, f"--window-size={self.width},{self.height}",
             f"--user-data-dir={self.profile_dir}", "about:blank"],
            env=env,
        )
        await self._proc.start()
        # Start Playwright's driver while Chromium comes up.
        port, self._pw = await asyncio.gather(self._devtools_port(timeout), self._driver())
        self._browser = await self._pw.chromium.connect_over_cdp(f"http://127.0.0.1:{port}", timeout=timeout * 1000)
        self._browser.on("disconnected", lambda _: self._fail("the browser disconnected"))
        context = self._browser.contexts[0]
        self.page = context.pages[0] if context.pages else await context.new_page()
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda err: self.page_errors.append(str(err)))
        self.page.on("crash", lambda _: self._fail("the page crashed"))
        asyncio.create_task(self._watch_process())

    @staticmethod
    async def _driver() -> Playwright:
        try:
            return await async_playwright().start()
        except Exception as exc:  # the driver is a node binary: a missing library shows up here
            raise BrowserFailed(f"Playwright's driver did not start: {exc}".strip()) from None

    async def _devtools_port(self, timeout: float) -> int:
        # Chromium writes the port it bound to this file once DevTools listens.
        active = self.profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while True:
            try:
                return int(active.read_text().splitlines()[0])
            except (OSError, ValueError, IndexError):
                pass
            if not self._proc.running:
                raise BrowserFailed(f"Chromium did not start: {self._proc.describe_exit()}")
            if time.monotonic() > deadline:
                await self._proc.stop()
                raise BrowserFailed("Chromium did not open its DevTools port in time")
            await asyncio.sleep(0.02)

    async def _watch_process(self) -> None:
        await self._proc.wait()
        self._fail(self._proc.describe_exit())

    def _fail(self, reason: str) -> None:
        if not self._closing and not self.failure.done():
            log.warning("browser failed: %s", reason)
            self.failure.set_result(reason)

    def _on_console(self, msg: ConsoleMessage) -> None:
        text = msg.text
        if text in (START_RECORDING, END_RECORDING):
            self.signals.put_nowait(text)
        elif msg.type == "error":
            self.page_errors.append(text)
        log.debug("page console [%s]: %s", msg.type, text)

    async def open(self, url: str, timeout: float = 20.0) -> None:
        """Navigate to the page and wait for its load event."""
        assert self.page is not None
        try:
            await self.page.goto(url, wait_until="load", timeout=timeout * 1000)
        except Exception as exc:  # Playwright raises its own Error/TimeoutError types
            raise BrowserFailed(f"could not load the page: {str(exc).splitlines()[0]}") from None

    async def stop(self) -> None:
        self._closing = True
        if self._browser is not None:
            try:
                await asyncio.wait_for(self._browser.close(), 2)
            except Exception:  # already gone, or hung: the process stop below settles it
                pass
        if self._pw is not None:
            try:
                await self._pw.stop()
            except Exception:
                pass
        if self._proc is not None:
            await self._proc.stop()
