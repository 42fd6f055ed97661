"""Media the tests make with ffmpeg's own sources."""

from __future__ import annotations

import subprocess
from pathlib import Path

from compositor import analysis
from compositor.pipeline.encoder import file_target


def marker_partial(path: Path, seconds: int, *, sound_late: float = 0.0) -> Path:
    """A crash-safe MP4 as the encoder writes one (fragments of a second, each second's picture stored before its
    sound) with a white flash and a click at the start of every second, the click `sound_late` s after its flash
    (a whole number of ms)."""
    flashes = f"color=c=black:s=160x90:r=30:d={seconds},format=gray,geq=lum='if(lt(mod(T,1),0.1),235,16)'"
    clicks = f"aevalsrc='if(lt(mod(t,1),0.03),0.6*sin(2*PI*{analysis.CLICK_HZ}*t),0)|0':s=48000:d={seconds}"
    target = file_target("mp4", path)
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", flashes, "-itsoffset", f"{sound_late:.3f}",
                    "-f", "lavfi", "-i", clicks, "-c:v", "libx264", "-g", "60", "-bf", "0", "-c:a", "aac", "-b:a",
                    "128k", *[arg for key, value in target.options for arg in (f"-{key}", value)], "-f", "mp4",
                    str(path)], check=True)
    return path
