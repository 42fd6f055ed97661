"""Layout authoring tools: check a layout for the faults that would spoil a recording, and snapshot it.

Both render through the real stage (Xvfb, Chromium, the page server), so
what they report is what a recording would show.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import EncoderFailed, TemplateFailed
from ..events import EventSink
from ..layouts import LayoutRef
from ..outbound import OutboundPolicy
from ..pipeline.browser import ERROR, START_RECORDING, Browser
from ..pipeline.page_server import PageSpec
from ..plan import DEFAULT_SAMPLE_RATE, resolve
from ..process import ManagedProcess
from ..request import FileOutput, Overlays, ParticipantSpec, RecordRequest
from ..worker.gate import OutboundGate
from ..worker.recorder import WORKDIR_PREFIX, Recorder, open_stage

SETTLE_S = 1.0  # after START_RECORDING: long enough for the first room events to re-flow the layout

# Visible elements whose box leaves the frame, outermost only; an element
# clipped by an ancestor that is itself inside the frame does not count.
_OUTSIDE_JS = """
([W, H]) => {
  const skip = new Set(['SCRIPT', 'STYLE', 'LINK', 'META', 'TITLE', 'HEAD', 'BR']);
  const inside = (r) => r.left >= -1 && r.top >= -1 && r.right <= W + 1 && r.bottom <= H + 1;
  const name = (el) => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '')
    + [...el.classList].slice(0, 3).map((c) => '.' + c).join('');
  const found = [];
  for (const el of document.body.querySelectorAll('*')) {
    if (skip.has(el.tagName) || found.some((f) => f.el.contains(el))) continue;
    const style = getComputedStyle(el);
    if (style.display === 'none' || style.visibility === 'hidden') continue;
    const r = el.getBoundingClientRect();
    if ((r.width === 0 && r.height === 0) || inside(r)) continue;
    let clipped = false;
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      if (getComputedStyle(a).overflow !== 'visible' && inside(a.getBoundingClientRect())) { clipped = true; break; }
    }
    if (!clipped) found.push({ el, what: name(el), x: Math.round(r.left), y: Math.round(r.top),
                               w: Math.round(r.width), h: Math.round(r.height) });
  }
  return found.map(({ el, ...rest }) => rest);
}
"""


@dataclass
class CheckReport:
    """What `layouts check` found: problems (empty when the layout is fine) and what it saw."""

    layout: str
    width: int
    height: int
    problems: list[str] = field(default_factory=list)
    started_after_s: float | None = None
    tiles: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


async def check_layout(layout: LayoutRef, participants: tuple[ParticipantSpec, ...], overlays: Overlays, *,
                       width: int, height: int, timeout: float = 10.0,
                       policy: OutboundPolicy = OutboundPolicy()) -> CheckReport:
    """Render the layout with a synthetic room and report every fault a recording would hit."""
    report = CheckReport(layout.name, width, height)
    workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}check-"))
    try:
        async with contextlib.AsyncExitStack() as stack:
            gate = await stack.enter_async_context(OutboundGate(policy))
            stage = await open_stage(stack, workdir, width, height, DEFAULT_SAMPLE_RATE, gate)
            try:
                url = stage.pages.show(PageSpec(layout, overlays, participants, "check"))
            except TemplateFailed as exc:
                report.problems.append(f"template: {exc.message}")
                return report
            browser = stage.browser
            await browser.restrict(stage.pages.base_url, policy.allowed)
            opened = time.monotonic()
            await browser.open(url, timeout)
            if await _started(browser, timeout):
                report.started_after_s = round(time.monotonic() - opened, 2)
            elif not any(p.kind == ERROR for p in browser.problems):
                report.problems.append(f"the page never logged {START_RECORDING} (within {timeout:g} s): pages "
                                       "built on the base template do once their first frame is drawn; a page of "
                                       "your own must call egress.startRecording()")
            await asyncio.sleep(SETTLE_S)
            # An error thrown on every render is one problem, however often it was seen.
            report.problems += list(dict.fromkeys(f"{p.kind}: {p.message}" for p in browser.problems))
            for el in await browser.page.evaluate(_OUTSIDE_JS, [width, height]):
                report.problems.append(f"outside the frame: {el['what']} at {el['x']},{el['y']} size "
                                       f"{el['w']}x{el['h']} (frame {width}x{height})")
            report.tiles = await browser.page.evaluate("document.querySelectorAll('#stage > .tile').length")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


async def _started(browser: Browser, timeout: float) -> bool:
    """True once the page logs START_RECORDING; False on timeout or on an uncaught error (it will not start)."""
    started = asyncio.create_task(browser.until_signal(START_RECORDING))
    broke = asyncio.create_task(browser.next_problem((ERROR,), past=True))
    done, _ = await asyncio.wait([started, broke], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for task in (started, broke):
        task.cancel()
    return started in done


async def snapshot(request: RecordRequest, output: Path, *, at: float = 2.0,
                   policy: OutboundPolicy = OutboundPolicy()) -> Path:
    """Record `at` + 0.5 s of the request's room through the whole pipeline and keep the frame at `at` as PNG."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}snapshot-"))
    try:
        clip = workdir / "clip.mp4"
        config = resolve(request.model_copy(update={"file": FileOutput(filepath=str(clip)), "duration": at + 0.5}))
        async with OutboundGate(policy) as gate:
            await Recorder(config, EventSink("json", stream=io.StringIO()), asyncio.Event(), gate).run()
        output.parent.mkdir(parents=True, exist_ok=True)
        grab = ManagedProcess("ffmpeg", ["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", f"{at:.3f}", "-i", str(clip),
                                         "-frames:v", "1", str(output)])
        await grab.start()
        if await grab.wait() != 0 or not output.exists():
            raise EncoderFailed(f"could not take the frame at {at:g} s: {grab.describe_exit()}")
        return output
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
