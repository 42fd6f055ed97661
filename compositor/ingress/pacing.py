"""Pacing an input's frames into the room: every frame goes out when its time comes, audio and video by one
clock, so they stay together.

A file is read ahead and sent in real time by its frame times (never faster). A live input is sent as late
as its latest arrivals of the last seconds (a jitter buffer as deep as its audio and video are uneven: TCP,
a muxer's interleaving, MPEG-TS's bundled audio), so every frame is there before its time; but no later.
What still falls too far behind its time (the backlog a live stream starts with, a stall caught up) is
dropped rather than sent late, since late audio would play behind its video from then on.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import av

from .errors import InputStalled
from .inputs import Frame, PassedVideo

log = logging.getLogger(__name__)

#: A frame this far behind its time is dropped, not sent.
STALE_S = 0.25
#: A live input's first moments bring what it held while opening: the live edge is the earliest of them.
LIVE_SETTLE_S = 0.3
#: Then its schedule leaves room for the latest arrivals of this long...
LIVE_WINDOW_S = 3.0
#: ... and this much more (the event loop's own lateness).
LIVE_MARGIN_S = 0.02
#: A file frame decoded this late (a slow source, a network hiccup) moves the schedule on: a pause, not a skip.
FILE_REBASE_S = 1.0
#: A file's first frame is due this long after it is read, so the second is not late already.
FILE_START_S = 0.1
#: How far a file is read ahead of its playout: enough for a muxer's interleaving of audio and video.
READ_AHEAD_S = 1.0
#: ... and no stream of it further than this (one that ended early does not let the other race ahead).
MAX_AHEAD_S = 3.0
#: Audio the room's source already holds beyond this (a burst, sent at once) would play behind its video from
#: then on, the source's queue playing out at the input's own pace: the next frame is skipped instead.
AUDIO_MAX_QUEUED_S = 0.02
#: Audio is handed to the room this much before its time. WebRTC takes it from the source in 10 ms ticks and
#: Opus sends it in 20 ms packets, while a picture leaves after its encode of a few ms. Measured with
#: bench/ingress.py (median offset at a subscriber / in our recording): no lead +35 / +31 ms, sound late;
#: 25 ms −26…+18 / +11…+37; 40 ms −6…−2 / −6…+19 (three to five runs each).
AUDIO_LEAD_S = 0.04
SAMPLE_RATE = 48000
#: 20 ms, as Opus packs it: half the Python calls of 10 ms frames, for the same sound.
AUDIO_FRAME = SAMPLE_RATE // 50


class Clock:
    """When each frame is due on the monotonic clock, from its media time (seconds): `t + offset`."""

    def __init__(self, live: bool):
        self.live = live
        self._offset: float | None = None
        self._start = 0.0
        #: live: (arrival, arrival - t) of the window's frames, latest arrival first: its head is the window's
        #: latest (a sliding maximum)
        self._recent: collections.deque[tuple[float, float]] = collections.deque()

    def arrived(self, t: float, now: float) -> None:
        """Adjust the schedule to a frame of time `t` that arrived at `now`."""
        lag = now - t
        if self._offset is None:
            self._start = now
            self._offset = lag + (LIVE_MARGIN_S if self.live else FILE_START_S)
        elif not self.live:
            if lag - self._offset > FILE_REBASE_S:
                self._offset = lag + FILE_START_S
        elif now - self._start < LIVE_SETTLE_S:
            self._offset = min(self._offset, lag + LIVE_MARGIN_S)
        else:
            while self._recent and self._recent[-1][1] <= lag:
                self._recent.pop()
            self._recent.append((now, lag))
            while self._recent[0][0] < now - LIVE_WINDOW_S:
                self._recent.popleft()
            self._offset = self._recent[0][1] + LIVE_MARGIN_S

    def due(self, t: float) -> float:
        """The monotonic time a frame of time `t` is due."""
        return t + self._offset


VideoSink = Callable[[av.VideoFrame, int], None]
AudioSink = Callable[[av.AudioFrame], Awaitable[None]]


class Pump:
    """Moves frames from an input into the room's sources, each at its time.

    `video(frame, timestamp_us)` is called with a frame already scaled (`prepare_video`, run off the event
    loop) at its due time; `audio(frame)` with 20 ms of 48 kHz s16 audio at its due time, unless
    `audio_queued()` says the room's source is already behind. A passed (encoded) picture goes to `video` as
    it is, and always: a picture left out would break those that refer to it.
    """

    def __init__(self, clock: Clock, *, video: VideoSink | None, prepare_video: Callable[[av.VideoFrame], object],
                 fps: float, audio: AudioSink | None, audio_queued: Callable[[], float], channels: int,
                 stall_s: float):
        self.clock = clock
        self._video, self._prepare = video, prepare_video
        self._interval = 1.0 / fps
        self._audio, self._audio_queued = audio, audio_queued
        self._layout = "stereo" if channels == 2 else "mono"
        self._resampler: av.AudioResampler | None = None
        self._stall_s = stall_s
        self._video_q: asyncio.Queue[tuple[float, object] | None] = asyncio.Queue()
        self._audio_q: asyncio.Queue[tuple[float, av.AudioFrame] | None] = asyncio.Queue()
        self._last_due = {"video": None, "audio": None}
        #: frames sent and dropped, by kind
        self.sent = {"video": 0, "audio": 0}
        self.dropped = {"video": 0, "audio": 0}

    async def run(self, frames: AsyncIterator[Frame]) -> None:
        """Until the input ends and its last frame has gone out; InputStalled when it stops giving frames, and
        whatever a room's source raised."""
        tasks = [asyncio.ensure_future(job) for job in (self._read(frames), self._send_video(), self._send_audio())]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        log.info("input ended; sent %s, dropped %s", self.sent, self.dropped)

    async def _read(self, frames: AsyncIterator[Frame]) -> None:
        """Route the input's frames to the senders, then tell them it ended (what is queued still goes out, at
        its time)."""
        await self._route(frames)
        for q in (self._video_q, self._audio_q):
            q.put_nowait(None)

    async def _route(self, frames: AsyncIterator[Frame]) -> None:
        it = aiter(frames)
        video_t = None
        while True:
            try:
                frame = await asyncio.wait_for(anext(it), self._stall_s)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise InputStalled(f"no media for {self._stall_s:g} s") from None
            now = time.monotonic()
            if isinstance(frame, av.VideoFrame | PassedVideo):
                if self._video is None:
                    continue
                # A frame without a time follows the last one.
                t = frame.time if frame.time is not None else (video_t or 0.0) + self._interval
                video_t = t
                self.clock.arrived(t, now)
                ready = frame if isinstance(frame, PassedVideo) else await asyncio.to_thread(self._prepare, frame)
                self._video_q.put_nowait((t, ready))
                self._last_due["video"] = self.clock.due(t)
            elif self._audio is not None and frame.time is not None:
                self.clock.arrived(frame.time, now)
                for chunk in self._resample(frame):
                    self._audio_q.put_nowait((chunk.time, chunk))
                    self._last_due["audio"] = self.clock.due(chunk.time)
            if not self.clock.live:
                await self._read_ahead()

    async def _read_ahead(self) -> None:
        """Wait while the file is read far enough ahead of its playout."""
        while True:
            leads = [due - time.monotonic() for due in self._last_due.values() if due is not None]
            wait = max(min(leads) - READ_AHEAD_S, max(leads) - MAX_AHEAD_S) if leads else 0.0
            if wait <= 0:
                return
            await asyncio.sleep(wait)

    def _resample(self, frame: av.AudioFrame) -> list[av.AudioFrame]:
        """`frame` as 20 ms frames of 48 kHz s16 (a partial one stays in the resampler for the next)."""
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout=self._layout, rate=SAMPLE_RATE,
                                                frame_size=AUDIO_FRAME)
        try:
            out = self._resampler.resample(frame)
        except ValueError:
            # The input's audio format changed midway: start a resampler for the new one.
            self._resampler = None
            return self._resample(frame)
        return [f for f in out if f.samples == AUDIO_FRAME and f.time is not None]

    async def _until(self, due: float) -> bool:
        """Sleep until `due`; False if it is already past by more than STALE_S (the frame is dropped)."""
        wait = due - time.monotonic()
        if wait < -STALE_S:
            return False
        if wait > 0:
            await asyncio.sleep(wait)
        return True

    async def _send_video(self) -> None:
        last = None
        while (item := await self._video_q.get()) is not None:
            t, frame = item
            due = self.clock.due(t)
            if isinstance(frame, PassedVideo):
                await self._until(due)
            # More frames than the track's frame rate: the extra ones go.
            elif (last is not None and 0 <= due - last < 0.9 * self._interval) or not await self._until(due):
                self.dropped["video"] += 1
                continue
            last = due
            self._video(frame, int(due * 1_000_000))
            if not self.sent["video"]:
                log.info("first video frame sent (t=%.3f, %.3f s late)", t, time.monotonic() - due)
            self.sent["video"] += 1

    async def _send_audio(self) -> None:
        while (item := await self._audio_q.get()) is not None:
            t, frame = item
            if not await self._until(self.clock.due(t) - AUDIO_LEAD_S) or self._audio_queued() > AUDIO_MAX_QUEUED_S:
                self.dropped["audio"] += 1
                continue
            await self._audio(frame)
            self.sent["audio"] += 1
