"""Each built-in layout, recorded through the real pipeline, checked in the pixels.

Room time 0 is START_RECORDING; the file starts a moment later (the encoder
starting), so checks sample well inside the scripted windows.
"""

from __future__ import annotations

import pytest

from compositor import analysis
from compositor.request import PALETTE

from .conftest import SMALL, assert_color, assert_released

# Fractions of a 16:9 frame (640x360), as the layouts place tiles.
GRID = {
    1: [(0, 0, 1, 1)],
    2: [(0, 0.25, 0.5, 0.5), (0.5, 0.25, 0.5, 0.5)],
    4: [(0, 0, 0.5, 0.5), (0.5, 0, 0.5, 0.5), (0, 0.5, 0.5, 0.5), (0.5, 0.5, 0.5, 0.5)],
    5: [(0, 1 / 6, 1 / 3, 1 / 3), (1 / 3, 1 / 6, 1 / 3, 1 / 3), (2 / 3, 1 / 6, 1 / 3, 1 / 3),
        (1 / 6, 1 / 2, 1 / 3, 1 / 3), (1 / 2, 1 / 2, 1 / 3, 1 / 3)],
    9: [(c / 3, r / 3, 1 / 3, 1 / 3) for r in range(3) for c in range(3)],
}
SPEAKER_MAIN = (0.1, 0, 0.8, 0.8)
PIP_MAIN = (0, 0, 1, 1)
PIP_OVERLAY = (469 / 640, 259 / 360, 0.25, 0.25)


def people(n: int, **extra: str) -> list[str]:
    args = []
    for i in range(n):
        spec = ",".join([f"name=P{i + 1}", f"color={PALETTE[i]}", *(f"{k}={v}" for k, v in extra.items())])
        args += ["--participant", spec]
    return args


def assert_facts(run, width=640, height=360, fps=30, duration=None):
    f = run.result["file"]
    assert (f["width"], f["height"], f["fps"]) == (width, height, fps)
    assert f["video_codec"] == "h264" and f["audio_codec"] == "aac"
    if duration is not None:
        assert abs(f["duration"] - duration) <= 0.3, f["duration"]


@pytest.mark.parametrize("count", sorted(GRID))
def test_grid_places_each_participant_in_its_cell(record, count):
    run = record(*SMALL, "--layout", "grid", "--duration", "2.5", *people(count, speaks=""))
    assert run.code == 0, run.stderr[-2000:]
    assert_facts(run, duration=2.5)
    frame = analysis.frame_at(run.output, 1.5)
    for i, rect in enumerate(GRID[count]):
        assert_color(frame, rect, PALETTE[i])
    assert_released(run.resources)


def test_grid_reflows_when_people_join_and_leave(record):
    run = record(*SMALL, "--layout", "grid", "--duration", "6",
                 "--participant", f"name=A,color={PALETTE[0]},speaks=",
                 "--participant", f"name=B,color={PALETTE[1]},speaks=,leaves=4",
                 "--participant", f"name=C,color={PALETTE[2]},speaks=,joins=2")
    assert run.code == 0, run.stderr[-2000:]
    before = analysis.frame_at(run.output, 1.2)   # A, B side by side
    assert_color(before, GRID[2][0], PALETTE[0])
    assert_color(before, GRID[2][1], PALETTE[1])
    during = analysis.frame_at(run.output, 3.2)   # A, B, C in a 2x2 grid
    assert_color(during, GRID[4][0], PALETTE[0])
    assert_color(during, GRID[4][1], PALETTE[1])
    assert_color(during, (0.25, 0.5, 0.5, 0.5), PALETTE[2])  # last row centred
    after = analysis.frame_at(run.output, 5.4)    # B left: A, C side by side
    assert_color(after, GRID[2][0], PALETTE[0])
    assert_color(after, GRID[2][1], PALETTE[2])


def test_preset_size_exact_with_every_edge_pixel(record):
    color = "#3cb44b"
    run = record("--preset", "480p", "--layout", "grid", "--duration", "2",
                  "--participant", f"name=Solo,color={color},speaks=")
    assert run.code == 0, run.stderr[-2000:]
    assert_facts(run, width=854, height=480, fps=30, duration=2)
    # The very first frame is already the room: no black or half-loaded lead-in.
    assert_color(analysis.frame_at(run.output, 0.0), (0, 0, 1, 1), color)
    frame = analysis.frame_at(run.output, 1.0)
    # No browser UI, no missing row or column: the frame's edges show the tile.
    for edge in (frame[0, 40:-40], frame[-1, 40:-40], frame[40:-40, 0], frame[40:-40, -1]):
        assert analysis.color_distance(edge.mean(axis=0), color) <= 40, edge.mean(axis=0)


def test_speaker_main_area_follows_who_speaks(record):
    run = record(*SMALL, "--layout", "speaker", "--duration", "6",
                 "--participant", f"name=A,color={PALETTE[0]},speaks=0-3",
                 "--participant", f"name=B,color={PALETTE[1]},speaks=3-6",
                 "--participant", f"name=C,color={PALETTE[2]},speaks=")
    assert run.code == 0, run.stderr[-2000:]
    assert_color(analysis.frame_at(run.output, 1.5), SPEAKER_MAIN, PALETTE[0])
    later = analysis.frame_at(run.output, 4.8)
    assert_color(later, SPEAKER_MAIN, PALETTE[1])
    # The others sit in the bottom strip: two 128x72 thumbnails, centred.
    assert_color(later, (192 / 640, 0.8, 0.2, 0.2), PALETTE[0])
    assert_color(later, (320 / 640, 0.8, 0.2, 0.2), PALETTE[2])


def test_speaker_changes_are_held_at_least_a_second(record):
    # B talks 0.2 s at 2.0; A answers at 2.2. Without the hold, A would be back
    # on screen at 2.2; with it, B stays until 3.0.
    run = record(*SMALL, "--layout", "single-speaker", "--duration", "5",
                 "--participant", f"name=A,color={PALETTE[0]},speaks=0-2;2.2-5",
                 "--participant", f"name=B,color={PALETTE[1]},speaks=2-2.2")
    assert run.code == 0, run.stderr[-2000:]
    frames = {t: analysis.frame_at(run.output, t) for t in (1.2, 2.5, 4.2)}
    assert_color(frames[1.2], (0, 0, 1, 1), PALETTE[0])
    assert_color(frames[2.5], (0, 0, 1, 1), PALETTE[1])
    assert_color(frames[4.2], (0, 0, 1, 1), PALETTE[0])


def test_pip_puts_the_speaker_over_the_screen_share(record):
    share = "#2040c0"
    run = record(*SMALL, "--layout", "pip", "--duration", "5",
                 "--participant", f"name=A,color={PALETTE[0]},speaks=,screenshare=0-10:{share}",
                 "--participant", f"name=B,color={PALETTE[1]}")
    assert run.code == 0, run.stderr[-2000:]
    frame = analysis.frame_at(run.output, 2.5)
    assert_color(frame, (0.1, 0.1, 0.5, 0.5), share)
    assert_color(frame, PIP_OVERLAY, PALETTE[1])


def test_default_is_speaker_for_two_and_grid_for_more(record):
    two = record(*SMALL, "--layout", "default", "--duration", "2.5", *people(2, speaks=""))
    assert two.code == 0, two.stderr[-2000:]
    frame = analysis.frame_at(two.output, 1.5)
    assert_color(frame, SPEAKER_MAIN, PALETTE[0])
    assert_color(frame, (256 / 640, 0.8, 0.2, 0.2), PALETTE[1])
    three = record(*SMALL, "--layout", "default", "--duration", "2.5", *people(3, speaks=""), output="three.mp4")
    assert three.code == 0, three.stderr[-2000:]
    frame = analysis.frame_at(three.output, 1.5)
    for i in range(2):
        assert_color(frame, GRID[4][i], PALETTE[i])


def test_screen_share_switches_grid_to_speaker(record):
    share = "#f0f0f0"
    run = record(*SMALL, "--layout", "grid", "--duration", "5",
                 "--participant", f"name=A,color={PALETTE[0]},speaks=,screenshare=2-10",
                 "--participant", f"name=B,color={PALETTE[1]},speaks=",
                 "--participant", f"name=C,color={PALETTE[2]},speaks=")
    assert run.code == 0, run.stderr[-2000:]
    assert_color(analysis.frame_at(run.output, 1.0), GRID[4][0], PALETTE[0])
    assert_color(analysis.frame_at(run.output, 4.0), SPEAKER_MAIN, share, tol=30)


def test_light_theme_and_name_tiles_for_cameras_off(record):
    run = record(*SMALL, "--layout", "grid-light", "--duration", "2",
                 "--participant", "name=Ada,video=off,speaks=")
    assert run.code == 0, run.stderr[-2000:]
    frame = analysis.frame_at(run.output, 1.0)
    # A light name tile fills the frame (initial and name in the middle).
    assert_color(frame, (0, 0, 0.25, 0.25), "#d6d6d6", tol=12)
