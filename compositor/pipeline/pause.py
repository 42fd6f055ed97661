"""Pause and resume: a slate for live destinations, and files and HLS without the paused spans.

The one encode runs on through a pause, so live destinations stay connected:
the page shows the slate (a still image, or a plain card) and the sink is
muted, so they get a still picture and silence. Files and HLS are cut
afterwards, without a second encode: the file is joined from the pieces of
the recorded file around each paused span (ffmpeg's concat demuxer, `-c
copy`). A piece may end on any frame but must begin on a keyframe, and the
encoder's keyframes come every 2 s: so resuming waits (on the slate) until
just before the next keyframe, and the recording goes on from that keyframe.
The sound is cut to the sample at the same times and encoded again (it is
cheap): the concat demuxer ends a piece at the first packet past its end in
any stream, and the crash-safe file stores each second's picture before its
sound, so a copied piece lost the sound of up to a second before each pause,
and pieces of sound overlapped at the joins (the sound after a cut came late).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from ..errors import InvalidRequest
from ..outbound import OutboundPolicy
from ..process import run_tool
from .audio import SINK, AudioSink
from .hls import Playlist, extinf, write_atomic

#: a slate image may be this large
SLATE_MAX_BYTES = 5 * 1024 * 1024
SLATE_FETCH_TIMEOUT_S = 10.0
#: the room is back on screen this long before the keyframe the recording resumes at (a page change reaches
#: the capture within a frame or two; the frame clock is known to a frame)
KEYFRAME_LEAD_S = 0.3
#: the text of the default slate
SLATE_TEXT = "We'll be right back"

_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
          (b"GIF89a", "image/gif"))

# Laid over whatever page is recorded (a layout, a web page, a template), so any of them can pause. Styles
# are set through the DOM, which a page's CSP allows; an image it refuses leaves the card.
SHOW_SLATE = """async ({image, text}) => {
  let slate = document.getElementById('__compositor_slate');
  if (!slate) {
    slate = document.createElement('div');
    slate.id = '__compositor_slate';
    Object.assign(slate.style, {position: 'fixed', inset: '0', zIndex: '2147483647', display: 'flex',
      alignItems: 'center', justifyContent: 'center', background: '#14161a', color: '#f2f2f2',
      font: '600 5vmin system-ui, sans-serif', letterSpacing: '0.02em'});
    slate.textContent = text;
    if (image) {
      const img = document.createElement('img');
      Object.assign(img.style, {position: 'absolute', inset: '0', width: '100%', height: '100%',
        objectFit: 'contain', background: '#000'});
      img.src = image;
      try { await img.decode(); slate.appendChild(img); } catch (e) { /* refused or broken: the card stays */ }
    }
    document.documentElement.appendChild(slate);
  }
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
}"""
HIDE_SLATE = """async () => {
  const slate = document.getElementById('__compositor_slate');
  if (slate) slate.remove();
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
}"""


@dataclass
class Span:
    """One paused span, in epoch seconds; `end` is None while it lasts."""

    start: float
    end: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {"start": round(self.start, 3), "end": None if self.end is None else round(self.end, 3)}


def sniff_image(data: bytes) -> str:
    """The MIME type of a PNG, JPEG, GIF or WebP image, or InvalidRequest."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise InvalidRequest("pause.slateUrl: not a PNG, JPEG, GIF or WebP image", details={"field": "pause.slateUrl"})


async def fetch_slate(url: str, policy: OutboundPolicy, proxy: str | None) -> str:
    """The slate image at `url` as a data: URL for the page. Fetched by the worker, never by the page: its host
    is checked under the policy and the connection goes through the outbound gate (`proxy`); no redirects."""
    field = "pause.slateUrl"
    await policy.check_url(url, field)
    timeout = aiohttp.ClientTimeout(total=SLATE_FETCH_TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http, \
                http.get(url, proxy=proxy, allow_redirects=False) as resp:
            if resp.status != 200:
                raise InvalidRequest(f"{field}: the server answered HTTP {resp.status}", details={"field": field})
            data = bytearray()
            async for chunk in resp.content.iter_chunked(1 << 16):
                data += chunk
                if len(data) > SLATE_MAX_BYTES:  # read no further than that
                    raise InvalidRequest(f"{field}: the image is larger than {SLATE_MAX_BYTES >> 20} MB",
                                         details={"field": field})
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise InvalidRequest(f"{field}: could not fetch the image: {exc or type(exc).__name__}",
                             details={"field": field}) from None
    return f"data:{sniff_image(bytes(data))};base64,{base64.b64encode(data).decode()}"


async def mute(sink: AudioSink, muted: bool) -> None:
    """Mute or unmute the page's sink: its monitor (what the encoder hears) then carries silence."""
    await sink.control(f"{'mute' if muted else 'unmute'} the sound", "set-sink-mute", SINK, "1" if muted else "0")


async def video_keyframes(path: Path, read_seconds: float | None = None) -> list[float]:
    """The times (seconds, as stamped in the file) of the video keyframes in `path`; only its first
    `read_seconds` when given. Empty when it has none (or cannot be read yet)."""
    interval = ["-read_intervals", f"%+{read_seconds:g}"] if read_seconds else []
    code, out = await run_tool("ffprobe", ["ffprobe", "-v", "error", "-select_streams", "v:0", *interval,
                                           "-show_entries", "packet=pts_time,flags", "-of", "json", str(path)], 60)
    if code != 0:
        return []
    packets = json.loads(out or b"{}").get("packets", [])
    return [float(p["pts_time"]) for p in packets if "K" in p.get("flags", "") and p.get("pts_time") not in
            (None, "N/A")]


async def audio_start(path: Path) -> float:
    """When (seconds, as stamped in the file) the sound in `path` starts; 0 when it cannot be read."""
    code, out = await run_tool("ffprobe", ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
                                           "stream=start_time", "-of", "json", str(path)], 60)
    streams = json.loads(out or b"{}").get("streams", []) if code == 0 else []
    try:
        return float(streams[0]["start_time"])
    except (IndexError, KeyError, ValueError):
        return 0.0


def kept_pieces(spans: list[tuple[float, float]], keyframes: list[float] | None
                ) -> list[tuple[float | None, float | None]]:
    """What is kept of a recording around its paused `spans` (media seconds): (inpoint, outpoint) pieces, None
    for the file's own start or end. With video (`keyframes`), a piece after a span begins at the first
    keyframe at or after the span's end."""
    pieces: list[tuple[float | None, float | None]] = []
    start: float | None = None
    for pause, resume in spans:
        if start is None or pause > start:
            pieces.append((start, pause))
        if keyframes is None:
            start = resume
        else:
            later = [k for k in keyframes if k >= resume - 0.001]
            if not later:
                return pieces  # paused to the end (no keyframe came after the resume)
            start = later[0]
    pieces.append((start, None))
    return pieces


def sound_pieces(pieces: list[tuple[float, float | None]], source: str = "0:a") -> str:
    """A filter graph that joins the sound of `source` from `pieces` (file seconds; None: to the end), to the
    sample, into `[a]`. Each piece starts where its picture's does: at its inpoint, with silence before its first
    sample if the sound began later (the file's first piece, whose picture may lead)."""
    branches = [f"[{source}]asplit={len(pieces)}" + "".join(f"[s{i}]" for i in range(len(pieces)))]
    for i, (inpoint, outpoint) in enumerate(pieces):
        end = f":end={outpoint:.6f}" if outpoint is not None else ""
        branches.append(f"[s{i}]atrim=start={inpoint:.6f}{end},asetpts=PTS-{inpoint:.6f}/TB,"
                        f"aresample=async=1:first_pts=0[p{i}]")
    joined = "".join(f"[p{i}]" for i in range(len(pieces)))
    return ";".join(branches) + f";{joined}concat=n={len(pieces)}:v=0:a=1[a]"


def concat_script(path: Path, pieces: list[tuple[float | None, float | None]]) -> str:
    """An ffconcat script that plays `path`'s pieces one after another as one stream."""
    name = str(path).replace("'", "'\\''")
    lines = ["ffconcat version 1.0"]
    for inpoint, outpoint in pieces:
        lines.append(f"file '{name}'")
        if inpoint is not None:
            lines.append(f"inpoint {inpoint:.6f}")
        if outpoint is not None:
            lines.append(f"outpoint {outpoint:.6f}")
    return "\n".join(lines) + "\n"


def cut_playlist(playlist_path: Path, spans: list[tuple[float, float]]) -> list[Path]:
    """Leave the paused spans out of a finished HLS playlist; returns the segment files dropped (deleted).

    Segments start on keyframes and the recording resumes on one (just after the span's end), so a segment
    that lies within a span holds only the slate: it goes. The one the pause falls in keeps its slate tail
    (less than a segment), as does one that runs past the resume when segments are longer than the keyframe
    interval. #EXT-X-DISCONTINUITY marks each resume. `spans` are in seconds from the first segment's start."""
    playlist = Playlist.read(playlist_path)
    kept: list[list[str]] = []
    dropped: list[Path] = []
    t = 0.0
    marked = 0  # spans whose resume is marked
    for seg in playlist.segments:
        start = t
        t += extinf(seg)
        if any(pause - 0.05 <= start and t <= resume + KEYFRAME_LEAD_S + 0.1 for pause, resume in spans):
            dropped.append(playlist_path.parent / seg[-1])
            continue
        resumed = sum(1 for _, resume in spans if resume <= start)
        if resumed > marked and kept:
            seg = ["#EXT-X-DISCONTINUITY", *seg]
        marked = resumed
        kept.append(seg)
    write_atomic(playlist_path, Playlist(playlist.header, kept, ended=True).text())
    for f in dropped:
        f.unlink(missing_ok=True)
    return dropped
