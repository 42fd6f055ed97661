"""The worker's event stream: JSON lines for machines, a live line for people.

JSON mode writes one object per line on stdout (the service reads it);
text mode writes status and a refreshing progress line on stderr.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any

#: The worker's ENDING status carries this message once its outputs go to storage.
STORING = "storing the outputs"


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

    def emit(self, type_: str, **fields: Any) -> None:
        event = {"type": type_, "time": round(time.time(), 3), **fields}
        if self.mode == "json":
            self.stream.write(json.dumps(event, separators=(",", ":")) + "\n")
            self.stream.flush()
        else:
            self._text(event)

    def _text(self, event: dict) -> None:
        kind = event["type"]
        if kind == "progress":
            line = (f"recording {event['elapsed']:7.1f}s  {event['fps']:5.1f} fps  "
                    f"{event['bitrate_kbps']:7.0f} kbit/s  {_size(event['size']):>9}")
            if self.stream.isatty():
                self.stream.write("\r" + line)
                self._live_line = True
            elif int(event["elapsed"]) % 5 == 0:
                self.stream.write(line + "\n")
            self.stream.flush()
            return
        if self._live_line:
            self.stream.write("\n")
            self._live_line = False
        if kind == "status":
            self.stream.write(f"{event['status']}: {event.get('message', '')}".rstrip(": ") + "\n")
        elif kind == "result":
            self.stream.write("COMPLETE\n")
            if f := event.get("file"):
                video = f" {f['width']}x{f['height']}@{f['fps']:g} {f['video_codec']}" if f.get("video_codec") else ""
                audio = f" {f['audio_codec']}" if f.get("audio_codec") else ""
                self.stream.write(f"  file: {f['path']} ({_size(f['size'])}, {f['duration']:.2f} s,{video}{audio})\n")
            if s := event.get("segments"):
                self.stream.write(f"  HLS: {s['playlist']} ({s['segment_count']} segments, {s['duration']:.2f} s)\n")
            if i := event.get("images"):
                self.stream.write(f"  thumbnails: {i['count']} in {i['directory']}\n")
            for d in event.get("streams", []):
                failed = f" [{d['error_code']}] {d['error']}" if d["status"] == "FAILED" else ""
                self.stream.write(f"  stream: {d['url']} {d['status']}, {d['retries']} retries{failed}\n")
        elif kind == "stream":
            why = f" [{event['error_code']}] {event['error']}" if event.get("error_code") else ""
            self.stream.write(f"stream {event['url']}: {event['status']}{why}\n")
        elif kind == "error":
            where = f" (partial file kept: {event['file']['path']})" if event.get("file") else ""
            self.stream.write(f"FAILED [{event['code']}]: {event['message']}{where}\n")
        self.stream.flush()
