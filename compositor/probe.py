"""Facts about a media file, from ffprobe."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path


@dataclass(frozen=True)
class MediaFacts:
    path: str
    size: int
    duration: float
    format: str
    video_codec: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    audio_codec: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    #: where the first frame (or, without video, the first sound) sits on the file's timeline, in seconds: 0
    #: unless the other stream starts earlier. For placing things on that timeline (sidecars); not a fact
    #: results show.
    first_at: float = 0.0

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and k != "first_at"}


class ProbeError(Exception):
    pass


async def probe(path: Path) -> MediaFacts:
    """Read a file's container and stream facts; ProbeError if it is not media."""
    proc = await asyncio.create_subprocess_exec(
        "ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise ProbeError(err.decode(errors="replace").strip() or f"ffprobe exit {proc.returncode}")
    return facts_from_json(path, json.loads(out))


def facts_from_json(path: Path, data: dict) -> MediaFacts:
    fmt = data.get("format", {})
    video = next((s for s in data.get("streams", []) if s.get("codec_type") == "video"), None)
    audio = next((s for s in data.get("streams", []) if s.get("codec_type") == "audio"), None)
    fields: dict = {}
    if video:
        base = _rate(video.get("r_frame_rate"))
        fps = _rate(video.get("avg_frame_rate")) or base
        # A capture's frames are x11grab's whole-µs periods apart (30.0003 a second for 30), and the muxer
        # guesses its last frame's length: the average is off the rate the file was made at by that much, which
        # in a short file is up to a frame's worth. Within that, the base rate is the file's.
        frames = int(video.get("nb_frames") or 0)
        if base and abs(fps - base) <= base * max(1e-4, 1 / frames if frames > 1 else 0):
            fps = base
        fields.update(video_codec=video.get("codec_name"), width=video.get("width"), height=video.get("height"),
                      fps=round(fps, 3))
    if audio:
        fields.update(audio_codec=audio.get("codec_name"), sample_rate=int(audio.get("sample_rate", 0)),
                      channels=audio.get("channels"))
    first = video or audio
    if first:
        try:
            fields["first_at"] = max(float(first.get("start_time", 0.0)), 0.0)
        except ValueError:  # "N/A"
            pass
    return MediaFacts(path=str(path), size=int(fmt.get("size", 0)), duration=float(fmt.get("duration", 0.0)),
                      format=fmt.get("format_name", ""), **fields)


def _rate(text: str | None) -> float:
    """A frame rate as ffprobe writes it ("30/1"); 0 for none ("0/0", missing)."""
    try:
        return float(Fraction(text)) if text else 0.0
    except (ValueError, ZeroDivisionError):
        return 0.0
