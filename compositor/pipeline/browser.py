"""The browser: Debian's Chromium in a kiosk window on our display, driven by Playwright.

We launch Chromium ourselves (its own session, our process owner) and attach
Playwright over CDP: Playwright's own launcher would put Chromium under its
driver, in our process group, where a terminal's Ctrl-C would kill it before
the encoder has finished the file. DevTools runs over a pipe (see devtools.py),
never on a port, and everything the pages reach but their own server goes
through the worker's outbound gate (the policy in outbound.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from playwright.async_api import Browser as PwBrowser
from playwright.async_api import ConsoleMessage, Page, Playwright, Request, Response, Route, async_playwright

from ..errors import BrowserFailed, MissingDependency
from ..outbound import OPTION, AllowedHosts
from ..process import ManagedProcess
from .devtools import DevToolsPipe
from .sidecars import ROOM_EVENT, RoomLog

log = logging.getLogger(__name__)

CHROMIUM_PATHS = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")
MIN_WINDOW_WIDTH = 500  # Chromium's narrowest window (measured with --kiosk on Xvfb)
START_RECORDING = "START_RECORDING"
END_RECORDING = "END_RECORDING"
#: our layout page's "the room is idle" signal: IDLE_STOP {"condition": ..., "reason": ...}
IDLE_STOP = "IDLE_STOP"
#: how many of the page's problems a browser keeps (the latest)
MAX_PROBLEMS = 100

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
    "--remote-debugging-pipe",
    # Through a proxy, HTTP/3 would go around it; without one QUIC is of no use to a recorder.
    "--disable-quic",
]
# What of the worker's environment Chromium sees: never its keys (LIVEKIT_API_SECRET, storage credentials).
CHROMIUM_ENV = ("PATH", "LANG", "LANGUAGE", "LC_ALL", "TZ", "FONTCONFIG_FILE", "FONTCONFIG_PATH", "TMPDIR")


def chromium_path() -> str:
    """The Chromium binary to drive (the real one, not Debian's shell wrapper)."""
    override = os.environ.get("COMPOSITOR_CHROMIUM")
    for path in ((override,) if override else CHROMIUM_PATHS):
        if path and os.access(path, os.X_OK):
            return path
    raise MissingDependency(
        "Chromium is not installed: run `sudo apt-get install chromium` (or `make setup`), "
        "or set COMPOSITOR_CHROMIUM to its binary",
        details={"program": "chromium", "package": "chromium"})


def remove_chromium_temp(profile_dir: Path) -> None:
    """Remove the folder Chromium made in the system's temp folder for its singleton socket (linked from the
    profile as SingletonSocket): Chromium removes it only on an orderly exit, and ours are stopped, so each job
    would leave one behind. (Pointing Chromium's TMPDIR into the profile instead can make the socket's path
    longer than a Unix socket's limit.)"""
    with contextlib.suppress(OSError):
        folder = Path(os.readlink(profile_dir / "SingletonSocket")).parent
        if folder.name.startswith("org.chromium.Chromium."):
            shutil.rmtree(folder, ignore_errors=True)


# Kinds of page problem: an uncaught exception, a request that failed or was
# answered with an error, a request the allow list refused, console.error().
ERROR, REQUEST, BLOCKED, CONSOLE = "error", "request", "blocked", "console"


@dataclass(frozen=True)
class PageProblem:
    kind: str
    message: str


@dataclass(frozen=True)
class IdleSignal:
    """Our layout page found the room idle: which condition (empty, no_publisher, all_muted), and why in words."""

    condition: str
    reason: str


class Browser:
    """Owns one Chromium (and the Playwright connection to it)."""

    def __init__(self, *, display: str, pulse_server: str | None, width: int, height: int, profile_dir: Path,
                 proxy: str, direct: str):
        """`proxy`: the outbound gate's URL, for everything but `direct` (host:port of the page server)."""
        self.display = display
        self.pulse_server = pulse_server
        self.width = width
        self.height = height
        self.profile_dir = profile_dir
        self.proxy = proxy
        self.direct = direct
        self.signals: asyncio.Queue[str] = asyncio.Queue()
        self.failure: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        #: set once the layout page says the room is idle
        self.idle: asyncio.Future[IdleSignal] = asyncio.get_running_loop().create_future()
        #: the page's latest problems (a page that logs an error every frame must not fill the worker's memory)
        self.problems: deque[PageProblem] = deque(maxlen=MAX_PROBLEMS)
        #: where our layout page's room events (ROOM_EVENT) go, when the recording has sidecars (else ignored)
        self.room_log: RoomLog | None = None
        self._waiters: list[tuple[tuple[str, ...], asyncio.Future]] = []
        self._origin = ""
        self._proc: ManagedProcess | None = None
        self._devtools: DevToolsPipe | None = None
        self._pw: Playwright | None = None
        self._browser: PwBrowser | None = None
        self.page: Page | None = None
        self._closing = False
        self._releasing: set[asyncio.Task] = set()

    @property
    def process(self) -> ManagedProcess | None:
        return self._proc

    async def start(self, timeout: float = 20.0) -> None:
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k in CHROMIUM_ENV or k.startswith("LC_")}
        env.update(DISPLAY=self.display, HOME=str(self.profile_dir))
        if self.pulse_server:
            env["PULSE_SERVER"] = self.pulse_server
        self._devtools = DevToolsPipe()
        endpoint = await self._devtools.start()
        self._proc = ManagedProcess(
            "chromium",
            [chromium_path(), *CHROMIUM_FLAGS, f"--window-size={self.width},{self.height}",
             f"--user-data-dir={self.profile_dir}", f"--proxy-server={self.proxy}",
             # Loopback too goes through the gate (Chromium sends it direct by default), but our own page server.
             f"--proxy-bypass-list=<-loopback>;{self.direct}", "about:blank"],
            env=env, fds=self._devtools.child_fds,
        )
        # Playwright's driver starts while Chromium comes up.
        driver, started = await asyncio.gather(self._driver(), self._proc.start(), return_exceptions=True)
        if isinstance(driver, asyncio.CancelledError):
            # Not our cancellation (that raises out of gather): Playwright cancels its start when the driver goes.
            driver = BrowserFailed("Playwright's driver did not start: it went away while starting")
        if isinstance(driver, BaseException):
            raise driver
        self._pw = driver  # stop() stops it from here on, whatever comes next
        if isinstance(started, BaseException):
            raise started
        self._devtools.child_started()
        try:
            self._browser = await self._pw.chromium.connect_over_cdp(endpoint, timeout=timeout * 1000)
        except Exception as exc:  # Playwright's own error types
            if not self._proc.running:
                raise BrowserFailed(f"Chromium did not start: {self._proc.describe_exit()}") from None
            raise BrowserFailed(f"could not attach to Chromium: {str(exc).splitlines()[0]}") from None
        self._browser.on("disconnected", lambda _: self._fail("the browser disconnected"))
        context = self._browser.contexts[0]
        self.page = context.pages[0] if context.pages else await context.new_page()
        if self.width < MIN_WINDOW_WIDTH:
            # Chromium keeps its window at least this wide: the page would be laid out wider than the frame.
            await self.page.set_viewport_size({"width": self.width, "height": self.height})
        self.page.on("console", self._on_console)
        self.page.on("pageerror", self._on_page_error)
        self.page.on("requestfailed", self._on_request_failed)
        self.page.on("response", self._on_response)
        self.page.on("crash", lambda _: self._fail("the page crashed"))
        asyncio.create_task(self._watch_process())

    @staticmethod
    async def _driver() -> Playwright:
        try:
            return await async_playwright().start()
        except Exception as exc:  # the driver is a node binary: a missing library shows up here
            raise BrowserFailed(f"Playwright's driver did not start: {exc}".strip()) from None

    async def _watch_process(self) -> None:
        await self._proc.wait()
        self._fail(self._proc.describe_exit())

    def _fail(self, reason: str) -> None:
        if not self._closing and not self.failure.done():
            log.warning("browser failed: %s", reason)
            self.failure.set_result(reason)

    def _on_console(self, msg: ConsoleMessage) -> None:
        text = msg.text
        self._release(msg)
        if text in (START_RECORDING, END_RECORDING):
            self.signals.put_nowait(text)
        elif text.startswith(IDLE_STOP + " ") and not self.idle.done():
            self.idle.set_result(_idle_signal(text.removeprefix(IDLE_STOP + " ")))
        elif text.startswith(ROOM_EVENT + " "):
            if self.room_log is not None:
                self.room_log.add(text.removeprefix(ROOM_EVENT + " "))
            return  # one per join, leave and word: not worth a debug line each
        elif msg.type == "error" and not text.startswith("Failed to load resource"):  # reported as REQUEST
            self._problem(CONSOLE, text)
        log.debug("page console [%s]: %s", msg.type, text)

    def _release(self, msg: ConsoleMessage) -> None:
        """Let go of a console message's arguments. Playwright keeps a handle to each of them (in Chromium, its
        driver and here) until it is disposed: a page that logs once a second grew the worker by ~15 MB an hour."""
        handles = msg.args  # each read wraps them anew
        if handles:
            task = asyncio.ensure_future(self._dispose(handles))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    @staticmethod
    async def _dispose(handles) -> None:
        for handle in handles:
            try:
                await handle.dispose()
            except Exception:  # the page or the browser went away first: nothing is held any more
                return

    def _on_page_error(self, err) -> None:
        # The first stack frame says where: "at layout (http://127.0.0.1:PORT/custom/layout.js:7:3)".
        frames = [line.strip() for line in (err.stack or "").splitlines() if line.strip().startswith("at ")]
        where = f" ({frames[0].removeprefix('at ')})" if frames else ""
        self._problem(ERROR, self._local(f"{err.name or 'Error'}: {err.message}{where}"))

    def _on_request_failed(self, request: Request) -> None:
        failure = request.failure or ""
        # Aborts are the page's own doing (a video seeking); refusals were reported by the route.
        if "ERR_ABORTED" not in failure and "ERR_BLOCKED_BY_CLIENT" not in failure:
            self._problem(REQUEST, f"{request.method} {self._local(request.url)} failed: {failure}")

    def _on_response(self, response: Response) -> None:
        if response.status >= 400:
            self._problem(REQUEST, f"{response.request.method} {self._local(response.url)} answered "
                                   f"{response.status} {response.status_text}".rstrip())

    def _local(self, text: str) -> str:
        return text.replace(self._origin, "") if self._origin else text

    def _problem(self, kind: str, message: str) -> None:
        log.debug("page problem [%s]: %s", kind, message)
        problem = PageProblem(kind, message)
        self.problems.append(problem)
        for kinds, waiter in self._waiters:
            if kind in kinds and not waiter.done():
                waiter.set_result(problem)

    async def until_signal(self, wanted: str) -> None:
        """Wait until the page logs `wanted` (START_RECORDING or END_RECORDING); other signals pass."""
        while await self.signals.get() != wanted:
            pass

    async def next_problem(self, kinds: tuple[str, ...], *, past: bool = False) -> PageProblem:
        """The next problem of one of `kinds` (or one already seen, with `past`)."""
        if past:
            seen = next((p for p in self.problems if p.kind in kinds), None)
            if seen:
                return seen
        waiter = asyncio.get_running_loop().create_future()
        entry = (kinds, waiter)
        self._waiters.append(entry)
        try:
            return await waiter
        finally:
            self._waiters.remove(entry)

    async def restrict(self, origin: str, allowed: AllowedHosts) -> None:
        """Let the page reach only `origin` (our page server) and the operator's allowed hosts."""
        self._origin = origin

        async def guard(route: Route, request: Request) -> None:
            url = request.url
            if url.startswith(origin + "/") or allowed.permits(url):
                await route.fallback()
                return
            self._problem(BLOCKED, f"{request.method} {url.split('?')[0]} refused: the page may reach only its own "
                                   f"server and the hosts in {OPTION} (--allow-host)")
            await route.abort("blockedbyclient")

        # Only what is not the page server's comes here: Playwright matches a pattern in its driver, so the page's
        # own files load without a round trip through this process each (they loaded one after another, 10-20 ms
        # apart: measured ~90 ms of the page's start).
        await self.page.route(re.compile(f"^(?!{re.escape(origin)}/)"), guard)

    async def open(self, url: str, timeout: float = 20.0) -> None:
        """Navigate to the page and wait for its load event."""
        assert self.page is not None
        try:
            await self.page.goto(url, wait_until="load", timeout=timeout * 1000)
        except Exception as exc:  # Playwright raises its own Error/TimeoutError types
            raise BrowserFailed(f"could not load the page: {str(exc).splitlines()[0]}") from None

    async def warm_up(self, url: str, timeout: float = 20.0) -> None:
        """Load `url` (one of our own pages) once and leave it for a blank page, before any job: Chromium then has
        its renderer, compiled scripts and caches ready, and a job's page opens ~100 ms sooner (measured: warm
        starts 0.57 -> 0.46 s). What the page said (its signals, its problems) is forgotten: it was no job's."""
        await self.open(url, timeout)
        await self.open("about:blank", timeout)
        while not self.signals.empty():
            self.signals.get_nowait()
        self.problems.clear()

    async def evaluate(self, script: str, arg=None, timeout: float = 5.0):
        """Run `script` (a function of `arg`) in the page; a page that does not answer raises BrowserFailed."""
        assert self.page is not None
        try:
            return await asyncio.wait_for(self.page.evaluate(script, arg), timeout)
        except TimeoutError:
            raise BrowserFailed(f"the page did not answer within {timeout:g} s") from None
        except Exception as exc:  # Playwright's Error: the page threw
            raise BrowserFailed(f"the page refused: {str(exc).splitlines()[0]}") from None

    async def stop(self) -> None:
        self._closing = True
        for task in self._releasing:  # whatever they still hold goes with the browser
            task.cancel()
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
            remove_chromium_temp(self.profile_dir)
        if self._devtools is not None:
            await self._devtools.stop()


def _idle_signal(text: str) -> IdleSignal:
    """The IDLE_STOP signal's JSON; a malformed one still ends the recording, saying so."""
    try:
        data = json.loads(text)
        return IdleSignal(condition=str(data["condition"]), reason=str(data["reason"]))
    except (ValueError, KeyError, TypeError):
        return IdleSignal(condition="unknown", reason=f"the page said the room is idle ({text[:200]})")
