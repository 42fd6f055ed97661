"""Quality presets (DESIGN.md table), with LiveKit's preset names as aliases."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    width: int
    height: int
    fps: int
    video_kbps: int


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("480p", 854, 480, 30, 1500),
        Preset("720p", 1280, 720, 30, 3000),
        Preset("720p60", 1280, 720, 60, 4500),
        Preset("1080p", 1920, 1080, 30, 6000),
        Preset("1080p60", 1920, 1080, 60, 6000),
        Preset("4k", 3840, 2160, 30, 15000),
        Preset("portrait-720", 720, 1280, 30, 3000),
        Preset("portrait-1080", 1080, 1920, 30, 4500),
    )
}

# LiveKit EncodingOptionsPreset names map onto ours; H264_1080P_30 keeps
# LiveKit's lower bitrate so a request moved from LiveKit gets the same file.
ALIASES: dict[str, Preset] = {
    "H264_720P_30": PRESETS["720p"],
    "H264_720P_60": PRESETS["720p60"],
    "H264_1080P_30": Preset("H264_1080P_30", 1920, 1080, 30, 4500),
    "H264_1080P_60": PRESETS["1080p60"],
    "PORTRAIT_H264_720P_30": PRESETS["portrait-720"],
    "PORTRAIT_H264_1080P_30": PRESETS["portrait-1080"],
}

DEFAULT_PRESET = "720p"


def find_preset(name: str) -> Preset | None:
    """The preset called `name` (ours, case-insensitive, or a LiveKit alias)."""
    return PRESETS.get(name.lower()) or ALIASES.get(name.upper())


def preset_names() -> list[str]:
    return [*PRESETS, *ALIASES]
