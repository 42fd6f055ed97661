"""HLS around ffmpeg's muxer: the sliding live playlist, and a playlist that always ends.

ffmpeg writes one playlist (every segment, EVENT type). The live playlist
(the last few segments, for players that join late) is made from it while
recording; at the end both carry #EXT-X-ENDLIST, even if ffmpeg was killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..plan import SegmentSettings

LIVE_WINDOW = 5  # segments in the live playlist
ENDLIST = "#EXT-X-ENDLIST"
POLL_S = 0.5


@dataclass
class Playlist:
    """A media playlist split into its header lines and its segments (each: tag lines + URI)."""

    header: list[str]
    segments: list[list[str]]
    ended: bool

    @classmethod
    def read(cls, path: Path) -> Playlist:
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []
        header: list[str] = []
        segments: list[list[str]] = []
        entry: list[str] = []
        for line in lines:
            if line == ENDLIST:
                continue
            if line.startswith("#EXTINF") or entry:
                entry.append(line)
                if not line.startswith("#"):
                    segments.append(entry)
                    entry = []
            else:
                header.append(line)
        return cls(header=header, segments=segments, ended=ENDLIST in lines)

    @property
    def duration(self) -> float:
        return sum(float(line.split(":", 1)[1].split(",", 1)[0]) for seg in self.segments
                   for line in seg if line.startswith("#EXTINF"))

    def window(self, count: int, ended: bool) -> str:
        """The last `count` segments as a live (sliding) playlist."""
        first = max(0, len(self.segments) - count)
        header = [ln for ln in self.header if not ln.startswith(("#EXT-X-PLAYLIST-TYPE", "#EXT-X-MEDIA-SEQUENCE"))]
        lines = [*header, f"#EXT-X-MEDIA-SEQUENCE:{first}", *(ln for seg in self.segments[first:] for ln in seg)]
        return "\n".join(lines + ([ENDLIST] if ended else [])) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` at once: a reader sees the old content or the new, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


class LivePlaylist:
    """Keeps the live playlist in step with ffmpeg's playlist while recording."""

    def __init__(self, seg: SegmentSettings):
        self.seg = seg
        self._task: asyncio.Task | None = None
        self._written = -1

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            self.update(ended=False)
            await asyncio.sleep(POLL_S)

    def update(self, ended: bool) -> None:
        playlist = Playlist.read(self.seg.playlist)
        if self.seg.live_playlist and (len(playlist.segments) != self._written or ended):
            write_atomic(self.seg.live_playlist, playlist.window(LIVE_WINDOW, ended))
            self._written = len(playlist.segments)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def finish_segments(seg: SegmentSettings) -> dict:
    """End the playlists (ffmpeg ends its own unless it was killed) and report what was written."""
    playlist = Playlist.read(seg.playlist)
    if playlist.segments and not playlist.ended:
        with seg.playlist.open("a") as f:
            f.write(ENDLIST + "\n")
    if seg.live_playlist and playlist.segments:
        write_atomic(seg.live_playlist, playlist.window(LIVE_WINDOW, ended=True))
    files = [seg.directory / entry[-1] for entry in playlist.segments]
    return {"playlist": str(seg.playlist), "live_playlist": str(seg.live_playlist) if seg.live_playlist else None,
            "segment_count": len(files), "duration": round(playlist.duration, 3),
            "size": sum(f.stat().st_size for f in files if f.exists())}

