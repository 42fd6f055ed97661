"""Turn the crash-safe partial file into the final one, and check it."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from ..errors import OutputInvalid
from ..plan import EgressConfig
from ..probe import MediaFacts, ProbeError, probe
from ..process import ManagedProcess
from .encoder import audio_codec
from .pause import concat_script, sound_pieces

log = logging.getLogger(__name__)


async def finalize(config: EgressConfig, partial: Path,
                   pieces: list[tuple[float | None, float | None]] | None = None, *,
                   sound_shift: float = 0.0) -> MediaFacts:
    """Make the final file at config.output from `partial` and return its facts.

    MP4 is remuxed (no re-encode) into a faststart file, its sound moved
    `sound_shift` seconds later against its picture (GrabClock.sound_shift;
    the picture keeps its times); WebM, OGG and MP3 are already complete and
    are renamed. (A WebM copied by ffmpeg moves its Opus sound by its
    pre-skip, ~7 ms: WebM keeps the encoder's timing.) A paused recording
    keeps only its `pieces` ((inpoint, outpoint) in the file's time, None for
    its own start or end), joined into one continuous file: the picture's
    copied (ffmpeg's concat demuxer), the sound's cut to the sample and
    encoded again (see pause.py). The partial file stays if anything fails.
    """
    if not partial.exists() or partial.stat().st_size == 0:
        raise OutputInvalid("the encoder wrote nothing")
    output = config.output
    assert output is not None
    if config.container == "mp4" or pieces:
        staging = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        script = output.with_name(f".{output.name}.{os.getpid()}.ffconcat")
        # An MP4's sound is read as an input of its own, moved against the picture's. On the file's own clock
        # (-copyts) the picture keeps its times, and a sound moved before 0 is cut there (an edit list).
        shifted = config.container == "mp4" and config.audio is not None and config.video is not None
        sound_input = [*(["-itsoffset", f"{sound_shift:.6f}"] if shifted else []), "-i", str(partial)]
        streams = (["-copyts", "-i", str(partial), *sound_input, "-map", "0:v", "-map", "1:a", "-c", "copy"]
                   if shifted else ["-i", str(partial), "-map", "0", "-c", "copy"])
        if pieces:
            # From the file's own time 0: the concat demuxer would count the first piece from the file's earliest
            # timestamp, which a sound's priming may put below 0, and the sound's pieces would not follow.
            pieces = [(inpoint or 0.0, outpoint) for inpoint, outpoint in pieces]
            # The sound's pieces, cut to the sample and encoded again (see pause.py), from input 0; the picture's,
            # copied (each begins on a keyframe), from the next.
            sound = sound_input if config.audio else []
            picture = ["-f", "concat", "-safe", "0", "-i", str(script)] if config.video else []
            # Both on the file's own clock (ffmpeg would move each input by its own start).
            streams = ["-copyts", *sound, *picture]
            if config.audio:
                streams += ["-filter_complex", sound_pieces(pieces), "-map", "[a]", *audio_codec(config.audio)]
            if config.video:
                script.write_text(concat_script(partial.resolve(), pieces))
                streams += ["-map", f"{1 if sound else 0}:v", "-c:v", "copy"]
        faststart = ["-movflags", "+faststart"] if config.container == "mp4" else []
        remux = ManagedProcess("ffmpeg-remux", ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error",
                                                *streams, *faststart, "-f", config.container, "-y", str(staging)],
                               stop_timeout=30)
        await remux.start()
        try:
            code = await asyncio.wait_for(remux.wait(), 600)
        finally:
            await remux.stop()
            script.unlink(missing_ok=True)
        if code != 0:
            staging.unlink(missing_ok=True)
            raise OutputInvalid(f"could not finish the {config.container.upper()}: {remux.describe_exit()}",
                                details={"partial": str(partial)})
        staging.replace(output)
        partial.unlink()
    else:
        partial.replace(output)
    try:
        facts = await probe(output)
    except ProbeError as exc:
        raise OutputInvalid(f"the finished file is not readable media: {exc}") from None
    if facts.duration <= 0 or (config.video and not facts.video_codec) or (config.audio and not facts.audio_codec):
        raise OutputInvalid(f"the finished file lacks expected streams or duration: {facts.to_dict()}")
    return facts


def thumbnails(directory: Path, pattern: str, since: float) -> list[Path]:
    """The thumbnails of this run, oldest first: files of the series written since it started (a pattern
    without a number or time is the one file overwritten at each capture)."""
    if "%" not in pattern:
        return [p for p in [directory / pattern] if p.exists() and p.stat().st_mtime >= since - 1]
    base = pattern.split("_%", 1)[0]
    return sorted(p for p in directory.glob(f"{base}_*.jpg") if p.stat().st_mtime >= since - 1)


def images_written(directory: Path, pattern: str, since: float, captures: int | None = None) -> dict:
    """What the thumbnails of this run came to; `captures` counts them when one file was overwritten."""
    files = thumbnails(directory, pattern, since)
    return {"directory": str(directory), "count": len(files) if captures is None else captures,
            "first": str(files[0]) if files else None, "last": str(files[-1]) if files else None}
