"""Where the display's grabs fall against Chromium's frames.

Chromium (software compositing on Xvfb) draws on its own clock: a frame every 16666 µs (Xvfb reports no
refresh rate, so Chromium takes 60 Hz, in whole µs), each landing on the screen some ms after its tick.
x11grab grabs on a clock of its own, started when it opens the display. Left alone the two beat:

- when a grab falls within a few ms of a landing, scheduling jitter decides whether it shows the new frame
  or the old one: repeated and skipped frames (a run's "distinct frames" dip);
- the picture's delay against the sound is wherever the phase fell: up to a grab period between runs;
- 33333 µs grabs against 2 × 16666 µs frames walk a whole frame in about 20 minutes (measured: 4 ms in 3),
  so every long recording went through the bad phase, and its A/V offset swept a frame.

So the grabs are locked to Chromium's clock: every whole number of its ticks (33332 µs at 30 fps, see
`locked_period_us`), starting half a tick away from where frames land. The start is aimed by holding the
X server (XGrabServer) while ffmpeg goes on from its start gate (pipes.StartGate) to open the display:
x11grab's first request waits, and x11grab starts its clock when that reply comes, right after we let go at
the aimed moment. Where frames land is read from the X
server's DAMAGE events while the page gets ready; a page that starts at once (a room: its frames begin with its
media) gives too few, and is aimed by where the last job of its frame landed (`expected_landing`: the service
keeps it from each job's result).
"""

from __future__ import annotations

import asyncio
import bisect
import cmath
import contextlib
import itertools
import logging
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from Xlib import display as xdisplay
from Xlib import error as xerror
from Xlib.ext import damage

log = logging.getLogger(__name__)

#: Chromium's frame interval on a display that reports no refresh rate: 1/60 s in its whole-µs ticks
#: (measured: frames land every 33331.9 µs per two ticks over 3 minutes)
CHROMIUM_TICK_US = 16666
#: Its frame timer has no time base of its own there, so its ticks fall on multiples of the interval on the
#: monotonic clock (measured: every launch's rAF times within 0.3 ms of them). A frame lands 1.3-4.3 ms after its
#: tick on light pages (a canvas; the grid of four colour tiles from 320x180 to 1080p) and 9.3-10.0 ms in a 720p
#: recording of four cameras. When the page drew too little before the start to measure (a page that starts at
#: once, or a loading page's scattered frames), the grabs are aimed as if frames landed between the two: 4 ms or
#: more from both.
LANDING_AFTER_TICK_S = 0.0055
#: landings spread less than this (their mean vector's length, 0-1) measure a steady phase worth aiming the next
#: job of the frame by (a 720p room of four cameras: 0.52-0.69; a 1080p one, whose frames take more than a tick:
#: 0.2-0.6). Low: even spread landings aim better by their mean than the fixed guess does (a loaded machine's
#: 720p room landed 15-16 ms into the tick, below 0.5 in three runs in a row; the guess then put its grabs 2 ms
#: from them, 32-57 % of its landings near a grab).
STEADY_CONCENTRATION = 0.25
#: damage within this much of the one before belongs to the same frame (a frame's rectangles come together)
SAME_FRAME_S = 0.002
#: landings that measure their phase: this many in the last MEASURED_S, and gathered (their mean vector at least
#: MIN_CONCENTRATION long: a loading page's first frames land all over)
MIN_LANDINGS = 8
MEASURED_S = 1.0
MIN_CONCENTRATION = 0.6
#: from letting the server go to x11grab's clock start: its connection set-up and first replies, behind what
#: Chromium sent meanwhile (0.4 ms at 640x360, 1.9-3.4 ms at 720p)
CONNECT_S = 0.002
#: the longest the server is held for ffmpeg to reach it; Chromium cannot draw meanwhile
MAX_HOLD_S = 3.0
#: a landing this close to a grab may show in it or miss it
NEAR_S = 0.003
#: landings that measure how long a run's frames waited for their grabs (a second of a 30 Hz page)
MIN_WAITS = 30


def locked_period_us(fps: float) -> int | None:
    """The grab period locked to Chromium's clock (a whole number of its ticks) when `fps` is one of its
    divisions (60, 30, 20, 15, ...), else None: 25 or 24 fps cannot keep one phase against a 60 Hz page."""
    ticks = 1e6 / fps / CHROMIUM_TICK_US
    if ticks < 0.99 or abs(ticks - round(ticks)) > 0.01:
        return None
    return round(ticks) * CHROMIUM_TICK_US


class GrabClock:
    """Watches where the page's frames land on a display and starts x11grab's clock between them.

    `start()` begins watching (an X connection of our own); `aligned(pid_of)` wraps the encoder's start;
    `stop()` always closes the connection, and with it any hold of the server.
    """

    def __init__(self, display: str, period_us: int, *, expected_landing: float | None = None,
                 max_hold: float = MAX_HOLD_S):
        """`expected_landing`: where frames are expected to land in the tick (s) when the page's own cannot be
        measured before the start; the service passes where they landed in its last job of the frame (a room's
        frames land later than LANDING_AFTER_TICK_S on a slow machine: 11-13 ms at 720p)."""
        self.display = display
        self.max_hold = max_hold
        self.expected_landing = expected_landing
        self.period = period_us / 1e6
        self.tick = CHROMIUM_TICK_US / 1e6
        self._x: xdisplay.Display | None = None
        self._landings: deque[float] = deque(maxlen=240)  # monotonic times, the latest frames
        self._origin: float | None = None  # monotonic time of the first grab, once known
        self._distances: list[int] = [0] * (int(self.period * 500) + 2)  # landing to nearest grab, whole ms
        self._aimed: float | None = None  # the landing phase the grabs were aimed by
        self._turns = 0j  # the landings' phases since the grabs began, summed as unit vectors
        self._waits = 0.0  # each landing's wait for the next grab since the grabs began, summed (s)
        #: when the server was let go (wall clock), once it was held
        self.released: float | None = None

    async def start(self) -> None:
        """Connect and subscribe to the screen's damage. Never fails the job: without DAMAGE (or X), the grabs
        start unaligned, as x11grab starts them."""
        try:
            self._x = xdisplay.Display(self.display)
            if not self._x.has_extension("DAMAGE"):
                raise RuntimeError("the display has no DAMAGE extension")
            self._x.damage_query_version()
            self._x.screen().root.damage_create(damage.DamageReportRawRectangles)
            self._x.flush()
        except (xerror.DisplayError, xerror.XError, RuntimeError, OSError) as error:
            log.warning("grabs start unaligned: cannot watch %s's frames (%s)", self.display, error)
            await self.stop()
            return
        asyncio.get_running_loop().add_reader(self._x.fileno(), self._read)

    def _read(self) -> None:
        now = time.monotonic()
        x = self._x
        assert x is not None
        try:
            for _ in range(x.pending_events()):
                if x.next_event().type == x.extension_event.DamageNotify:
                    self._landed(now)
        except (xerror.ConnectionClosedError, OSError):
            asyncio.get_running_loop().remove_reader(x.fileno())

    def _landed(self, now: float) -> None:
        if self._landings and now - self._landings[-1] < SAME_FRAME_S:
            return
        self._landings.append(now)
        if self._origin is not None:
            x = (now - self._origin) % self.period
            self._distances[round(min(x, self.period - x) * 1000)] += 1
            self._turns += self._turn(now)
            self._waits += self.period - x

    def _turn(self, t: float) -> complex:
        """Where `t` falls in Chromium's tick, as a unit vector: landings average as vectors (phases wrap)."""
        return cmath.exp(2j * math.pi * (t % self.tick) / self.tick)

    def _phase(self, turns: complex) -> float:
        """The phase (s into the tick) that summed unit vectors point to."""
        return (cmath.phase(turns) / (2 * math.pi) % 1) * self.tick

    def landing_phase(self) -> float:
        """Where frames land within Chromium's tick (s, against the monotonic clock): measured from the page's
        frames so far when there are enough, else `expected_landing`, else LANDING_AFTER_TICK_S. (Measured before
        ffmpeg runs, frames land 1-2 ms sooner than they will: less load.)"""
        recent = [t for t in self._landings if t > time.monotonic() - MEASURED_S]
        if len(recent) >= MIN_LANDINGS:
            turns = sum(map(self._turn, recent))
            if abs(turns) >= MIN_CONCENTRATION * len(recent):
                return self._phase(turns)
        if self.expected_landing is not None and math.isfinite(self.expected_landing):
            return self.expected_landing % self.tick
        return LANDING_AFTER_TICK_S

    @contextlib.asynccontextmanager
    async def aligned(self, pid_of: Callable[[], int | None]) -> AsyncIterator[None]:
        """Hold the server around the block that starts ffmpeg (or lets a waiting one go on); after it, let go
        when the grabs will fall half a tick from the landings. `pid_of` gives ffmpeg's pid once started. The
        server is let go whatever happens (and by the X server itself if this process dies, with its
        connection)."""
        x = self._x
        if x is None:
            yield
            return
        phase = self._aimed = self.landing_phase()
        x.grab_server()
        x.sync()
        pid = pid_of()
        before = _sockets(pid) if pid else set()
        try:
            yield
            pid = pid_of()
            aimed = pid is not None and await self._until_connected(pid, before)
            if aimed:
                await self._until_phase(phase + self.tick / 2 - CONNECT_S)
        finally:
            with contextlib.suppress(xerror.DisplayError, xerror.XError, xerror.ConnectionClosedError, OSError):
                x.ungrab_server()
                x.flush()
            self.released = time.time()
        if aimed:
            # x11grab's clock starts here, and its grabs keep to it (a late one is taken at once, the next on time).
            self._origin = time.monotonic() + CONNECT_S

    async def _until_connected(self, pid: int, before: set[str]) -> bool:
        """Until ffmpeg has opened its connection to the display (a socket not among `before`, those it had when
        the server was taken): from then, its first request waits on the held server."""
        deadline = time.monotonic() + self.max_hold
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists():
                return False
            if _sockets(pid) - before:
                await asyncio.sleep(0.005)  # its connection set-up, sent and waiting
                return True
            await asyncio.sleep(0.002)
        log.warning("ffmpeg did not open the display within %.1f s: its grabs start unaligned", self.max_hold)
        return False

    async def _until_phase(self, phase: float) -> None:
        now = time.monotonic()
        at = now + (phase - now) % self.tick
        if at - now > 0.002:
            await asyncio.sleep(at - now - 0.002)
        while time.monotonic() < at:  # the last 2 ms spun: a sleep wakes up to 1 ms late
            pass

    def steady_landing(self) -> float | None:
        """Where frames landed in the tick since the grabs began (s), when they kept to one phase
        (STEADY_CONCENTRATION): what the next job of this frame on this machine may aim by; else None."""
        total = sum(self._distances)
        if total < MIN_LANDINGS or abs(self._turns) < STEADY_CONCENTRATION * total:
            return None
        return self._phase(self._turns)

    def sound_shift(self) -> float | None:
        """How much later than the encoder put it the sound belongs with this run's pictures (s; negative:
        sooner), or None before MIN_WAITS frames landed.

        A frame is captured by the first grab after it lands, so a picture's time in the file is its landing plus
        its wait for that grab. The encoder's AUDIO_DELAY_S was measured over runs whose waits averaged half a
        grab period: a page whose frames change on every tick of Chromium's (a room of several cameras) lands on
        both sides of each grab. A page that changes at the grab rate (a 30 Hz camera or clip) lands on one of
        Chromium's two tick parities for the whole run, and its frames wait either a quarter or three quarters of
        a period: its pictures are ~8 ms early or late at 30 fps, by a coin flip per run (measured: a 720p room of
        four clips, run means of A/V split by its wait, 12-14 ms against 24-26 ms, 15 ms apart)."""
        total = sum(self._distances)
        if total < MIN_WAITS:
            return None
        return self._waits / total - self.period / 2

    def grabs_began(self, first_capture: float) -> None:
        """The first grab's wall-clock time: from here each landing's distance to its nearest grab is kept (unless
        the grabs' clock is already known from the release)."""
        if self._origin is None:
            self._origin = first_capture + time.monotonic() - time.time()

    def margins(self) -> dict[str, float]:
        """How far frames landed from the grabs since they began: the median (ms) and the share within
        `NEAR_S` (those may show a frame late or early)."""
        total = sum(self._distances)
        if not total:
            return {}
        cumulative = list(itertools.accumulate(self._distances))
        found = {"landing_to_grab_ms": float(bisect.bisect_left(cumulative, total / 2)),
                 "landings_near_grab": round(sum(self._distances[:round(NEAR_S * 1000)]) / total, 4)}
        # Where in Chromium's tick frames landed, how closely (1: all at one phase), and how far from where the aim
        # expected them (later is +).
        steady = self._phase(self._turns)
        found["landing_phase_ms"] = round(steady * 1000, 1)
        found["picture_wait_ms"] = round(1000 * self._waits / total, 2)
        found["landing_concentration"] = round(abs(self._turns) / total, 3)
        if self._aimed is not None:
            shift = (steady - self._aimed + self.tick / 2) % self.tick - self.tick / 2
            found["landing_shift_ms"] = round(shift * 1000, 1)
            found["landing_aimed_ms"] = round(self._aimed * 1000, 1)
        return found

    async def stop(self) -> None:
        """Close our connection (this also ends a hold of the server)."""
        x, self._x = self._x, None
        if x is None:
            return
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(x.fileno())
        with contextlib.suppress(xerror.DisplayError, xerror.ConnectionClosedError, OSError):
            x.close()


def _sockets(pid: int) -> set[str]:
    """The sockets a process holds (by inode)."""
    found = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:"):
                    found.add(target)
    return found
