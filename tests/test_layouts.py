"""Each built-in layout, recorded through the real pipeline, checked in the pixels.

Room time 0 is START_RECORDING; the file starts a moment later (the encoder
starting), so checks sample well inside the scripted windows.
"""

from __future__ import annotations

import numpy as np
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
# Two people side by side in pixels of 640x360 (x0, y0, x1, y1): a 6 px gap (1.6% of the height) around and
# between the two 311x175 tiles.
GAP = 6
PAIR = [(6, 93, 317, 267), (323, 93, 634, 267)]
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
    run = record("--preset", "480p", "--layout", "grid-light", "--duration", "2",
                 "--participant", f"name=Solo,color={color},speaks=")
    assert run.code == 0, run.stderr[-2000:]
    assert_facts(run, width=854, height=480, fps=30, duration=2)
    # The very first frame is already the room: no black or half-loaded lead-in.
    assert_color(analysis.frame_at(run.output, 0.0), (0, 0, 1, 1), color)
    frame = analysis.frame_at(run.output, 1.0)
    # No browser UI, no missing row or column: every edge of the frame is the page's light background
    # (not black), and the tile sits in the middle with equal margins on opposite sides.
    for edge in (frame[0, 40:-40], frame[-1, 40:-40], frame[40:-40, 0], frame[40:-40, -1]):
        assert analysis.color_distance(edge.mean(axis=0), "#f2f2f2") <= 20, edge.mean(axis=0)
    is_tile = np.array([analysis.color_distance(px, color) <= 40 for px in frame[240]])
    left, right = int(np.argmax(is_tile)), int(np.argmax(is_tile[::-1]))
    is_tile = np.array([analysis.color_distance(px, color) <= 40 for px in frame[:, 427]])
    top, bottom = int(np.argmax(is_tile)), int(np.argmax(is_tile[::-1]))
    assert abs(left - right) <= 1 and abs(top - bottom) <= 1 and 6 <= top <= 10, (left, right, top, bottom)


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


def mean_of(frame, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    return frame[y0:y1, x0:x1].reshape(-1, 3).astype(float).mean(axis=0)


def count_near(frame, box: tuple[int, int, int, int], color: str, tol: float = 60) -> int:
    """How many pixels of the box (x0, y0, x1, y1) are within `tol` of `color` on every channel."""
    x0, y0, x1, y1 = box
    return int((np.abs(frame[y0:y1, x0:x1].astype(float) - analysis.hex_rgb(color)).max(axis=2) <= tol).sum())


RING = "#ffe14d"  # the speaking ring (static/css/base.css --ring)
MUTED_RED = "#ed2939"  # the mic-off icon (--muted)
RECONNECTING = "#f5a623"  # the reconnecting marker's badge


def test_tiles_have_gaps_rounded_corners_a_speaking_ring_names_and_a_mute_icon(record):
    blue = PALETTE[2]
    run = record(*SMALL, "--layout", "grid", "--duration", "2.5",
                 "--participant", f"name=Ada,color={blue}",  # talks all along
                 "--participant", f"name=Bob,color={blue},tone=0,speaks=")  # no microphone: muted
    assert run.code == 0, run.stderr[-2000:]
    frame = analysis.frame_at(run.output, 1.5)
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = PAIR
    # The gap between the tiles and the margin around them are the dark background.
    assert analysis.color_distance(mean_of(frame, ax1 + 1, ay0 + 20, bx0 - 1, ay1 - 20), "#111111") <= 12
    assert analysis.color_distance(mean_of(frame, ax0 + 40, 0, ax1 - 40, GAP - 1), "#111111") <= 12
    assert analysis.color_distance(mean_of(frame, 1, 120, GAP - 1, 240), "#111111") <= 12
    # Rounded corners: each tile's very corner is background, while its edges a little further along are not.
    for x, y in ((ax0, ay0), (ax1 - 1, ay0), (bx0, by1 - 1), (bx1 - 1, by1 - 1)):
        assert analysis.color_distance(frame[y, x].astype(float), "#111111") <= 30, (x, y, frame[y, x])
    # The ring: the speaker's tile border is the ring's yellow; the listener's is their own colour.
    ring = mean_of(frame, ax0 + 1, ay0 + 40, ax0 + 3, ay1 - 40)
    assert analysis.color_distance(ring, RING) <= 40, ring
    top_ring = mean_of(frame, ax0 + 60, ay0 + 1, ax1 - 60, ay0 + 3)
    assert analysis.color_distance(top_ring, RING) <= 40, top_ring
    assert analysis.color_distance(mean_of(frame, bx0 + 1, by0 + 40, bx0 + 3, by1 - 40), blue) <= 40
    # The mic-off icon: its red in the muted tile's bottom-left corner, none in the other's.
    corner = 90, 40
    assert count_near(frame, (bx0, by1 - corner[1], bx0 + corner[0], by1), MUTED_RED) >= 20
    assert count_near(frame, (ax0, ay1 - corner[1], ax0 + corner[0], ay1), MUTED_RED) == 0
    # Names are on by default: a dark label with white letters at each tile's bottom left.
    for x0, y1 in ((ax0, ay1), (bx0, by1)):
        label = frame[y1 - 25: y1 - 3, x0 + 5: x0 + 60]
        assert (label.max(axis=2) < 110).sum() > 100 and (label.min(axis=2) > 200).sum() > 10


def test_the_mute_icon_shows_while_the_microphone_is_muted(record):
    blue = PALETTE[2]
    run = record(*SMALL, "--layout", "grid", "--duration", "3",
                 "--participant", f"name=Ada,color={blue}",
                 "--participant", f"name=Bob,color={blue},mutes=1.5-10")
    assert run.code == 0, run.stderr[-2000:]
    (_, _, _, _), (bx0, _, _, by1) = PAIR
    corner = (bx0, by1 - 40, bx0 + 90, by1)
    assert count_near(analysis.frame_at(run.output, 0.8), corner, MUTED_RED) == 0
    assert count_near(analysis.frame_at(run.output, 2.6), corner, MUTED_RED) >= 20


def test_names_off_leave_the_mute_icon(record):
    blue = PALETTE[2]
    run = record(*SMALL, "--layout", "grid", "--duration", "2", "--no-names",
                 "--participant", f"name=Ada,color={blue},speaks=",
                 "--participant", f"name=Bob,color={blue},tone=0,speaks=")
    assert run.code == 0, run.stderr[-2000:]
    frame = analysis.frame_at(run.output, 1.2)
    (ax0, _, _, ay1), (bx0, _, _, by1) = PAIR
    # No label on Ada's tile (no dark box: only her blue and the white moving square); Bob's carries only the
    # icon, in a box too short to hold his name.
    assert (frame[ay1 - 25: ay1 - 3, ax0 + 5: ax0 + 60].max(axis=2) < 110).sum() == 0
    assert count_near(frame, (bx0, by1 - 40, bx0 + 90, by1), MUTED_RED) >= 20
    assert (frame[by1 - 25: by1 - 3, bx0 + 30: bx0 + 60].max(axis=2) < 110).sum() == 0


def test_a_frozen_camera_is_marked_reconnecting(record):
    blue, red = PALETTE[2], PALETTE[0]
    # His network drops from 1 s to 6 s of room time (file time trails it by the encoder's start, up to a
    # second on a busy machine: the samples keep clear of both ends).
    run = record(*SMALL, "--layout", "grid", "--duration", "8",
                 "--participant", f"name=Ada,color={blue},speaks=",
                 "--participant", f"name=Bob,color={red},speaks=,freezes=1-6")
    assert run.code == 0, run.stderr[-2000:]
    a, b = PAIR
    frames = {t: analysis.frame_at(run.output, t) for t in (0.5, 3.8, 4.6, 7.6)}
    # While his pictures flow, nothing is marked.
    assert count_near(frames[0.5], b, RECONNECTING, tol=40) == 0
    # Two seconds into the freeze his tile is dimmed and says so; Ada's, still moving, is untouched.
    assert count_near(frames[4.6], b, RECONNECTING, tol=40) > 200
    assert count_near(frames[4.6], a, RECONNECTING, tol=40) == 0
    assert analysis.color_distance(mean_of(frames[4.6], b[0] + 20, b[1] + 20, b[0] + 80, b[1] + 60), red) > 60
    # His picture really stood still (the moving square did not move) while Ada's went on.
    moved = [np.abs(frames[3.8][y0:y1, x0:x1].astype(int) - frames[4.6][y0:y1, x0:x1].astype(int)).max()
             for x0, y0, x1, y1 in (a, b)]
    assert moved[0] > 100 and moved[1] < 40, moved
    # Pictures back: the marker goes.
    assert count_near(frames[7.6], b, RECONNECTING, tol=40) == 0
    assert_color(frames[7.6], (0.5, 0.25, 0.5, 0.5), red)


def test_a_screen_share_is_labelled_with_whose_it_is(record):
    share = "#f0f0f0"
    run = record(*SMALL, "--layout", "speaker", "--duration", "2.5",
                 "--participant", f"name=Ada,color={PALETTE[0]},speaks=,screenshare=0-10:{share}",
                 "--participant", f"name=Bob,color={PALETTE[1]},speaks=")
    assert run.code == 0, run.stderr[-2000:]
    frame = analysis.frame_at(run.output, 1.5)
    # The share fills the main area (80..560 x 6..276); its label sits at its bottom left: a dark box
    # with white letters, as wide as "Ada's screen" and so wider than Ada's own camera label would be.
    label = frame[276 - 25: 276 - 3, 80 + 3: 80 + 200]
    dark = label.max(axis=2) < 110
    assert dark.sum() > 300 and (label.min(axis=2) > 200).sum() > 20
    width = int(np.flatnonzero(dark.any(axis=0)).max())
    assert width > 60, width


def test_light_theme_and_name_tiles_for_cameras_off(record):
    run = record(*SMALL, "--layout", "grid-light", "--duration", "2",
                 "--participant", "name=Ada Lovelace,video=off,speaks=")
    assert run.code == 0, run.stderr[-2000:]
    frame = analysis.frame_at(run.output, 1.0)
    # A light name tile fills the frame (avatar and name in the middle).
    assert_color(frame, (0, 0, 0.25, 0.25), "#d6d6d6", tol=12)
    # The avatar: a disc in her colour with her initials in white, the light background in the margin.
    assert analysis.color_distance(mean_of(frame, 262, 150, 272, 166), PALETTE[0]) <= 40
    assert (frame[130:190, 290:350].min(axis=2) > 220).sum() > 100
    assert analysis.color_distance(mean_of(frame, 100, 0, 540, GAP - 1), "#f2f2f2") <= 12
