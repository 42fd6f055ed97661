"""The grab clock (pipeline/grab_clock): its period, and its hold of the X server, which must always end."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
from Xlib import display as xdisplay

from compositor.pipeline import encoder
from compositor.pipeline.display import Display
from compositor.pipeline.grab_clock import LANDING_AFTER_TICK_S, GrabClock, locked_period_us


def test_grabs_keep_chromiums_ticks_where_the_rate_divides_them():
    # Chromium's frames come every 16666 µs: 30 fps grabs every two of them, 15 every four.
    assert [locked_period_us(fps) for fps in (60, 30, 20, 15, 10)] == [16666, 33332, 49998, 66664, 99996]
    # 25 and 24 fps fall between its frames: x11grab's own 1/fps.
    assert locked_period_us(25) is None and locked_period_us(24) is None
    assert encoder.grab_rate(30) == "1000000/33332" and encoder.grab_period(30) == 0.033332
    assert encoder.grab_rate(25) == "1000000/40000" and encoder.grab_period(25) == 0.04


def _answers(name: str, timeout: float) -> bool:
    """Whether another client of the display gets an answer within `timeout` (not while the server is held)."""
    probe = subprocess.run(["timeout", str(timeout), sys.executable, "-c",
                            f"from Xlib import display; display.Display({name!r}).screen().root.get_geometry()"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.fixture
async def display():
    shown = Display(64, 48)
    await shown.start()
    yield shown
    await shown.stop()


async def test_the_server_is_held_only_while_ffmpeg_starts_and_let_go_whatever_happens(display):
    clock = GrabClock(display.name, 33332, max_hold=0.5)
    await clock.start()
    try:
        # A process that never opens the display: held until max_hold, then let go.
        sleeper = subprocess.Popen(["sleep", "30"])
        try:
            started = time.monotonic()
            async with clock.aligned(lambda: sleeper.pid):
                held = await asyncio.to_thread(_answers, display.name, 0.3)
            assert not held, "another client was answered while the server was held"
            assert 0.5 <= time.monotonic() - started < 2
        finally:
            sleeper.kill()
            sleeper.wait()
        assert await asyncio.to_thread(_answers, display.name, 5)

        # The encoder's start fails: let go at once.
        with pytest.raises(RuntimeError):
            async with clock.aligned(lambda: None):
                raise RuntimeError("ffmpeg did not start")
        assert await asyncio.to_thread(_answers, display.name, 5)

        # Held when this process's connection goes away (a SIGKILLed worker): the X server lets go itself.
        connection = xdisplay.Display(display.name)
        connection.grab_server()
        connection.sync()
        assert not await asyncio.to_thread(_answers, display.name, 0.3)
        connection.close()
        assert await asyncio.to_thread(_answers, display.name, 5)
    finally:
        await clock.stop()


async def test_a_display_it_cannot_watch_leaves_the_grabs_unaligned():
    clock = GrabClock(":4077", 33332)  # no such display
    await clock.start()
    entered = False
    async with clock.aligned(lambda: None):
        entered = True
    assert entered and clock.released is None
    await clock.stop()


def test_an_unmeasured_page_is_aimed_by_the_landing_it_was_given():
    # No landings seen (a page that starts at once): the given one, within the tick; a nonsense one is ignored.
    assert GrabClock(":4077", 33332, expected_landing=0.0112).landing_phase() == pytest.approx(0.0112)
    assert GrabClock(":4077", 33332, expected_landing=0.020).landing_phase() == pytest.approx(0.020 - 0.016666)
    for given in (None, float("nan"), float("inf")):
        assert GrabClock(":4077", 33332, expected_landing=given).landing_phase() == LANDING_AFTER_TICK_S


def test_the_sound_is_moved_by_how_long_the_pages_frames_waited_for_their_grabs():
    """AUDIO_DELAY_S holds for frames that wait half a grab period on average; a page that changes at the grab
    rate lands on one side of the grabs for a whole run, and its sound is moved by the difference."""
    def shift(landings: list[float]) -> float | None:
        clock = GrabClock(":4077", 33332)
        clock.grabs_began(time.time())
        origin = time.monotonic()  # (where grabs_began put the first grab, to the µs)
        for x in landings:
            clock._landed(origin + x)
        return clock.sound_shift()

    period, tick = 0.033332, 0.016666
    # 30 Hz frames landing 8 ms after each grab wait 25.3 ms for the next: 8.7 ms past half a period.
    assert shift([k * period + 0.008 for k in range(60)]) == pytest.approx(period - 0.008 - period / 2, abs=2e-4)
    # ... and 25 ms after: they wait 8.3 ms, the sound comes 8.3 ms sooner.
    assert shift([k * period + 0.025 for k in range(60)]) == pytest.approx(0.008332 - period / 2, abs=2e-4)
    # 60 Hz frames land on both sides, the grabs aimed half a tick after them: no move.
    assert shift([k * tick + tick / 2 for k in range(120)]) == pytest.approx(0, abs=2e-4)
    # Too few to tell.
    assert shift([k * period + 0.008 for k in range(10)]) is None
