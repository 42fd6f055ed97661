"""The one encode: ffmpeg grabs the display and the sink monitor and writes the file.

Timing: x11grab and pulse both stamp packets with the wall clock, so with
`-copyts` and the same `-itsoffset` (minus the recording's start instant) the
two streams keep their true relative timing instead of each being shifted
to start at zero on its own (which is what put audio 45-62 ms off). The
frames then keep those times (grab_times): no filter moves them onto a grid
of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import EncoderFailed
from ..plan import AudioSettings, EgressConfig, SegmentSettings, VideoSettings
from ..process import ManagedProcess
from .grab_clock import locked_period_us
from .hls import MUXER_WINDOW
from .pipes import StartGate

log = logging.getLogger(__name__)

# Sound is shifted this much later to land with its picture: PulseAudio stamps
# monitor audio ~40 ms early, while a painted frame reaches the capture within
# a frame (later under load). Measured with --sync-markers over idle and
# loaded runs (bench/record.py reports the result).
AUDIO_DELAY_S = 0.046

# ffmpeg finishes a file within this after SIGINT; past it, it is killed (a
# stalled output can hang its exit) and the crash-safe partial file is kept.
STOP_DEADLINE_S = 10.0
STATS_PERIOD_S = 0.25  # ffmpeg's progress reports
STAMP_POLL_S = 0.01  # looking for the first frame's stamp, while the encode starts
#: a stop waits at most this for the sound's first packet (see Encoder.stop)
SOUND_WAIT_S = 2.0


@dataclass
class Progress:
    """ffmpeg's latest `-progress` block."""

    frame: int = 0
    fps: float = 0.0
    bitrate_kbps: float = 0.0
    total_size: int = 0
    out_time: float = 0.0
    dup_frames: int = 0
    drop_frames: int = 0
    speed: float = 0.0
    ended: bool = False

    @classmethod
    def from_block(cls, block: dict[str, str]) -> Progress:
        def num(key: str, kind=float, default=0):
            value = block.get(key, "").strip().rstrip("x").removesuffix("kbits/s")
            try:
                return kind(value)
            except ValueError:
                return default

        return cls(
            frame=num("frame", int), fps=num("fps"), bitrate_kbps=num("bitrate"),
            total_size=num("total_size", int), out_time=num("out_time_us", int) / 1e6,
            dup_frames=num("dup_frames", int), drop_frames=num("drop_frames", int),
            speed=num("speed"), ended=block.get("progress") == "end",
        )


async def progress_updates(stdout: asyncio.StreamReader) -> AsyncIterator[Progress]:
    """Each `-progress` block an ffmpeg writes to `stdout`, parsed."""
    block: dict[str, str] = {}
    async for raw in stdout:
        key, _, value = raw.decode(errors="replace").strip().partition("=")
        block[key] = value
        if key == "progress":
            yield Progress.from_block(block)
            block = {}


# Up to this many pixels a second (720p30), one x264 thread keeps up (~6 ms a frame at superfast here) and
# costs ~5% less of ffmpeg's CPU than sliced threads (bench/record.py); beyond it, x264 picks.
ONE_THREAD_PIXELS_PER_S = 1280 * 720 * 30


def x264_threads(v: VideoSettings) -> list[str]:
    return ["-threads", "1"] if v.width * v.height * v.fps <= ONE_THREAD_PIXELS_PER_S else []


def gop_frames(v: VideoSettings) -> int:
    """Frames from one keyframe to the next."""
    return max(1, round(v.fps * v.keyframe_interval))


def keyframe_spacing(v: VideoSettings) -> float:
    """Seconds from one keyframe to the next, in grab time: `gop` grabs (a whisker under keyframe_interval)."""
    return gop_frames(v) * grab_period(v.fps)


def video_args(v: VideoSettings) -> list[str]:
    gop = gop_frames(v)
    rate = ["-b:v", f"{v.bitrate_kbps}k", "-maxrate", f"{v.bitrate_kbps}k", "-bufsize", f"{v.bitrate_kbps * 2}k"]
    if v.codec == "h264":
        # zerolatency: no lookahead or B-frames. Frames leave the encoder at
        # once (live outputs want that) and it saves ~15% of x264's CPU.
        profile = ["-profile:v", v.profile] if v.profile else []
        return ["-c:v", "libx264", "-preset", v.x264_preset, "-tune", "zerolatency", "-pix_fmt", "yuv420p", *profile,
                *rate, "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0", *x264_threads(v)]
    lib = "libvpx" if v.codec == "vp8" else "libvpx-vp9"
    extra = ["-row-mt", "1"] if v.codec == "vp9" else []
    return ["-c:v", lib, "-deadline", "realtime", "-cpu-used", "8", "-pix_fmt", "yuv420p", *rate,
            "-g", str(gop), "-lag-in-frames", "0", "-auto-alt-ref", "0", "-threads", "2", *extra]


def audio_args(a: AudioSettings, then: str = "") -> list[str]:
    """The sound's encoding; `then` appends filters (",atrim=…") after the resampler."""
    # The sink's monitor under-delivers while the page's audio stream starts
    # up; counting samples would then run ahead of the clock. Following the
    # timestamps (silence into gaps) keeps sound on time with the picture.
    return ["-af", f"aresample=async=1:min_hard_comp=0.03{then}", *audio_codec(a)]


def audio_codec(a: AudioSettings) -> list[str]:
    """The encoder options that make the sound of `a`."""
    if a.codec == "pcm":
        codec = ["-c:a", "pcm_s16le"]
    else:
        lib = {"aac": "aac", "opus": "libopus", "mp3": "libmp3lame"}[a.codec]
        codec = ["-c:a", lib, "-b:a", f"{a.bitrate_kbps}k"]
    return [*codec, "-ar", str(a.sample_rate), "-ac", str(a.channels)]


@dataclass(frozen=True)
class MuxTarget:
    """One output of the encode: a muxer, its options, and where it writes."""

    format: str
    target: str
    options: tuple[tuple[str, str], ...] = ()


def file_target(container: str, path: Path) -> MuxTarget:
    """The file, with muxer options that keep a killed recording playable up to its last second."""
    if container == "mp4":
        # Fragmented while recording; remuxed to a faststart MP4 at the end.
        return MuxTarget("mp4", str(path), (("movflags", "+delay_moov+default_base_moof+frag_keyframe"),
                                            ("frag_duration", "1000000"), ("flush_packets", "1")))
    if container == "webm":
        return MuxTarget("webm", str(path), (("cluster_time_limit", "1000"),))
    if container == "mp3":
        # MP3 frames stand alone: a killed recording plays up to its last frame without muxer options.
        return MuxTarget("mp3", str(path))
    return MuxTarget("ogg", str(path), (("page_duration", "1000000"),))


def hls_target(seg: SegmentSettings, muxer_playlist: Path, video: VideoSettings | None) -> MuxTarget:
    """HLS: segments into the user's folder; a playlist of the last MUXER_WINDOW of them, each listed once it
    is complete (temp_file) with its wall-clock time, at `muxer_playlist` (hls.Playlists makes the user's)."""
    length = f"{seg.duration:g}"
    if video:
        # The muxer cuts segment n at the first keyframe at least n × hls_time in. Keyframes come every `gop`
        # grabs, a whisker under the keyframe interval (grab_period: 33332 µs at 30 fps), so the segment's length
        # is given in grab time, 10 µs short (more than the 90 kHz clock's rounding; the shortfall adds up, but
        # reaches a keyframe's spacing only after ~200000 segments).
        length = f"{round(seg.duration / video.keyframe_interval) * keyframe_spacing(video) - 1e-5:.6f}"
    options = [("hls_time", length), ("hls_list_size", str(MUXER_WINDOW)),
               ("hls_flags", "program_date_time+independent_segments+temp_file"),
               ("hls_segment_filename", str(seg.directory / seg.pattern))]
    if seg.timestamp:
        options.append(("strftime", "1"))
    return MuxTarget("hls", str(muxer_playlist), tuple(options))


def live_pipe_target(fd: int) -> MuxTarget:
    """FLV into a pipe the worker fans out to each destination; its failure never stops the others."""
    return MuxTarget("flv", f"pipe:{fd}", (("flvflags", "no_duration_filesize"), ("flush_packets", "1"),
                                           ("onfail", "ignore")))


def pcm_pipe_target(fd: int) -> MuxTarget:
    """Raw 16-bit PCM into a pipe the worker sends to a WebSocket."""
    return MuxTarget("s16le", f"pipe:{fd}", (("flush_packets", "1"),))


def mux_args(targets: list[MuxTarget]) -> list[str]:
    """One encode into every target: the target itself, or ffmpeg's tee muxer when there are several."""
    if len(targets) == 1:
        t = targets[0]
        return [*(arg for k, v in t.options if k != "onfail" for arg in (f"-{k}", v)), "-f", t.format, t.target]
    slaves = "|".join("[" + ":".join(f"{k}={v}" for k, v in (("f", t.format), *t.options)) + "]" + t.target
                      for t in targets)
    # Muxers behind tee do not ask for global headers themselves; MP4 and FLV need them.
    return ["-flags", "+global_header", "-f", "tee", slaves]


def build_argv(config: EgressConfig, *, display: str, pulse_server: str, pulse_source: str,
               start_epoch: float, targets: list[MuxTarget], first_stamp: Path | None = None,
               sound_stamp: Path | None = None, gate: int | None = None) -> list[str]:
    """The whole ffmpeg command for one egress: one encode, every output.

    `start_epoch`: the wall-clock time the encode's timestamps count from. `first_stamp`: a file (its path free
    of filter syntax: our workdir's) that receives the timestamp of the first captured frame (or, without video,
    sound); see `first_capture`. `sound_stamp`: with a picture, a file that receives the first sound's timestamp
    the same way. `gate`: the read end of a StartGate, which ffmpeg reads to its end before it
    opens the captures.
    """
    argv = ["ffmpeg", "-hide_banner", "-nostdin", "-y", "-loglevel", "error", "-progress", "pipe:1",
            "-stats_period", f"{STATS_PERIOD_S:g}", "-copyts",
            # The filters (capture conversion, first-frame stamp) are light: threads for them cost more than they save.
            "-filter_threads", "1", "-filter_complex_threads", "1"]
    inputs = 0
    if gate is not None:
        argv += ["-probesize", str(PROBE_MIN_BYTES), "-f", "data", "-i", f"pipe:{gate}"]
        inputs += 1
    video_input = inputs
    if config.video:
        v = config.video
        # One frame tells ffmpeg all of a grab. The default probe (5 MB: 22 frames at 320x180, 2 at 720p) held
        # back the sound's input, which opens after it: the file began without sound for as long (0.69 s at
        # 320x180, 0.06 s at 720p).
        argv += ["-thread_queue_size", "32", "-probesize", str(PROBE_MIN_BYTES),
                 "-f", "x11grab", "-draw_mouse", "0", "-framerate", grab_rate(v.fps),
                 "-video_size", f"{v.width}x{v.height}",
                 "-itsoffset", f"{-start_epoch:.6f}", "-i", f"{display}+0,0"]
        inputs += 1
    if config.audio:
        # The sound is not probed: its header says all, and a probe waits for its first packet. x11grab's reading
        # starts only once every input is open, so meanwhile its grabs fell due and were then taken at once: the
        # file began with a frame, a jump of two or three, and a repeat.
        argv += ["-thread_queue_size", "64", "-nofind_stream_info", "-f", "pulse", "-server", pulse_server,
                 "-sample_rate", str(config.audio.sample_rate), "-channels", "2",
                 "-itsoffset", f"{AUDIO_DELAY_S - start_epoch:.6f}", "-i", pulse_source]
    # A duration is that much media from the first captured frame (or sample): `-t` would count from
    # START_RECORDING, and lose to ffmpeg's own start-up (a few tenths of a second) what it records.
    limited = config.duration is not None
    if config.video:
        # That many frames: a duration in seconds would keep one more when the grabs fall a whisker short of it.
        trim = f",trim=end_frame={round(config.duration * config.video.fps)}" if limited else ""
        graph = f"{grab_times(config.video.fps)}{trim}[video]"
        if first_stamp:
            graph = f"split[main][first];[first]{_stamp_branch(first_stamp, audio=False)};[main]{graph}"
        argv += ["-filter_complex", f"[{video_input}:v]{graph}", "-map", "[video]"]
    if config.audio:
        argv += ["-map", f"{inputs}:a"]
    if config.video:
        # Frames keep their grab times (see grab_times): a 1/fps time base would round them onto its own grid.
        argv += ["-fps_mode", "passthrough", "-enc_time_base:v", GRAB_TIME_BASE, *video_args(config.video)]
    if config.audio:
        # With a picture, the sound ends with it (the muxer's `shortest` cuts it at the picture's last frame,
        # where -shortest alone lets through what was already encoded); alone, it is trimmed the same way.
        alone = limited and not config.video
        then = f",atrim=duration={config.duration:.3f}" if alone else ""
        stamp = sound_stamp if config.video else first_stamp
        if stamp:
            then += f",asplit[main][first];[first]{_stamp_branch(stamp, audio=True)};[main]anull"
        argv += audio_args(config.audio, then)
    limit = ["-shortest", "-fflags", "+shortest"] if limited and config.video and config.audio else []
    argv += [*limit, "-avoid_negative_ts", "make_zero", "-flush_packets", "1", *mux_args(targets)]
    return argv


#: the smallest probe ffmpeg takes: its first packet
PROBE_MIN_BYTES = 32

#: the encoder's time base for captured frames: fine enough to keep their grab times (MPEG-TS's own clock)
GRAB_TIME_BASE = "1:90000"


def grab_times(fps: float) -> str:
    """The filter that gives the captured frames a constant rate from the first on, at the times they were
    grabbed. x11grab grabs every `grab_period` from its start and never skips a grab (a late one is taken at
    once, and the next on time), so frame N was due N periods after the first. ffmpeg's `fps` filter would
    instead move every frame to the nearest multiple of 1/fps since START_RECORDING: where x11grab's clock
    happened to start against that grid moved a run's whole picture by up to half a frame (±17 ms at 30 fps)
    against its sound."""
    return f"setpts=STARTPTS+N*{grab_period(fps):.6f}/TB"


def grab_period(fps: float) -> float:
    """Seconds from one x11grab grab to the next, in the whole µs x11grab's clock counts: locked to Chromium's
    frames where `fps` divides them (33332 µs at 30 fps, see grab_clock), else 1/fps."""
    return _grab_period_us(fps) / 1e6


def grab_rate(fps: float) -> str:
    """x11grab's -framerate for `fps`: the rate of `grab_period`, exactly."""
    return f"1000000/{_grab_period_us(fps)}"


def _grab_period_us(fps: float) -> int:
    return locked_period_us(fps) or round(1e6 / fps)


#: what a path in a filter graph may hold without escaping (a stamp file elsewhere is not asked for)
FILTER_SAFE_PATH = re.compile(r"[\w./-]+")


def _stamp_branch(path: Path, audio: bool) -> str:
    """A filter branch that passes the first frame (or sound) only and prints its timestamp into `path`: the
    file starts at 0 (make_zero), and this says where that was on the wall clock. The metadata it adds is what
    makes the printer print (it prints frames that carry some); `direct` writes it at once, so the worker learns
    of the first frame from it (Encoder.first_capture). The branch ends after that frame: a branch that went on
    without output would hold the graph open past the others' end (ffmpeg waits on its oldest sink)."""
    a = "a" if audio else ""
    first = "atrim=end_sample=1" if audio else "trim=end_frame=1"
    return (f"{first},{a}metadata=mode=add:key=compositor:value=first,"
            f"{a}metadata=mode=print:file={path}:direct=1,{a}nullsink")


def first_capture(stamp: Path, start_epoch: float) -> float | None:
    """The wall time of the first captured frame (or, without video, sound), from the `first_stamp` file of an
    encode that started at `start_epoch` (its timestamps are the wall clock minus that: -itsoffset); None if
    it has none."""
    try:
        text = stamp.read_text()
    except OSError:
        return None
    match = re.search(r"pts_time:(-?[0-9.e+-]+)\n", text)  # the whole line: it may be being written
    return start_epoch + float(match[1]) if match else None


class Encoder:
    """Owns the ffmpeg process of one egress and reports its progress."""

    def __init__(self, argv: list[str], on_progress: Callable[[Progress], None] | None = None, *,
                 video: bool = True, pass_fds: tuple[int, ...] = (), first_stamp: Path | None = None,
                 sound_stamp: Path | None = None, start_epoch: float = 0.0, gate: StartGate | None = None):
        """`first_stamp`, `start_epoch`: as given to build_argv; with them, `first_frame` is set as soon as the
        first frame is captured, and `first_capture` says when that was (else the next progress report, up to
        STATS_PERIOD_S later, sets it). `sound_stamp`: as given to build_argv (see `stop`). `gate`: the StartGate
        given to build_argv (the encoder owns it): the encode starts at `open_gate`, not at `start`."""
        self._video = video
        self._gate = gate
        self._sound_stamp = sound_stamp
        fds = (*pass_fds, gate.read_fd) if gate else pass_fds
        self._proc = ManagedProcess("ffmpeg", argv, stop_signal=signal.SIGINT, stop_timeout=STOP_DEADLINE_S,
                                    stdout_pipe=True, pass_fds=fds)
        self._on_progress = on_progress
        self._first_stamp = first_stamp
        self._start_epoch = start_epoch
        self.progress = Progress()
        self.first_frame = asyncio.Event()
        #: wall time of the first captured frame (sound, without video), once the stamp has it
        self.first_capture: float | None = None
        self._reader: asyncio.Task | None = None
        self._stamp_reader: asyncio.Task | None = None

    @property
    def process(self) -> ManagedProcess:
        return self._proc

    async def start(self) -> None:
        """Start ffmpeg: it encodes from now on, or, behind a gate, from `open_gate`."""
        try:
            await self._proc.start()
        finally:
            if self._gate:
                self._gate.spawned()
        self._reader = asyncio.create_task(self._read_progress())
        if self._first_stamp:
            self._stamp_reader = asyncio.create_task(self._read_stamp(self._first_stamp))

    async def _read_stamp(self, stamp: Path) -> None:
        found = await self._stamped(stamp, self.first_frame.is_set)
        if found is not None:
            self.first_capture = found
            self.first_frame.set()

    async def _stamped(self, stamp: Path, give_up: Callable[[], bool]) -> float | None:
        """The capture time a stamp file holds (see build_argv) once ffmpeg has written it, looked for every
        STAMP_POLL_S; None once `give_up()` says so first."""
        while (found := first_capture(stamp, self._start_epoch)) is None and not give_up():
            await asyncio.sleep(STAMP_POLL_S)
        return found

    async def _read_progress(self) -> None:
        assert self._proc.proc and self._proc.proc.stdout
        async for progress in progress_updates(self._proc.proc.stdout):
            self.progress = progress
            # Behind tee there is no total size; audio-only has no frame count.
            if progress.frame > 0 or (not self._video and (progress.total_size > 0 or progress.out_time > 0)):
                self.first_frame.set()
            if self._on_progress:
                self._on_progress(progress)

    async def wait(self) -> int:
        code = await self._proc.wait()
        await self._readers_done()
        return code

    def open_gate(self) -> None:
        """Let a gated encoder go on to its captures."""
        if self._gate:
            self._gate.open()

    async def stop(self) -> int | None:
        """Finish the file (SIGINT), killing ffmpeg if it overruns its deadline. An encoder still behind its gate
        has nothing to finish: it is killed (a signal would not end its wait on the gate). One whose sound has not
        begun yet gets it first (SOUND_WAIT_S at most): ffmpeg writes a file only once each of its streams has a
        packet, and the picture's first frame (the egress's start) may come before the sound's first packet: a
        stop right after the start would leave nothing."""
        if self._gate:
            if not self._gate.opened and self._proc.running:
                self._proc.signal(signal.SIGKILL)
            self._gate.close()
        if self._sound_stamp and self.first_frame.is_set():
            deadline = time.monotonic() + SOUND_WAIT_S
            await self._stamped(self._sound_stamp, lambda: not self._proc.running or time.monotonic() >= deadline)
        code = await self._proc.stop()
        await self._readers_done()
        return code

    async def _readers_done(self) -> None:
        if self._stamp_reader:
            self._stamp_reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stamp_reader
        if self._reader:
            await self._reader

    def failure(self) -> EncoderFailed:
        return EncoderFailed(f"the encoder failed: {self._proc.describe_exit()}")
