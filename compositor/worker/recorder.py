"""One egress from start to finished file: the worker's whole job.

Order matters on the way down: the encoder finishes its file first, then the
browser, page server, sink and display go. Every owner is stopped whatever
happened (success, failure, signal, a child's crash), and the temp dir goes
with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..destinations import parse_stream_url, parse_stream_urls
from ..errors import (
    Aborted,
    AudioFailed,
    BrowserFailed,
    CompositorError,
    Conflict,
    DisplayFailed,
    InvalidRequest,
    StartTimeout,
    TemplateFailed,
)
from ..events import EventSink
from ..layouts import resolve_layout
from ..livekit_room import server_from_env, with_query
from ..paths import WORKDIR_PREFIX
from ..pipeline.audio import AudioSink
from ..pipeline.browser import BLOCKED, END_RECORDING, ERROR, REQUEST, START_RECORDING, Browser
from ..pipeline.delivery import Delivery, build_manifest
from ..pipeline.encoder import (
    FILTER_SAFE_PATH,
    Encoder,
    MuxTarget,
    Progress,
    build_argv,
    file_target,
    first_capture,
    grab_period,
    hls_target,
    keyframe_spacing,
    live_pipe_target,
    pcm_pipe_target,
)
from ..pipeline.finalize import finalize, images_written, thumbnails
from ..pipeline.grab_clock import GrabClock, locked_period_us
from ..pipeline.hls import Playlists, finish_segments
from ..pipeline.page_server import PageSpec
from ..pipeline.pause import (
    HIDE_SLATE,
    KEYFRAME_LEAD_S,
    SHOW_SLATE,
    SLATE_TEXT,
    Span,
    audio_start,
    cut_playlist,
    fetch_slate,
    kept_pieces,
    mute,
    video_keyframes,
)
from ..pipeline.pcm_socket import PcmSocket
from ..pipeline.pipes import StartGate
from ..pipeline.sidecars import ClockSample, MediaClock, RoomLog, write_sidecars
from ..pipeline.streams import Destination, StreamFanout
from ..plan import EgressConfig, partial_path
from ..probe import MediaFacts
from ..process import ManagedProcess
from ..protocol import ProgressEvent, Status, StatusEvent, StreamEvent
from ..request import ParticipantFilter
from ..storage.errors import UploadFailed
from ..storage.manifest import result_of
from .gate import OutboundGate
from .preflight import preflight
from .stage import Stage, open_stage, sweep_stale_workdirs

log = logging.getLogger(__name__)

FIRST_FRAME_TIMEOUT_S = 10.0
MUXER_PLAYLIST = "hls-window.m3u8"  # ffmpeg's sliding HLS playlist, in the workdir (see pipeline/hls.py)
#: how often the page's clock is read against the wall clock while recording with sidecars
PAGE_CLOCK_EVERY_S = 60.0


@dataclass
class Outputs:
    """What one egress produced: each output's facts (None for outputs it did not have)."""

    file: MediaFacts | None = None
    segments: dict | None = None
    images: dict | None = None
    streams: list[dict] = field(default_factory=list)
    websocket: dict | None = None
    #: the file's participants and speakers sidecars, by kind
    sidecars: dict[str, Path] = field(default_factory=dict)
    #: when the outputs were stored: the stored manifest (locations of everything)
    delivered: dict | None = None

    def to_dict(self) -> dict:
        out: dict = {}
        if self.delivered:
            out.update(result_of(self.delivered))
            if self.images and "images" in out:
                # The manifest lists what is stored: one overwritten thumbnail stands for all its captures.
                out["images"]["count"] = self.images["count"]
        else:
            for name in ("file", "segments", "images"):
                value = getattr(self, name)
                if value:
                    out[name] = value.to_dict() if name == "file" else value
            if self.file and self.sidecars:
                out["file"]["sidecars"] = {kind: str(path) for kind, path in self.sidecars.items()}
        if self.streams:
            out["streams"] = self.streams
        if self.websocket:
            out["websocket"] = self.websocket
        return out


class Recorder:
    """Runs one EgressConfig through display, sink, browser and encoder to every output."""

    def __init__(self, config: EgressConfig, events: EventSink, stop: asyncio.Event, gate: OutboundGate, *,
                 landing_ms: float | None = None):
        """`landing_ms`: where the page's frames landed in Chromium's tick in the last job of this frame (the
        service's, from its ResultEvent): the grabs are aimed by it when the page's own cannot be measured."""
        self.config = config
        self._expected_landing = landing_ms / 1000 if landing_ms is not None else None
        #: where this job's frames landed in the tick (ms), when they kept to one phase: for the next job's aim
        self.landing_ms: float | None = None
        #: what every connection the request leads to goes through (its policy says where they may go)
        self.gate = gate
        self.policy = gate.policy
        #: page problems that end the recording: none for a web page (not ours to judge), any while a
        #: layout starts, and its uncaught exceptions once it records
        self._fatal: tuple[str, ...] = ()
        self.events = events
        self.stop_requested = stop
        self.timings: dict[str, float] = {"launched": time.time()}
        #: why recording ended: limit (duration reached), stopped, room_ended, idle, streams_removed, or failed
        self.stopped_by = "failed"
        #: with stopped_by idle: why, in words ("no one published for 30 s")
        self.stop_reason: str | None = None
        self._last_progress_emit = 0.0
        self._fanout: StreamFanout | None = None
        self._socket: PcmSocket | None = None
        self._partial: Path | None = partial_path(config.output) if config.output else None
        #: how much later the file's sound belongs with its pictures than the encoder put it (s; GrabClock.sound_shift)
        self._sound_shift = 0.0
        self.delivery: Delivery | None = None
        self._browser: Browser | None = None
        #: the outputs are being stored (recording is over)
        self.storing = False
        #: every paused span so far (files and HLS leave them out)
        self.pauses: list[Span] = []
        self._sink: AudioSink | None = None
        self._slate: asyncio.Task | None = None
        #: the wall-clock time the encode's timestamps count from (set as it starts, before START_RECORDING)
        self.epoch = time.time()
        #: when (seconds from `epoch`) the encode's first sample was captured: its first video frame, or its first
        #: sound without video; the files' own clocks start there
        self.media_start: float | None = None
        #: with sidecars: what the page reported of the room, and its clock read against the wall clock
        self._room_log: RoomLog | None = RoomLog() if config.sidecars else None
        self._page_clock: list[ClockSample] = []
        #: the pieces of the recording as captured that its file keeps, when pauses left some out
        self._kept: tuple[tuple[float | None, float | None], ...] = ()

    def _status(self, status: Status, message: str = "", **extra) -> None:
        self.events.emit(StatusEvent(status=status, egress_id=self.config.egress_id, message=message or None,
                                     **extra))

    async def run(self, stage: Stage | None = None) -> Outputs:
        """Record to every output of the config; returns what they became, or raises CompositorError.

        `stage` is a warm worker's display, sink and browser, already up for this frame size.
        """
        cfg = self.config
        self._status(Status.STARTING)
        await preflight(cfg, self.gate)
        async with contextlib.AsyncExitStack() as outer:
            if cfg.upload:
                self.delivery = await outer.enter_async_context(Delivery(cfg.upload, cfg.egress_id, self.events,
                                                                         self.gate.url))
            if stage is not None:
                async with contextlib.AsyncExitStack() as stack:
                    outputs = await self._record(stack, stage)
            else:
                sweep_stale_workdirs()
                workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-{cfg.egress_id}-"))
                outer.callback(shutil.rmtree, workdir, ignore_errors=True)
                async with contextlib.AsyncExitStack() as stack:
                    stage = await open_stage(stack, workdir, *cfg.frame, self.gate)
                    outputs = await self._record(stack, stage)
            if self.delivery:
                # After the stage is down: uploads need no browser or display.
                await self._deliver(outputs)
        return outputs

    async def _deliver(self, outputs: Outputs) -> None:
        cfg = self.config
        file = outputs.file and {**outputs.file.to_dict(), "started_at": self.timings.get("first_frame"),
                                 "ended_at": self.timings.get("stop_requested")}
        images = self._thumbnails() if cfg.images else []
        manifest = build_manifest(egress_id=cfg.egress_id, room_name=cfg.room_name, staging=self.delivery.staging,
                                  file=file, playlist=cfg.segments.playlist if cfg.segments else None,
                                  live_playlist=cfg.segments.live_playlist if cfg.segments else None,
                                  images=images, sidecars=list(outputs.sidecars.values()))
        self._status(Status.ENDING, "storing the outputs", storing=True)
        self.storing = True
        try:
            outputs.delivered = await self.delivery.deliver(manifest)
        except UploadFailed as exc:
            if cfg.output and cfg.output.exists():
                exc.details["file"] = str(cfg.output)
            raise
        self.timings["stored"] = time.time()

    async def _record(self, stack: contextlib.AsyncExitStack, stage: Stage) -> Outputs:
        cfg = self.config
        display, sink, pages, browser, workdir = stage.display, stage.sink, stage.pages, stage.browser, stage.workdir
        self._browser = browser
        self._sink = sink
        self.timings["browser_ready"] = time.time()
        if cfg.slate_url:
            # Fetched while the page starts, so that a pause shows it at once.
            self._slate = asyncio.create_task(fetch_slate(cfg.slate_url, self.policy, self.gate.url))
            # Its failure is told when a pause wants it (the card is shown instead), not as an unread error.
            self._slate.add_done_callback(lambda task: task.cancelled() or task.exception())
            stack.callback(self._slate.cancel)
        watched = [p for p in (display.process, sink.process) if p is not None]
        # Watches where the page's frames land while it gets ready, to start the grabs between them.
        period = cfg.video and locked_period_us(cfg.video.fps)
        grab_clock = GrabClock(display.name, period, expected_landing=self._expected_landing) if period else None
        if grab_clock:
            await grab_clock.start()
            stack.push_async_callback(grab_clock.stop)
        encoder, playlist, first_stamp = await self._gated_encoder(stack, stage)
        if cfg.source == "web":
            await self._until_ready(browser, watched, browser.open(cfg.web_url, cfg.start_timeout))
            if cfg.await_start_signal:
                await self._until_ready(browser, watched, self._start_signal(browser), cfg.start_timeout)
        elif cfg.template_url:
            # The caller's own page (LiveKit's custom_base_url): its errors are its own, its signals count.
            server = server_from_env()
            url = with_query(cfg.template_url, url=server.url,
                             token=server.recorder_token(cfg.room_name, cfg.egress_id))
            await self._until_ready(browser, watched, browser.open(url, cfg.start_timeout))
            await self._until_ready(browser, watched, self._start_signal(browser), cfg.start_timeout)
        else:
            spec = PageSpec(cfg.layout, cfg.overlays, cfg.participants, cfg.room_name, cfg.sync_markers,
                            routing=cfg.routing, idle_stop=cfg.idle_stop,
                            participant_filter=cfg.participant_filter, sidecars=cfg.sidecars)
            # Before the page opens: those present at the start are reported before START_RECORDING.
            browser.room_log = self._room_log
            if cfg.source == "livekit":
                server = server_from_env()
                spec = dataclasses.replace(spec, room_url=server.url,
                                           token=server.recorder_token(cfg.room_name, cfg.egress_id),
                                           focus=cfg.focus.query if cfg.focus else {})
            url = pages.show(spec)
            # A layout is ours: it reaches its own server and the allowed hosts (the LiveKit server among them).
            await browser.restrict(pages.base_url, self.policy.allowed)
            self._fatal = (ERROR, REQUEST, BLOCKED)
            await self._until_ready(browser, watched, browser.open(url, cfg.start_timeout))
            self.timings["page_opened"] = time.time()
            await self._until_ready(browser, watched, self._start_signal(browser), cfg.start_timeout)
            self._fatal = (ERROR,)
            if cfg.participant_filter and not await browser.evaluate(
                    "() => typeof window.compositorSetParticipants === 'function'"):
                # A page that does not apply the filter would record whom it leaves out: refuse it.
                raise TemplateFailed("the layout page does not apply the participant filter: it must start with "
                                     "our boot(), as _base.html.j2 does")
        self.timings["start_recording"] = time.time()
        async with grab_clock.aligned(lambda: encoder.process.pid) if grab_clock else contextlib.nullcontext():
            encoder.open_gate()
        self.timings["encoder_started"] = time.time()
        if self._fanout:
            await self._fanout.start()
        if self._socket:
            await self._socket.start()
        if playlist:
            playlist.start()
        if self.delivery:
            stack.push_async_callback(self.delivery.stop_following)
            self.delivery.follow([p for p in (cfg.segments.playlist, cfg.segments.live_playlist) if p]
                                 if cfg.segments else [],
                                 self._finished_thumbnails if cfg.images else None)

        failure = await self._until_first_frame(encoder, browser, watched)
        if failure is None:
            self.timings["first_frame"] = encoder.first_capture or time.time()
            if grab_clock:
                grab_clock.grabs_began(self.timings["first_frame"])
            if self._room_log:
                await self._read_page_clock(browser)
                clock = asyncio.create_task(self._follow_page_clock(browser))
                stack.callback(clock.cancel)
            # What this job holds, so a supervisor (or a test) can check it all goes away.
            owners = {"xvfb": display.process, "pulseaudio": sink.process, "chromium": browser.process,
                      "ffmpeg": encoder.process}
            # Its time is the first frame's (the egress's startedAt), not when the worker learned of it.
            self._status(Status.ACTIVE, await self._start_notice(browser), time=round(self.timings["first_frame"], 3),
                         resources={"display": display.name, "workdir": str(workdir),
                                    "pids": {k: p.pid for k, p in owners.items() if p}})
            failure = await self._until_done(encoder, browser, watched)
        self.timings["stop_requested"] = time.time()
        if grab_clock:
            self.timings.update(grab_clock.margins())
            steady = grab_clock.steady_landing()
            self.landing_ms = round(steady * 1000, 2) if steady is not None else None
            cfg = self.config
            # (Moved in an MP4 file only: see finalize.)
            shift = grab_clock.sound_shift() if cfg.container == "mp4" and cfg.audio and cfg.video else None
            if shift is not None:
                self._sound_shift = shift
                self.timings["sound_shift_ms"] = round(shift * 1000, 2)
            if grab_clock.released:
                self.timings["grabs_released"] = grab_clock.released
        if self.media_start is not None:
            self.timings["first_sample"] = self.epoch + self.media_start
        if self.paused:
            self.pauses[-1].end = self.timings["stop_requested"]  # paused to the end
        self._status(Status.ENDING)
        code = await encoder.stop()
        log.debug("encoder exit %s", code)
        outputs = Outputs()
        if playlist:
            await playlist.stop()
        if self._fanout:
            await self._fanout.close()
            outputs.streams = [d.info() for d in self._fanout.destinations] if cfg.stream else []
        if self._socket:
            await self._socket.close()
            outputs.websocket = self._socket.info()
        if cfg.segments:
            if self.pauses:
                await self._cut_segments()
            outputs.segments = finish_segments(cfg.segments)
        if cfg.images:
            outputs.images = images_written(cfg.images.directory, cfg.images.pattern, self.epoch,
                                            self._fanout.captures if cfg.images.overwrite else None)
        if cfg.output:
            outputs.file = await self._finish_file(failure)
            if first_stamp and self._page_clock:
                outputs.sidecars = await self._write_sidecars(outputs.file, first_stamp)
        elif failure is not None:
            raise failure
        self.timings["finalized"] = time.time()
        return outputs

    async def _gated_encoder(self, stack: contextlib.AsyncExitStack,
                             stage: Stage) -> tuple[Encoder, Playlists | None, Path | None]:
        """The encoder with its outputs, started while the page gets ready and waiting at its gate (StartGate)
        until START_RECORDING: its own start-up is then behind it. Its playlists, and the file that gets its
        first frame's time, come with it."""
        cfg = self.config
        targets: list[MuxTarget] = []
        if cfg.output:
            targets.append(file_target(cfg.container, self._partial))
        if cfg.segments:
            targets.append(hls_target(cfg.segments, stage.workdir / MUXER_PLAYLIST, cfg.video))
        if cfg.stream or cfg.images:
            # Closed after the encoder (the exit stack runs backwards): destinations get the stream's end.
            self._fanout = StreamFanout(cfg.stream, cfg.images, cfg.video, self.policy,
                                        on_change=self._stream_changed)
            stack.push_async_callback(self._fanout.close)
            targets.append(live_pipe_target(self._fanout.write_fd))
        if cfg.websocket:
            self._socket = PcmSocket(cfg.websocket, cfg.audio.sample_rate, self.gate.url)
            stack.push_async_callback(self._socket.close)
            await self._socket.connect()
            targets.append(pcm_pipe_target(self._socket.write_fd))
        pipes = tuple(owner.write_fd for owner in (self._fanout, self._socket) if owner)
        first_stamp = stage.workdir / f"{cfg.egress_id}.first-frame"
        sound_stamp = stage.workdir / f"{cfg.egress_id}.first-sound" if cfg.video and cfg.audio else None
        if not FILTER_SAFE_PATH.fullmatch(str(first_stamp)):
            first_stamp = sound_stamp = None
        # Stopped after the encoder (the exit stack runs backwards), so it copies ffmpeg's last segments.
        playlist = Playlists(cfg.segments, stage.workdir / MUXER_PLAYLIST) if cfg.segments else None
        if playlist:
            stack.push_async_callback(playlist.stop)
        gate = StartGate()
        stack.callback(gate.close)  # the encoder closes it when it stops; this, should it never be made
        self.epoch = time.time()
        encoder = Encoder(build_argv(cfg, display=stage.display.name, pulse_server=stage.sink.server,
                                     pulse_source=stage.sink.monitor, start_epoch=self.epoch, targets=targets,
                                     first_stamp=first_stamp, sound_stamp=sound_stamp, gate=gate.read_fd),
                          on_progress=self._on_progress, video=cfg.video is not None, pass_fds=pipes,
                          first_stamp=first_stamp, sound_stamp=sound_stamp, start_epoch=self.epoch, gate=gate)
        stack.push_async_callback(encoder.stop)
        await encoder.start()
        return encoder, playlist, first_stamp

    async def _finish_file(self, failure: CompositorError | None) -> MediaFacts:
        partial = self._partial
        try:
            facts = await finalize(self.config, partial, await self._kept_pieces(partial) if self.pauses else None,
                                   sound_shift=self._sound_shift)
        except CompositorError as exc:
            kept = partial if partial.exists() else None
            err = failure or exc
            if kept:
                err.details.setdefault("file", str(kept))
            raise err from None
        if failure is not None:
            failure.details["file"] = facts.path
            raise failure
        return facts

    async def _follow_page_clock(self, browser: Browser) -> None:
        """Read the page's clock again now and then while recording, so the sidecars follow its drift against
        the wall clock. (Not at the end: a busy page's answer would hold up the file's delivery.)"""
        while True:
            await asyncio.sleep(PAGE_CLOCK_EVERY_S)
            await self._read_page_clock(browser)

    async def _read_page_clock(self, browser: Browser) -> None:
        """Read the page's clock (performance.now()) against the wall clock: the best of a few round trips,
        each placed at its middle (off by at most half of it, a few ms)."""
        best: tuple[float, ClockSample] | None = None
        for _ in range(3):
            before = time.time()
            try:
                page_ms = float(await browser.evaluate("() => performance.now()", timeout=1.0))
            except (BrowserFailed, TypeError, ValueError):
                return  # a page that does not answer gets no new reading: the one it had stands
            after = time.time()
            if best is None or after - before < best[0]:
                best = (after - before, ClockSample(page_ms, (before + after) / 2))
        self._page_clock[1:] = [best[1]]  # the first reading and the latest are what MediaClock uses

    async def _write_sidecars(self, facts: MediaFacts, first_stamp: Path) -> dict[str, Path]:
        """The participants and speakers sidecars next to the finished file (none if the first frame's time is
        unknown: they would be off by an unknown amount)."""
        cfg = self.config
        first = first_capture(first_stamp, self.epoch)
        if first is None:
            log.warning("the first frame's time is unknown; no sidecars")
            return {}
        # The first captured frame sits at `first_at` in the file (0, unless the sound starts before it).
        clock = MediaClock(tuple(self._page_clock), zero_epoch=first - facts.first_at, duration=facts.duration,
                           pieces=self._kept)
        return write_sidecars(Path(facts.path), self._room_log, clock, egress_id=cfg.egress_id,
                              room_name=cfg.room_name)

    def _thumbnails(self) -> list[Path]:
        images = self.config.images
        return thumbnails(images.directory, images.pattern, self.epoch)

    def _finished_thumbnails(self) -> list[Path]:
        """The thumbnails no longer being written: all but the newest of a series; the overwritten one is
        always whole (it is renamed into place)."""
        images = self._thumbnails()
        return images if self.config.images.overwrite else images[:-1]

    @property
    def stream_only(self) -> bool:
        """An egress whose only lasting output is its streams: it ends when they do."""
        return self.config.stream is not None and not self.config.output and not self.config.segments

    async def update_streams(self, add: list[str], remove: list[str]) -> list[dict]:
        """Add and remove live destinations; returns every destination's state."""
        if not self.config.stream:
            raise Conflict("NO_STREAM_OUTPUT", "this egress has no stream output; start it with one (urls may "
                                               "be empty) to add destinations later")
        if self._fanout is None or self.timings.get("stop_requested"):
            raise Conflict("EGRESS_NOT_ACTIVE", "destinations can be changed only while the egress is live")
        targets = parse_stream_urls(add, "add")
        removals = [parse_stream_url(url, f"remove.{i}").url for i, url in enumerate(remove)]
        for url in removals:
            await self._fanout.remove(url)
        for target in targets:
            self._fanout.add(target)
        return [d.info() for d in self._fanout.destinations]

    async def update_layout(self, name: str) -> dict:
        """Switch the page to another built-in layout (and theme) while recording; returns when it is on screen."""
        if self.config.source == "web":
            raise Conflict("NOT_A_LAYOUT", "this egress records a web page; it has no layout to change")
        if self._browser is None or "first_frame" not in self.timings or self.timings.get("stop_requested"):
            raise Conflict("EGRESS_NOT_ACTIVE", "the layout can be changed only while the egress records")
        if self.config.template_url:
            # As LiveKit does: @livekit/egress-sdk reads the layout from the recorder's participant metadata.
            await server_from_env().set_recorder_layout(self.config.room_name, self.config.egress_id, name)
            self.timings["layout_changed"] = time.time()
            return {"layout": name, "at": self.timings["layout_changed"]}
        ref = resolve_layout(name)
        if not ref.builtin:
            raise InvalidRequest(f"layout {name!r}: a running egress switches between built-in layouts; a custom "
                                 "layout is chosen when the egress starts", details={"field": "layout"})
        # The LiveKit spelling (grid-light) reaches the page, as egress-sdk templates expect.
        await self._browser.evaluate("name => window.compositorSetLayout(name)", f"{ref.name}-{ref.theme}")
        self.timings["layout_changed"] = time.time()
        return {"layout": f"{ref.name}-{ref.theme}", "at": self.timings["layout_changed"]}

    async def update_participants(self, participants: ParticipantFilter) -> dict:
        """Change who the page shows and plays while recording; returns once the new filter is on screen (and
        whoever it leaves out already silent)."""
        if self.config.source == "web" or self.config.template_url:
            raise Conflict("NOT_FILTERABLE", "participants are filtered by our layout pages; this egress records "
                                             "a page of its own")
        if self.config.focus:
            raise Conflict("NOT_FILTERABLE", "a participant or track egress already picks whom it records")
        if self._browser is None or "first_frame" not in self.timings or self.timings.get("stop_requested"):
            raise Conflict("EGRESS_NOT_ACTIVE", "participants can be changed only while the egress records")
        wanted = participants.model_dump(exclude_none=True)
        # Passed as an argument (serialized by the browser driver), never spliced into script or markup.
        await self._browser.evaluate("filter => window.compositorSetParticipants(filter)", wanted)
        self.timings["participants_changed"] = time.time()
        return {"participants": wanted, "at": self.timings["participants_changed"]}

    @property
    def paused(self) -> bool:
        """The egress is paused now."""
        return bool(self.pauses) and self.pauses[-1].end is None

    def pause_state(self) -> dict:
        """Whether it is paused, and every paused span so far (epoch seconds)."""
        return {"paused": self.paused, "pauses": [span.to_dict() for span in self.pauses]}

    def _must_be_recording(self, what: str) -> None:
        if self._browser is None or "first_frame" not in self.timings or self.timings.get("stop_requested"):
            raise Conflict("EGRESS_NOT_ACTIVE", f"the egress can be {what} only while it records")

    async def pause(self) -> dict:
        """Stop recording into the files and HLS from now on; live destinations get the slate and silence.
        Returns once the slate is on screen."""
        self._must_be_recording("paused")
        if self.paused:
            raise Conflict("ALREADY_PAUSED", "the egress is already paused; resume it first")
        # The span starts when asked: whatever the page shows from here on is left out of the files.
        self.pauses.append(Span(time.time()))
        if self.config.audio:
            await mute(self._sink, True)
        await self._browser.evaluate(SHOW_SLATE, {"image": await self._slate_image(), "text": SLATE_TEXT},
                                     timeout=10)
        log.info("paused")
        return self.pause_state()

    async def resume(self) -> dict:
        """Record again; returns once the page is back on screen (just before the keyframe the files go on
        from, at most one keyframe interval later)."""
        self._must_be_recording("resumed")
        if not self.paused:
            raise Conflict("NOT_PAUSED", "the egress is not paused")
        await self._until_keyframe_lead()
        await self._browser.evaluate(HIDE_SLATE)
        if self.config.audio:
            await mute(self._sink, False)
        self.pauses[-1].end = time.time()
        log.info("resumed")
        return self.pause_state()

    async def _slate_image(self) -> str | None:
        """The request's slate as a data: URL, or None for the default card (also when it could not be had)."""
        if self._slate is None:
            return None
        try:
            return await asyncio.shield(self._slate)
        except CompositorError as exc:
            log.warning("the slate image is not shown (the card is): %s", exc)
            return None

    async def _until_keyframe_lead(self) -> None:
        """Wait until the next video keyframe is KEYFRAME_LEAD_S away: the files go on from a keyframe (their
        pieces are joined without encoding again), so the page stays on the slate until just before one.
        The encoder makes one every `gop` frames from its first, at a constant frame rate. Should the frame
        clock be known late by more than the lead, the files go on from the keyframe after (2 s on)."""
        cfg = self.config
        if not cfg.video or not (self._partial or cfg.segments) or self.media_start is None:
            return
        step = keyframe_spacing(cfg.video)
        now = time.time() - self.epoch
        next_key = self.media_start + math.ceil((now + KEYFRAME_LEAD_S - self.media_start) / step) * step
        await asyncio.sleep(max(0.0, next_key - KEYFRAME_LEAD_S - now))

    def _media_spans(self, origin: float = 0.0) -> list[tuple[float, float]]:
        """The paused spans in seconds from start_recording, or on a clock that reads `origin` at the encode's
        first sample."""
        shift = self.epoch + (self.media_start or 0.0) - origin
        return [(span.start - shift, span.end - shift) for span in self.pauses]

    async def _kept_pieces(self, partial: Path) -> list[tuple[float | None, float | None]]:
        """The file's pieces around the paused spans, each after a span starting on a keyframe."""
        if self.config.video is not None:
            keyframes = await video_keyframes(partial)
            # The file's clock reads its first keyframe (its first frame) where the encode took its first frame.
            origin = keyframes[0] if keyframes else 0.0
        else:
            keyframes, origin = None, await audio_start(partial)
        spans = self._media_spans(origin)
        pieces = kept_pieces(spans, keyframes)
        log.info("paused %s: the file keeps %s", spans, pieces)
        # The sidecars place the room's moments on the file through the same pieces, from its first frame.
        self._kept = tuple((None if a is None else a - origin, None if b is None else b - origin) for a, b in pieces)
        return pieces

    async def _cut_segments(self) -> None:
        """Leave the paused spans out of the HLS playlist (segments wholly inside one go; each resume is a
        discontinuity). Its first segment starts at the encode's first frame."""
        cut_playlist(self.config.segments.playlist, self._media_spans())

    async def _start_notice(self, browser: Browser) -> str:
        """What the caller should know about how recording started: a LiveKit room with nothing published."""
        if self.config.source != "livekit" or self.config.template_url:
            return ""
        with contextlib.suppress(BrowserFailed):
            if await browser.evaluate("() => window.compositor && window.compositor.startedBy") == "timeout":
                log.warning("nothing was published in room %s; recording anyway", self.config.room_name)
                return "nothing was published in the room before the wait ran out; recording anyway"
        return ""

    def _stream_changed(self, dest: Destination) -> None:
        index = self._fanout.destinations.index(dest) if self._fanout and dest in self._fanout.destinations else -1
        self.events.emit(StreamEvent(egress_id=self.config.egress_id, index=index, **dest.info()))

    async def _start_signal(self, browser: Browser) -> None:
        while (signal := await browser.signals.get()) != START_RECORDING:
            if signal == END_RECORDING:
                raise BrowserFailed("the page ended the recording before it started")

    async def _until_ready(self, browser: Browser, watched: list[ManagedProcess], step,
                           timeout: float | None = None) -> None:
        """Run a start-up step, failing fast if a child dies or a stop is asked for."""
        step_task = asyncio.ensure_future(step)
        guards = self._guards(browser, watched)
        try:
            done, _ = await asyncio.wait([step_task, *guards], timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in guards:
                task.cancel()
        if step_task in done:
            step_task.result()
            return
        step_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, CompositorError):
            await step_task
        if not done:
            errors = "; ".join(p.message for p in list(browser.problems)[-3:])
            raise StartTimeout(f"the page did not signal {START_RECORDING} within {timeout:g} s"
                               + (f" (page errors: {errors})" if errors else ""))
        guard = done.pop()
        if self.stop_requested.is_set():
            raise Aborted("stopped before recording began")
        raise guard.result()

    def _guards(self, browser: Browser, watched: list[ManagedProcess]) -> list[asyncio.Task]:
        """Tasks that finish when something ends the recording early, each returning its error."""

        async def stop_asked():
            await self.stop_requested.wait()
            return Aborted("stopped")

        async def browser_died():
            return BrowserFailed(f"the browser failed: {await asyncio.shield(browser.failure)}")

        async def child_died(proc: ManagedProcess):
            await proc.wait()
            kind = DisplayFailed if proc.name == "Xvfb" else AudioFailed
            return kind(f"{proc.describe_exit()}")

        async def page_broke():
            problem = await browser.next_problem(self._fatal, past=True)
            return TemplateFailed(f"the layout page failed: {problem.message}", details={"kind": problem.kind})

        return [asyncio.create_task(stop_asked()), asyncio.create_task(browser_died()),
                *(asyncio.create_task(child_died(p)) for p in watched),
                *([asyncio.create_task(page_broke())] if self._fatal else [])]

    async def _until_first_frame(self, encoder: Encoder, browser: Browser,
                                 watched: list[ManagedProcess]) -> CompositorError | None:
        first = asyncio.create_task(encoder.first_frame.wait())
        exited = asyncio.create_task(encoder.wait())
        guards = self._guards(browser, watched)
        done, _ = await asyncio.wait([first, exited, *guards], timeout=FIRST_FRAME_TIMEOUT_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        for task in (first, exited, *guards):
            if task not in done:
                task.cancel()
        if first in done:
            return None
        if exited in done:
            return encoder.failure()
        if not done:
            return StartTimeout(f"the encoder produced no frame within {FIRST_FRAME_TIMEOUT_S:g} s")
        err = done.pop().result()
        return None if isinstance(err, Aborted) else err

    async def _until_done(self, encoder: Encoder, browser: Browser,
                          watched: list[ManagedProcess]) -> CompositorError | None:
        """Wait for the end: duration reached, stop asked, page ended, room idle, or a failure."""

        exited = asyncio.create_task(encoder.wait())
        ended = asyncio.create_task(browser.until_signal(END_RECORDING))
        idle = asyncio.ensure_future(asyncio.shield(browser.idle))
        streams = asyncio.ensure_future(asyncio.shield(self._fanout.outcome) if self.stream_only
                                        else asyncio.get_running_loop().create_future())
        guards = self._guards(browser, watched)
        if self._socket:
            guards.append(asyncio.ensure_future(asyncio.shield(self._socket.failure)))
        done, pending = await asyncio.wait([exited, ended, idle, streams, *guards],
                                           return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if streams in done:
            if streams.result() == "all_removed":
                self.stopped_by = "streams_removed"
                return None
            return self._fanout.failure()
        if exited in done:
            code = exited.result()
            self.stopped_by = "limit"
            return None if code == 0 else encoder.failure()
        if ended in done:
            log.info("the page signalled %s", END_RECORDING)
            self.stopped_by = "room_ended"
            return None
        if idle in done:
            log.info("the room is idle: %s", idle.result().reason)
            self.stopped_by, self.stop_reason = "idle", idle.result().reason
            return None
        err = done.pop().result()
        if isinstance(err, Aborted):
            self.stopped_by = "stopped"
            return None
        return err

    def _clock_start(self, p: Progress) -> None:
        """Narrow down when the encode's first sample was captured. A report comes after what it counts was
        captured, so each gives a time no earlier than the truth: its own time less what it counts (frames at
        the constant rate, or the sound's length since the first report). The least of them is within a frame
        or two when reports are read as they come; on a loaded machine, later (see _until_keyframe_lead)."""
        if self.config.video:
            if p.frame <= 0:
                return
            counted = (p.frame - 1) * grab_period(self.config.video.fps)
        elif p.out_time > 0:
            counted = p.out_time
        else:
            return
        start = time.time() - self.epoch - counted
        self.media_start = start if self.media_start is None else min(self.media_start, start)

    def _on_progress(self, p: Progress) -> None:
        self._clock_start(p)
        now = time.monotonic()
        if now - self._last_progress_emit < 0.95 and not p.ended:
            return
        self._last_progress_emit = now
        size = p.total_size
        if not size and self._partial and self._partial.exists():
            size = self._partial.stat().st_size  # behind ffmpeg's tee there is no total
        self.events.emit(ProgressEvent(egress_id=self.config.egress_id, elapsed=round(p.out_time, 2),
                                       frames=p.frame, fps=p.fps, bitrate_kbps=p.bitrate_kbps, size=size,
                                       dup_frames=p.dup_frames, drop_frames=p.drop_frames, speed=p.speed))
