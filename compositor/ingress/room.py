"""The ingress's participant in its LiveKit room: joining with the job's token, publishing the input's video
(simulcast) and audio (Opus) tracks, and the sources frames are sent into."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import av
from livekit import rtc
from livekit.rtc.participant import PublishTrackError

from ..protocol import IngressJob
from .errors import RoomUnreachable
from .inputs import InputInfo, PassedVideo
from .pacing import SAMPLE_RATE

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 10.0
PUBLISH_TIMEOUT_S = 10.0
LEAVE_TIMEOUT_S = 5.0
ROOM_ID_TIMEOUT_S = 2.0
# H.264 (the SDK's OpenH264) rather than its default VP8: measured on a 720p30 push with three simulcast layers,
# its encoder thread takes ~0.27 of a core against VP8's ~0.35, the largest share of the worker's CPU.
VIDEO_CODEC = rtc.VideoCodec.H264
#: a passed video's codec (WHIP's bypass), by its mime type
PASSED_CODECS = {"video/VP8": rtc.VideoCodec.VP8, "video/H264": rtc.VideoCodec.H264}
VIDEO_SOURCES = {"camera": rtc.TrackSource.SOURCE_CAMERA, "screen_share": rtc.TrackSource.SOURCE_SCREENSHARE}
AUDIO_SOURCES = {"microphone": rtc.TrackSource.SOURCE_MICROPHONE,
                 "screen_share_audio": rtc.TrackSource.SOURCE_SCREENSHARE_AUDIO}


def video_size(info: dict[str, Any], width: int, height: int) -> tuple[int, int]:
    """The published size: the input's, scaled to fit the top layer (`width` x `height`) keeping its shape,
    never enlarged, in even numbers (I420)."""
    in_w, in_h = info.get("width") or width, info.get("height") or height
    scale = min(width / in_w, height / in_h, 1.0)
    return max(2, round(in_w * scale / 2) * 2), max(2, round(in_h * scale / 2) * 2)


class IngressRoom:
    """One participant in the job's room; `lost` is set if the room drops it."""

    def __init__(self, job: IngressJob, request_keyframe: Callable[[], None] | None = None):
        """`request_keyframe`: asks the input for a key frame, when the room's subscribers want one of a passed
        video (job.pass_video)."""
        self.job = job
        self.room = rtc.Room()
        self.lost = asyncio.Event()
        self.tracks: list[dict[str, Any]] = []
        self.video: rtc.VideoSource | rtc.EncodedVideoSource | None = None
        self._request_keyframe = request_keyframe
        self.audio: rtc.AudioSource | None = None
        self.size: tuple[int, int] | None = None
        self._leaving = False
        self.room.on("disconnected", self._on_disconnected)

    def _on_disconnected(self, reason=None) -> None:
        if not self._leaving:
            log.warning("the room disconnected the ingress (%s)", reason)
            self.lost.set()

    async def join(self) -> None:
        """Connect to the room as the token's participant."""
        try:
            await asyncio.wait_for(self.room.connect(self.job.room_url, self.job.token,
                                                     rtc.RoomOptions(auto_subscribe=False)), JOIN_TIMEOUT_S)
        except TimeoutError:
            raise RoomUnreachable(f"could not join the room at {self.job.room_url} within {JOIN_TIMEOUT_S:g} s") \
                from None
        except rtc.ConnectError as exc:
            raise RoomUnreachable(f"could not join the room at {self.job.room_url}: {exc.message}") from None

    async def publish(self, info: InputInfo) -> None:
        """Publish a track for each stream the input has and the job wants."""
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                if info.video is not None and self.job.video is not None:
                    await self._publish_video(info.video)
                if info.audio is not None and self.job.audio is not None:
                    await self._publish_audio()
        except (TimeoutError, PublishTrackError) as exc:
            raise RoomUnreachable(f"could not publish into the room: {exc or 'timed out'}") from None

    async def _publish_video(self, info: dict[str, Any]) -> None:
        spec = self.job.video
        top = spec.layers[0]
        self.size = width, height = video_size(info, top.width, top.height)
        name = spec.name or "video"
        if self.job.pass_video:
            # The publisher's own pictures, one layer in its codec (the size: where they start; each says its own).
            self.video = rtc.EncodedVideoSource(width, height)
            options = rtc.TrackPublishOptions(
                source=VIDEO_SOURCES[spec.source], simulcast=False, video_codec=PASSED_CODECS[info["mime_type"]],
                video_encoder=rtc.VideoEncoderBackend.ENCODER_BACKEND_PRE_ENCODED)
        else:
            self.video = rtc.VideoSource(width, height)
            options = rtc.TrackPublishOptions(
                source=VIDEO_SOURCES[spec.source], simulcast=len(spec.layers) > 1, video_codec=VIDEO_CODEC,
                video_encoding=rtc.VideoEncoding(max_bitrate=top.bitrate, max_framerate=spec.fps))
        track = rtc.LocalVideoTrack.create_video_track(name, self.video)
        publication = await self.room.local_participant.publish_track(track, options)
        self.tracks.append({"sid": publication.sid, "type": "video", "source": spec.source, "name": name,
                            "width": width, "height": height})

    async def _publish_audio(self) -> None:
        spec = self.job.audio
        self.audio = rtc.AudioSource(SAMPLE_RATE, spec.channels)
        name = spec.name or "audio"
        track = rtc.LocalAudioTrack.create_audio_track(name, self.audio)
        # No DTX: an ingress carries music and ambience as often as speech, and DTX thins those out.
        options = rtc.TrackPublishOptions(source=AUDIO_SOURCES[spec.source], dtx=False,
                                          audio_encoding={"max_bitrate": spec.bitrate})
        publication = await self.room.local_participant.publish_track(track, options)
        self.tracks.append({"sid": publication.sid, "type": "audio", "source": spec.source, "name": name})

    async def room_id(self) -> str | None:
        """The room's sid, if the server says it soon."""
        with contextlib.suppress(Exception):
            return await asyncio.wait_for(self.room.sid, ROOM_ID_TIMEOUT_S)
        return None

    def prepare_video(self, frame: av.VideoFrame) -> rtc.VideoFrame:
        """`frame` as the published size in I420 (blocking: scaling runs off the event loop)."""
        width, height = self.size
        planes = frame.reformat(width=width, height=height, format="yuv420p").to_ndarray()
        return rtc.VideoFrame(width, height, rtc.VideoBufferType.I420, memoryview(planes.reshape(-1)))

    def send_video(self, frame: rtc.VideoFrame | PassedVideo, timestamp_us: int) -> None:
        """Into the video track; its timestamp is the frame's due time, so the encoder sees the source's pace. A
        passed picture goes as it is, and a subscriber's wish for a key frame goes on to the input."""
        if not isinstance(frame, PassedVideo):
            self.video.capture_frame(frame, timestamp_us=timestamp_us)
            return
        kind = rtc.EncodedFrameType.ENCODED_FRAME_KEY if frame.keyframe else rtc.EncodedFrameType.ENCODED_FRAME_DELTA
        self.video.capture_frame(rtc.EncodedVideoFrame(frame.data, frame.width, frame.height,
                                                       PASSED_CODECS[frame.mime_type], kind, timestamp_us))
        if self.video.take_feedback().keyframe_requested and self._request_keyframe:
            self._request_keyframe()

    async def send_audio(self, frame: av.AudioFrame) -> None:
        """20 ms of s16 audio into the audio track."""
        await self.audio.capture_frame(rtc.AudioFrame(frame.to_ndarray().tobytes(), SAMPLE_RATE,
                                                      self.job.audio.channels, frame.samples))

    def audio_queued(self) -> float:
        """Seconds of audio the audio source holds, not yet sent."""
        return self.audio.queued_duration if self.audio else 0.0

    async def leave(self) -> None:
        """Leave the room (its tracks go with the participant). Idempotent."""
        self._leaving = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.room.disconnect(), LEAVE_TIMEOUT_S)
        for source in (self.video, self.audio):
            if source is not None:
                with contextlib.suppress(Exception):
                    await source.aclose()
