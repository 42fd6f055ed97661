"""The worker's event stream: JSON lines for machines, a live line for people.

JSON mode writes one object per line on stdout (the service reads it);
text mode writes status and a refreshing progress line on stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import IO

from .protocol import ErrorEvent, Event, ProgressEvent, ResultEvent, StatusEvent, StreamEvent, StreamStatus, WarmEvent


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


class EventSink:
    """Where a worker's status, progress, result and error events go."""

    def __init__(self, mode: str = "text", stream: IO[str] | None = None):
        self.mode = mode
        self.stream = stream or (sys.stdout if mode == "json" else sys.stderr)
        self._live_line = False
        self._gone = False

    def emit(self, event: Event) -> None:
        """Write one event: its JSON line, or its human form. Once no one reads them (the service that started
        the worker died), events are dropped: the work they report goes on, and a file still gets finished."""
        if self._gone:
            return
        try:
            if self.mode == "json":
                self.stream.write(event.wire() + "\n")
                self.stream.flush()
            else:
                self._text(event)
        except (BrokenPipeError, ConnectionResetError):
            self._gone = True
            # What the stream still buffers would fail again when Python flushes it at exit.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())

    def _text(self, event: Event) -> None:
        if isinstance(event, ProgressEvent):
            line = (f"recording {event.elapsed:7.1f}s  {event.fps:5.1f} fps  "
                    f"{event.bitrate_kbps:7.0f} kbit/s  {_size(event.size):>9}")
            if self.stream.isatty():
                self.stream.write("\r" + line)
                self._live_line = True
            elif int(event.elapsed) % 5 == 0:
                self.stream.write(line + "\n")
            self.stream.flush()
            return
        if self._live_line:
            self.stream.write("\n")
            self._live_line = False
        if isinstance(event, WarmEvent):
            self.stream.write(f"WARM: {event.width}x{event.height}, waiting for a job on stdin\n")
        elif isinstance(event, StatusEvent):
            self.stream.write(f"{event.status}: {event.message or ''}".rstrip(": ") + "\n")
        elif isinstance(event, ResultEvent):
            self.stream.write("COMPLETE\n")
            if f := event.file:
                video = f" {f['width']}x{f['height']}@{f['fps']:g} {f['video_codec']}" if f.get("video_codec") else ""
                audio = f" {f['audio_codec']}" if f.get("audio_codec") else ""
                self.stream.write(f"  file: {f['path']} ({_size(f['size'])}, {f['duration']:.2f} s,{video}{audio})\n")
            if s := event.segments:
                self.stream.write(f"  HLS: {s['playlist']} ({s['segment_count']} segments, {s['duration']:.2f} s)\n")
            if i := event.images:
                self.stream.write(f"  thumbnails: {i['count']} in {i['directory']}\n")
            for d in event.streams or []:
                failed = f" [{d['error_code']}] {d['error']}" if d["status"] == StreamStatus.FAILED else ""
                self.stream.write(f"  stream: {d['url']} {d['status']}, {d['retries']} retries{failed}\n")
        elif isinstance(event, StreamEvent):
            why = f" [{event.error_code}] {event.error}" if event.error_code else ""
            self.stream.write(f"stream {event.url}: {event.status}{why}\n")
        elif isinstance(event, ErrorEvent):
            where = f" (partial file kept: {event.file['path']})" if event.file else ""
            self.stream.write(f"FAILED [{event.code}]: {event.message}{where}\n")
        self.stream.flush()
