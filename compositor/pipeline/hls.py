"""HLS around ffmpeg's muxer: the whole (EVENT) playlist, the sliding live playlist, and an end for both.

ffmpeg writes a sliding playlist of its last segments into the job's workdir:
its muxer keeps ~10 KB for each segment it lists, so letting it list every
segment grew a two-hour recording's encoder by ~35 MB. The worker copies each
new segment's entry from it into the EVENT playlist the user gets (and the
live playlist: the last few segments, for players that join late); at the end
both carry #EXT-X-ENDLIST, even if ffmpeg was killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..plan import SegmentSettings

log = logging.getLogger(__name__)

LIVE_WINDOW = 5  # segments in the live playlist
# Segments in ffmpeg's own playlist: the worker reads it every POLL_S, so it may fall this many segments
# (a minute or more) behind before an entry would be lost.
MUXER_WINDOW = 60
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
        return sum(extinf(seg) for seg in self.segments)

    def text(self) -> str:
        """The whole playlist."""
        return "\n".join([*self.header, *(ln for seg in self.segments for ln in seg)]
                         + ([ENDLIST] if self.ended else [])) + "\n"

    def window(self, count: int, ended: bool) -> str:
        """The last `count` segments as a live (sliding) playlist."""
        first = max(0, len(self.segments) - count)
        header = [ln for ln in self.header if not ln.startswith(("#EXT-X-PLAYLIST-TYPE", "#EXT-X-MEDIA-SEQUENCE"))]
        lines = [*header, f"#EXT-X-MEDIA-SEQUENCE:{first}", *(ln for seg in self.segments[first:] for ln in seg)]
        return "\n".join(lines + ([ENDLIST] if ended else [])) + "\n"


def extinf(segment: list[str]) -> float:
    """A segment's duration, from its #EXTINF line."""
    return next(float(ln.split(":", 1)[1].split(",", 1)[0]) for ln in segment if ln.startswith("#EXTINF"))


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` at once: a reader sees the old content or the new, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


class Playlists:
    """Keeps the EVENT playlist, and the live playlist if asked for, in step with ffmpeg's sliding playlist."""

    def __init__(self, seg: SegmentSettings, muxer_playlist: Path):
        """`muxer_playlist`: where ffmpeg writes its sliding playlist (see `hls_target`)."""
        self.seg = seg
        self.muxer_playlist = muxer_playlist
        self._task: asyncio.Task | None = None
        self._playlist = Playlist(header=[], segments=[], ended=False)
        self._target = 0  # the longest segment, in whole seconds
        self._next = 0  # media sequence number of the next segment to copy

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            self.update()
            await asyncio.sleep(POLL_S)

    def update(self) -> None:
        """Copy the segments ffmpeg listed since the last call."""
        window = Playlist.read(self.muxer_playlist)
        first = next((int(ln.split(":", 1)[1]) for ln in window.header if ln.startswith("#EXT-X-MEDIA-SEQUENCE:")),
                     0)
        new = window.segments[max(0, self._next - first):]
        if not new:
            return
        if first > self._next:
            log.warning("HLS: %d segment(s) slid out of ffmpeg's playlist before they were copied",
                        first - self._next)
        self._next = first + len(window.segments)
        self._target = max(self._target, *(math.ceil(extinf(seg)) for seg in new))
        # ffmpeg's header less what belongs to a sliding playlist, and what an EVENT playlist says.
        opening = [ln for ln in window.header if ln.startswith(("#EXTM3U", "#EXT-X-VERSION"))]
        rest = [ln for ln in window.header if not ln.startswith(
            ("#EXTM3U", "#EXT-X-VERSION", "#EXT-X-MEDIA-SEQUENCE", "#EXT-X-TARGETDURATION"))]
        self._playlist.header = [*opening, f"#EXT-X-TARGETDURATION:{self._target}", "#EXT-X-MEDIA-SEQUENCE:0",
                                 "#EXT-X-PLAYLIST-TYPE:EVENT", *rest]
        self._playlist.segments.extend(new)
        write_atomic(self.seg.playlist, self._playlist.text())
        if self.seg.live_playlist:
            write_atomic(self.seg.live_playlist, self._playlist.window(LIVE_WINDOW, ended=False))

    async def stop(self) -> None:
        """Stop following, with every segment ffmpeg listed copied (call after the encoder has ended)."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.update()


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

