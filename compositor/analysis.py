"""Read a recording's content back: pixels, tones, sync markers, frame cadence.

Used by the tests and benchmarks to check what a viewer would see and hear
(needs numpy, from the `dev` extra).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

from .probe import MediaFacts, facts_from_json

CLICK_HZ = 3000  # static/sdk/synthetic.js
AUDIO_RATE = 48000


def _ffmpeg_out(args: list[str]) -> bytes:
    return subprocess.run(["ffmpeg", "-v", "error", "-nostdin", *args], check=True, capture_output=True).stdout


def frame_at(path: Path | str, t: float) -> np.ndarray:
    """The decoded frame shown at time t (seconds) as an H x W x 3 RGB array."""
    w, h = video_size(path)
    seek = ["-ss", f"{t:.3f}"] if t > 0 else []  # (an image has nothing to seek in)
    raw = _ffmpeg_out([*seek, "-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
    return np.frombuffer(raw, np.uint8)[: w * h * 3].reshape(h, w, 3)


def video_size(path: Path | str) -> tuple[int, int]:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height",
                          "-of", "csv=p=0", str(path)], check=True, capture_output=True, text=True).stdout
    w, h = out.strip().split(",")[:2]
    return int(w), int(h)


def hex_rgb(color: str) -> np.ndarray:
    return np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)


def region_color(frame: np.ndarray, x: float, y: float, w: float, h: float) -> np.ndarray:
    """Median RGB of the middle of a rectangle given as fractions of the frame."""
    fh, fw = frame.shape[:2]
    x0, x1 = int((x + w * 0.3) * fw), int((x + w * 0.7) * fw)
    y0, y1 = int((y + h * 0.3) * fh), int((y + h * 0.7) * fh)
    return np.median(frame[y0:y1, x0:x1].reshape(-1, 3), axis=0)


def color_distance(rgb: np.ndarray, color: str) -> float:
    return float(np.abs(rgb - hex_rgb(color)).max())


def audio_samples(path: Path | str, channel: str | None = None) -> np.ndarray:
    """The audio as mono float samples at 48 kHz, sample 0 at file time 0: both channels mixed, or one of them
    alone (`channel` "left" or "right").

    The audio stream may start after time 0 (an MP4 edit list); it is
    padded with silence so indexes are file times.
    """
    pick = {None: "", "left": "pan=mono|c0=FL,", "right": "pan=mono|c0=FR,"}[channel]
    raw = _ffmpeg_out(["-i", str(path), "-vn", "-ac", "1", "-ar", str(AUDIO_RATE),
                       "-af", f"{pick}aresample=async=1:first_pts=0", "-f", "f32le", "-"])
    return np.frombuffer(raw, np.float32)


def tone_level(samples: np.ndarray, freq: float, t0: float, t1: float) -> float:
    """RMS amplitude of a pure tone at `freq` Hz between t0 and t1 seconds."""
    seg = samples[int(t0 * AUDIO_RATE): int(t1 * AUDIO_RATE)].astype(float)
    if len(seg) < 64:
        return 0.0
    n = np.arange(len(seg))
    window = np.hanning(len(seg))
    # Correlate with the tone (a one-bin DFT): robust to everything else playing.
    z = np.sum(seg * window * np.exp(-2j * np.pi * freq * n / AUDIO_RATE))
    return float(2 * abs(z) / window.sum() / np.sqrt(2))


def loudest_level(samples: np.ndarray, freq: float, t0: float, t1: float | None = None, span: float = 1.0) -> float:
    """A tone's level (as tone_level) in its loudest `span` seconds between t0 and t1 (default: the end).

    For "is it heard": a room's sound reaches the page a moment after the recording starts, later on a loaded
    machine, so a fixed early stretch can catch it half there."""
    seg = samples[int(t0 * AUDIO_RATE): None if t1 is None else int(t1 * AUDIO_RATE)]
    win = int(span * AUDIO_RATE)
    if len(seg) < win:
        return tone_level(seg, freq, 0, span)
    # The envelope is tone_level's one-bin DFT over each span, a quarter span apart; RMS of a sine = peak / √2.
    return float(_tone_envelope(seg, freq, win, win // 4).max() / np.sqrt(2))


def _tone_envelope(samples: np.ndarray, hz: float, win: int, hop: int) -> np.ndarray:
    """Amplitude of a tone at `hz` in each window of `win` samples, one every `hop` (a Hann-windowed one-bin DFT)."""
    kernel = np.exp(-2j * np.pi * hz * np.arange(win) / AUDIO_RATE) * np.hanning(win)
    frames = np.lib.stride_tricks.sliding_window_view(samples, win)[::hop]
    return np.abs(frames @ kernel) * 2 / np.hanning(win).sum()


def click_onsets(samples: np.ndarray, hz: float = CLICK_HZ, threshold: float = 0.1) -> list[float]:
    """Times (s) where a burst at `hz` starts (the sync marker click)."""
    hop = 48  # 1 ms
    win = 240  # 5 ms
    starts = np.arange(0, len(samples) - win, hop)
    env = _tone_envelope(samples, hz, win, hop)[: len(starts)]
    onsets, last = [], -1.0
    for i in np.flatnonzero(env > threshold):
        t = (starts[i] + win / 2) / AUDIO_RATE
        if t - last > 0.5:
            onsets.append(float(t))
        last = t if t - last > 0.5 else last
    return onsets


def tone_gaps(samples: np.ndarray, freq: float, longest: float = 0.2) -> list[tuple[float, float]]:
    """(start, length) in seconds of each gap in a steady tone at `freq` Hz: a stretch of up to `longest` where it
    falls below half its level, with the tone on both sides. What a late audio output leaves in a recording (silence
    put in, or a cut, seen where it breaks the tone's phase); a tone that stops for longer has stopped, not glitched."""
    win, hop = AUDIO_RATE // 100, AUDIO_RATE // 200  # 10 ms, every 5 ms
    if len(samples) < 2 * win:
        return []
    env = _tone_envelope(samples, freq, win, hop)
    on = env > env.max() * 0.3
    if not on.any():
        return []
    low = env < np.median(env[on]) * 0.5
    # A tone on both sides means a tenth of a second of it: without the tone, the leak of a click's onset
    # into its frequency is a blip, and the quiet between two blips is no gap.
    side = AUDIO_RATE // 10 // hop
    gaps, start = [], None
    for i in range(1, len(low)):
        if low[i] and not low[i - 1]:
            start = i
        elif start is not None and not low[i]:
            tone_around = start >= side and i + side <= len(low) and not (low[start - side:start].any()
                                                                         or low[i:i + side].any())
            if (i - start) * hop <= longest * AUDIO_RATE and tone_around:
                gaps.append((start * hop / AUDIO_RATE, (i - start) * hop / AUDIO_RATE))
            start = None
    return gaps


def gray_frames(path: Path | str, size: tuple[int, int]) -> np.ndarray:
    """Every frame of the video, scaled to size (w, h), as N x h x w grey levels."""
    w, h = size
    raw = _ffmpeg_out(["-i", str(path), "-an", "-vf", f"scale={w}:{h}", "-f", "rawvideo", "-pix_fmt", "gray", "-"])
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w)


def luma_series(path: Path | str, size: tuple[int, int] = (64, 36)) -> tuple[np.ndarray, np.ndarray]:
    """(frame times, mean luma per frame) of the whole video, decoded small."""
    frames = gray_frames(path, size).astype(float)
    return frame_times(path)[: len(frames)], frames.mean(axis=(1, 2))


def frame_times(path: Path | str) -> np.ndarray:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time",
                          "-of", "csv=p=0", str(path)], check=True, capture_output=True, text=True).stdout
    values = (x.strip(",") for x in out.split())
    return np.array([float(x) for x in values if x not in ("", "N/A")])


def facts(path: Path | str) -> MediaFacts:
    """ffprobe's facts of a media file (the same ones a recording's result reports)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
                          str(path)], check=True, capture_output=True, text=True).stdout
    return facts_from_json(Path(path), json.loads(out))


def keyframe_times(path: Path | str) -> list[float]:
    """Times (s) of the video's keyframes, from the container's packet flags."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags",
                          "-of", "csv=p=0", str(path)], check=True, capture_output=True, text=True).stdout
    rows = (line.split(",") for line in out.split())
    return [float(r[0]) for r in rows if len(r) > 1 and r[0] != "N/A" and "K" in r[1]]


# Frames around each frame that set the level a flash stands out from: a second at 30 fps.
FLASH_BASE_FRAMES = 31


def flash_onsets(path: Path | str) -> list[float]:
    """Times (s) of the first frame of each white sync flash."""
    times, luma = luma_series(path)
    # A flash (a tenth of a second) stands out from the second around it. Not from the whole file's level: when a
    # tile comes or goes the picture's level moves by as much as a tile's flash, and flashes on the darker side of
    # that move were missed.
    if len(luma) < 2:
        return []
    half = min(FLASH_BASE_FRAMES, len(luma)) // 2
    around = np.lib.stride_tricks.sliding_window_view(np.pad(luma, half, mode="reflect"), 2 * half + 1)
    lift = luma - np.median(around, axis=1)
    if lift.max() < 20:
        return []
    high = lift > lift.max() * 0.5
    return [float(times[i]) for i in range(1, len(high)) if high[i] and not high[i - 1]]


def marker_pairs(path: Path | str, samples: np.ndarray | None = None) -> list[tuple[float, float]]:
    """(flash time, audio minus video time) of each sync marker found in both, in seconds (positive: sound
    late). `samples`: the file's sound, if already decoded."""
    clicks = click_onsets(audio_samples(path) if samples is None else samples)
    out = []
    for f in flash_onsets(path):
        near = [c for c in clicks if abs(c - f) < 0.4]
        if near:
            out.append((f, min(near, key=lambda c: abs(c - f)) - f))
    return out


def av_offsets(path: Path | str) -> list[float]:
    """Audio minus video time (s) of each sync marker found in both (positive: sound late)."""
    return [offset for _, offset in marker_pairs(path)]


def distinct_frame_ratio(path: Path | str, min_pixels: int = 20, size: tuple[int, int] = (320, 180),
                         skip: list[tuple[float, float]] = ()) -> float:
    """Share of frames that differ visibly from the one before (repeats count as not distinct).

    `skip` lists (start, end) times whose frames are left out, e.g. sync
    marker flashes, which are identical white frames on purpose.
    """
    frames = gray_frames(path, size).astype(np.int16)
    if skip:
        times = frame_times(path)[: len(frames)]
        keep = [i for i, t in enumerate(times) if not any(a <= t <= b for a, b in skip)]
        frames = frames[keep]
    if len(frames) < 2:
        return 0.0
    # A repeated page frame differs only by encoder noise; a moving element
    # changes some pixels a lot. Count frames whose largest local change is big.
    diffs = np.abs(np.diff(frames, axis=0))
    changed = (diffs > 24).sum(axis=(1, 2))
    return float((changed >= min_pixels).sum() / len(diffs))
