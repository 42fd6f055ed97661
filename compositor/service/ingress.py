"""Ingress: streams brought into a LiveKit room. An ingress is made once (CreateIngress: its URL and stream key)
and then runs a session per publisher (RTMP, WHIP) or once (URL pull), each session in its own worker.

The flow is the egress's: a request (REST or LiveKit's shape, one translation each) → a validated
IngressRequest → an IngressRecord kept in the store → per session an admitted, planned IngressJob → the worker
(`compositor ingress`) → its events folded into the record, with their webhooks in the same transaction.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Literal, Protocol
from urllib.parse import urlsplit

from livekit.api import AccessToken, VideoGrants
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from ..errors import CapacityExceeded, Conflict, Draining, InvalidRequest, NotFound, Unsupported
from ..livekit_room import ws_url
from ..outbound import refuse_playlist
from ..plan import random_base62
from ..protocol import (
    IngressAudio,
    IngressEvent,
    IngressJob,
    IngressState,
    IngressVideo,
    InputKind,
    VideoLayer,
)
from .dispatch import cost_by_height, refuse_too_big
from .ingress_workers import FINAL_STATES, IngressRunner
from .rtmp import RtmpServer
from .seams import Dispatcher, IngressRecord, Job, Need, Store
from .settings import Settings
from .webhooks import Webhooks

log = logging.getLogger(__name__)

#: A session's publisher that does not show up (or a worker that does not publish) within this ends it.
PUBLISH_TIMEOUT_S = 20.0

#: An RTMP publisher is admitted once its worker plays the stream, or after this long all the same.
PLAYER_WAIT_S = 3.0
#: LiveKit's video presets: frame rate and simulcast layers (the top one first), at full, half and quarter size.
VIDEO_PRESETS: dict[str, tuple[float, list[tuple[int, int, int]]]] = {
    "H264_720P_30FPS_3_LAYERS": (30, [(1280, 720, 1_700_000), (640, 360, 450_000), (320, 180, 150_000)]),
    "H264_1080P_30FPS_3_LAYERS": (30, [(1920, 1080, 3_000_000), (960, 540, 900_000), (480, 270, 250_000)]),
    "H264_540P_25FPS_2_LAYERS": (25, [(960, 540, 1_000_000), (480, 270, 300_000)]),
    "H264_720P_30FPS_1_LAYER": (30, [(1280, 720, 1_700_000)]),
    "H264_1080P_30FPS_1_LAYER": (30, [(1920, 1080, 3_000_000)]),
    "H264_720P_30FPS_3_LAYERS_HIGH_MOTION": (30, [(1280, 720, 2_500_000), (640, 360, 700_000),
                                                  (320, 180, 200_000)]),
    "H264_1080P_30FPS_3_LAYERS_HIGH_MOTION": (30, [(1920, 1080, 4_500_000), (960, 540, 1_300_000),
                                                   (480, 270, 350_000)]),
    "H264_540P_25FPS_2_LAYERS_HIGH_MOTION": (25, [(960, 540, 1_500_000), (480, 270, 450_000)]),
    "H264_720P_30FPS_1_LAYER_HIGH_MOTION": (30, [(1280, 720, 2_500_000)]),
    "H264_1080P_30FPS_1_LAYER_HIGH_MOTION": (30, [(1920, 1080, 4_500_000)]),
}
DEFAULT_VIDEO_PRESET = "H264_720P_30FPS_3_LAYERS"
#: LiveKit's audio presets: (channels, bits per second).
AUDIO_PRESETS = {"OPUS_STEREO_96KBPS": (2, 96_000), "OPUS_MONO_64KBS": (1, 64_000)}
DEFAULT_AUDIO_PRESET = "OPUS_STEREO_96KBPS"
#: Cores and memory (MB) a session holds, by its top layer's short side (decode, scale, encode every layer).
COST_BY_HEIGHT = ((360, Need(0.25, 300)), (720, Need(0.5, 400)), (1080, Need(1.0, 500)))
#: A session's room token lasts this long (a session reconnecting within it reuses it).
TOKEN_TTL = timedelta(hours=24)
#: URL pull: what the worker can read (PyAV; srt through ffmpeg).
URL_SCHEMES = ("http", "https", "srt")


class _Model(BaseModel):
    # Our REST shape is camelCase (BaxCloud's); snake_case names are taken too.
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class VideoLayerOptions(_Model):
    width: int = Field(gt=0, le=3840)
    height: int = Field(gt=0, le=3840)
    #: bits per second
    bitrate: int = Field(gt=0, le=20_000_000)


class VideoOptions(_Model):
    """Custom video encoding instead of a preset."""

    frame_rate: float = Field(30, gt=0, le=60)
    layers: list[VideoLayerOptions] = Field(min_length=1, max_length=3)


class AudioOptions(_Model):
    """Custom audio encoding instead of a preset."""

    bitrate: int = Field(96_000, ge=16_000, le=510_000)
    channels: Literal[1, 2] = 2


class IngressVideoRequest(_Model):
    source: Literal["camera", "screen_share"] = "camera"
    name: str = Field("", max_length=128)
    preset: str | None = None
    options: VideoOptions | None = None

    @model_validator(mode="after")
    def _one_way(self):
        if self.preset and self.options:
            raise ValueError("give a video preset or options, not both")
        if self.preset and self.preset not in VIDEO_PRESETS:
            raise ValueError(f"unknown video preset {self.preset!r}; one of {', '.join(VIDEO_PRESETS)}")
        return self


class IngressAudioRequest(_Model):
    source: Literal["microphone", "screen_share_audio"] = "microphone"
    name: str = Field("", max_length=128)
    preset: str | None = None
    options: AudioOptions | None = None

    @model_validator(mode="after")
    def _one_way(self):
        if self.preset and self.options:
            raise ValueError("give an audio preset or options, not both")
        if self.preset and self.preset not in AUDIO_PRESETS:
            raise ValueError(f"unknown audio preset {self.preset!r}; one of {', '.join(AUDIO_PRESETS)}")
        return self


_NAME = r"^[A-Za-z0-9_.:@=+-][A-Za-z0-9 _.:@=+-]{0,127}$"


class IngressRequest(_Model):
    """CreateIngress, validated: which input, which room and participant, what it publishes."""

    input_type: InputKind
    name: str = Field("", max_length=256)
    room_name: str = Field(pattern=_NAME)
    participant_identity: str = Field(pattern=_NAME)
    participant_name: str = Field("", max_length=256)
    participant_metadata: str = Field("", max_length=4096)
    #: URL input: where to pull from (http, https, srt)
    url: str = Field("", max_length=4096)
    enable_transcoding: bool | None = None
    bypass_transcoding: bool = False
    enabled: bool = True
    video: IngressVideoRequest = IngressVideoRequest()
    audio: IngressAudioRequest = IngressAudioRequest()

    @model_validator(mode="after")
    def _fits_input(self):
        if self.input_type == InputKind.URL:
            if urlsplit(self.url).scheme not in URL_SCHEMES or not urlsplit(self.url).hostname:
                raise ValueError(f"a URL ingress needs url: an {', '.join(URL_SCHEMES)} URL with a host")
        elif self.url:
            raise ValueError(f"url is the source of a URL ingress; an {self.input_type.value} ingress gets its own")
        if not self.transcoded and self.input_type != InputKind.WHIP:
            # Said, not ignored: the caller would otherwise believe its stream goes through untouched.
            raise ValueError(f"an {self.input_type.value} ingress is always transcoded (simulcast layers from "
                             "one input), as LiveKit's: bypass_transcoding and enable_transcoding false are for "
                             "WHIP")
        return self

    @property
    def transcoded(self) -> bool:
        """Whether the video is decoded and encoded again (simulcast layers); else, WHIP only, the publisher's
        own video goes into the room as it came."""
        return not (self.bypass_transcoding or self.enable_transcoding is False)


class IngressUpdate(_Model):
    """UpdateIngress: the fields to change (those left out stay)."""

    name: str | None = Field(None, max_length=256)
    room_name: str | None = Field(None, pattern=_NAME)
    participant_identity: str | None = Field(None, pattern=_NAME)
    participant_name: str | None = Field(None, max_length=256)
    participant_metadata: str | None = Field(None, max_length=4096)
    enable_transcoding: bool | None = None
    bypass_transcoding: bool | None = None
    enabled: bool | None = None
    video: IngressVideoRequest | None = None
    audio: IngressAudioRequest | None = None

    @property
    def transcoded(self) -> bool | None:
        """The change to whether the video is transcoded (see IngressRequest.transcoded); None: no change."""
        if self.bypass_transcoding or self.enable_transcoding is False:
            return False
        if self.bypass_transcoding is False or self.enable_transcoding:
            return True
        return None


def new_ingress_id() -> str:
    return "IN_" + random_base62(12)


def _new_key() -> str:
    # 20 base62 characters (~119 bits): a key is the publisher's only credential.
    return random_base62(20)


def video_plan(video: dict) -> IngressVideo:
    """The layers and frame rate a stored video request publishes."""
    req = IngressVideoRequest.model_validate(video or {})
    if req.options:
        fps, layers = req.options.frame_rate, [(x.width, x.height, x.bitrate) for x in req.options.layers]
        layers.sort(key=lambda x: x[0] * x[1], reverse=True)
    else:
        fps, layers = VIDEO_PRESETS[req.preset or DEFAULT_VIDEO_PRESET]
    return IngressVideo(source=req.source, name=req.name or None, fps=fps,
                        layers=[VideoLayer(width=w, height=h, bitrate=b) for w, h, b in layers])


def audio_plan(audio: dict) -> IngressAudio:
    """The Opus encoding a stored audio request publishes."""
    req = IngressAudioRequest.model_validate(audio or {})
    channels, bitrate = ((req.options.channels, req.options.bitrate) if req.options
                         else AUDIO_PRESETS[req.preset or DEFAULT_AUDIO_PRESET])
    return IngressAudio(source=req.source, name=req.name or None, bitrate=bitrate, channels=channels)


def ingress_cost(video: IngressVideo) -> Need:
    """Cores and memory a session holds while it runs."""
    top = video.layers[0]
    return cost_by_height(COST_BY_HEIGHT, top.width, top.height)


def redact_source(url: str) -> str:
    """A pull URL as shown: no credentials, no query (it may hold a token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


class RemoteSessions(Protocol):
    """Reaches the sessions other nodes of a cluster run."""

    async def stop_ingress(self, node_id: str, ingress_id: str) -> bool:
        """Ask node `node_id` to stop its session of `ingress_id`; False when it runs none."""


class IngressService:
    """One node's ingresses: made and changed through the API, sessions admitted against the node's capacity
    (shared with egresses), run in workers, their states and webhooks kept in the store.

    In a cluster the ingresses are the cluster's (its store), but a session runs on the node its publisher
    reached (or, for a URL, the node asked to pull it): `remote` stops those other nodes run.
    """

    def __init__(self, settings: Settings, *, store: Store, dispatcher: Dispatcher, runner: IngressRunner,
                 webhooks: Webhooks, release: Callable[[str], Awaitable[None]], remote: RemoteSessions | None = None):
        self.settings = settings
        self.store = store
        self.dispatcher = dispatcher
        self.runner = runner
        self.webhooks = webhooks
        #: gives a session's capacity back (the egress service then runs what waited for it)
        self._release = release
        self.remote = remote
        #: this node's name in its cluster ("" on a single node)
        self.node_id = settings.node_id or ""
        self.policy = settings.outbound_policy
        self.closing = False
        self.rtmp: RtmpServer | None = None
        if settings.ingress_rtmp_port:
            self.rtmp = RtmpServer(settings.data_dir / "rtmp", host=settings.ingress_rtmp_host,
                                   port=settings.ingress_rtmp_port, on_publish=self.on_publish,
                                   on_done=self.on_publish_done, rtmps_port=settings.ingress_rtmps_port,
                                   tls_cert=settings.ingress_tls_cert, tls_key=settings.ingress_tls_key)

    async def open(self) -> None:
        """Start the RTMP ingest (when configured); settle sessions a previous run left live (in a cluster, those
        of a node's previous life are the cluster's to settle: `settle_lost`)."""
        for rec in [] if self.settings.cluster else await self.store.list_ingress():
            if rec.live:
                await self._change(rec.id, state=IngressState.ERROR, ended_at=time.time(), worker_pid=None,
                                   error_code="SERVICE_RESTARTED", error="the service stopped during this session")
        if self.rtmp:
            await self.rtmp.start()
        self.runner.replenish()

    # --- the API's calls -----------------------------------------------------------------------------------

    async def create(self, req: IngressRequest) -> IngressRecord:
        """Make an ingress; a URL ingress starts pulling at once."""
        self._available(req.input_type)
        rec = IngressRecord(
            id=new_ingress_id(), input_type=req.input_type.value, room_name=req.room_name,
            participant_identity=req.participant_identity, name=req.name, participant_name=req.participant_name,
            participant_metadata=req.participant_metadata, url=req.url, enabled=req.enabled,
            enable_transcoding=req.transcoded, stream_key="" if req.input_type == InputKind.URL else _new_key(),
            video=req.video.model_dump(exclude_defaults=True), audio=req.audio.model_dump(exclude_defaults=True))
        if req.input_type == InputKind.URL:
            refuse_playlist(req.url, "url")
            await self.policy.check_url(req.url, "url")
            job = self._job(rec, source_url=req.url)
            await self._admit(job, rec.id)
            await self.store.create_ingress(rec)
            await self._run(rec, job)
            return await self.get(rec.id)
        await self.store.create_ingress(rec)
        return rec

    def _available(self, kind: InputKind) -> None:
        if not self.settings.livekit_url:
            raise Unsupported("ingress publishes into a LiveKit room: set livekit_url (COMPOSITOR_LIVEKIT_URL) "
                              "with its API key and secret")
        if kind == InputKind.RTMP and self.rtmp is None:
            raise Unsupported("this server takes no RTMP: set ingress_rtmp_port (COMPOSITOR_INGRESS_RTMP_PORT)")

    async def get(self, ingress_id: str) -> IngressRecord:
        """The ingress; NotFound when there is none of that id."""
        rec = await self.store.get_ingress(ingress_id)
        if rec is None:
            raise NotFound(f"no ingress {ingress_id!r}")
        return rec

    async def list(self, room_name: str | None = None, ingress_id: str | None = None) -> list[IngressRecord]:
        """The ingresses (of a room, or the one of an id), newest first."""
        if ingress_id:
            rec = await self.store.get_ingress(ingress_id)
            return [rec] if rec and room_name in (None, "", rec.room_name) else []
        return await self.store.list_ingress(room_name=room_name or None)

    async def update(self, ingress_id: str, change: IngressUpdate) -> IngressRecord:
        """Change an ingress between sessions (a live one keeps its session's settings: refused)."""
        rec = await self.get(ingress_id)
        if rec.live:
            raise Conflict("INGRESS_ACTIVE", f"ingress {ingress_id} is live ({rec.state}); change it between "
                                             "sessions")
        fields = change.model_dump(exclude_none=True, exclude={"video", "audio", "enable_transcoding",
                                                               "bypass_transcoding"})
        if change.transcoded is not None:
            if not change.transcoded and rec.input_type != InputKind.WHIP.value:
                raise InvalidRequest(f"an {rec.input_type} ingress is always transcoded, as LiveKit's: "
                                     "bypass_transcoding and enable_transcoding false are for WHIP",
                                     details={"field": "bypassTranscoding"})
            fields["enable_transcoding"] = change.transcoded
        if change.video is not None:
            fields["video"] = change.video.model_dump(exclude_defaults=True)
        if change.audio is not None:
            fields["audio"] = change.audio.model_dump(exclude_defaults=True)
        return await self.store.update_ingress(ingress_id, **fields)

    async def delete(self, ingress_id: str) -> IngressRecord:
        """Forget an ingress; a live session is stopped first (its key no longer admits anyone)."""
        rec = await self.get(ingress_id)
        if rec.live:
            await self._stop_session(rec)
            rec = await self._change(ingress_id, state=IngressState.INACTIVE if rec.reusable
                                     else IngressState.COMPLETE, ended_at=time.time(), worker_pid=None,
                                     error="", error_code="")
        await self.store.delete_ingress(ingress_id)
        return rec

    # --- sessions ------------------------------------------------------------------------------------------

    async def on_publish(self, stream_key: str, addr: str) -> None:
        """nginx-rtmp asks whether `stream_key` may publish: only a known, enabled key not live already; its
        session then starts (a worker reads it from nginx). Raises to refuse."""
        rec = await self._session_of_key(stream_key, InputKind.RTMP)
        job = self._job(rec, source_url=self.rtmp.play_url(stream_key))
        await self._admit_or_say(job, rec)
        log.info("ingress %s: RTMP publisher from %s", rec.id, addr or "?")
        self.rtmp.expect_player(stream_key)
        rec = await self._run(rec, job)
        if rec.live and not await self.rtmp.until_played(stream_key, PLAYER_WAIT_S):
            log.warning("ingress %s: its worker did not ask for the stream within %g s; admitting the publisher "
                        "anyway", rec.id, PLAYER_WAIT_S)

    async def on_publish_done(self, stream_key: str) -> None:
        """The RTMP publisher left: its worker sees the stream end and reports INACTIVE; one that lingers is
        stopped."""
        rec = await self.store.ingress_of_key(stream_key)
        if rec and rec.live:
            await self.runner.stop(rec.id)

    async def whip(self, stream_key: str, offer: str) -> tuple[IngressRecord, str]:
        """A WHIP publisher's offer (its bearer token is the key): the session starts; returns the ingress
        and the SDP answer."""
        rec = await self._session_of_key(stream_key, InputKind.WHIP)
        job = self._job(rec, whip_offer=offer)
        await self._admit_or_say(job, rec)
        rec = await self._run(rec, job)
        answer = await self.runner.answer(rec.id)
        if answer is None:
            await self.runner.stop(rec.id)
            rec = await self.get(rec.id)
            raise InvalidRequest(f"the WHIP offer was not answered: {rec.error or 'the session ended'}",
                                 details={"code": rec.error_code or "WHIP_NO_ANSWER"})
        return rec, answer

    async def whip_end(self, stream_key: str, resource_id: str) -> None:
        """A WHIP publisher ends its session (DELETE of its Location)."""
        rec = await self.store.ingress_of_key(stream_key)
        if rec is None or rec.input_type != InputKind.WHIP or rec.resource_id != resource_id:
            raise NotFound("no such WHIP session")
        if rec.live:
            await self._stop_session(rec)

    async def _stop_session(self, rec: IngressRecord) -> None:
        """Stop a live session on whichever node runs it."""
        if self.remote and rec.node and rec.node != self.node_id:
            try:
                await self.remote.stop_ingress(rec.node, rec.id)
            except Conflict as exc:  # a node that does not answer is lost: the cluster settles its sessions
                log.warning("ingress %s: could not stop its session on node %s: %s", rec.id, rec.node, exc.message)
            return
        await self.stop_here(rec.id)

    async def stop_here(self, ingress_id: str) -> bool:
        """Stop this node's session of an ingress, and drop its RTMP publisher; False when none runs here."""
        stopped = await self.runner.stop(ingress_id)
        rec = await self.store.get_ingress(ingress_id)
        if rec:
            await self._drop_publisher(rec)
        return stopped

    async def _session_of_key(self, stream_key: str, kind: InputKind) -> IngressRecord:
        rec = await self.store.ingress_of_key(stream_key)
        if rec is None or rec.input_type != kind.value:
            raise NotFound("unknown stream key")
        if not rec.enabled:
            raise Conflict("INGRESS_DISABLED", f"ingress {rec.id} is disabled")
        if rec.live:
            raise Conflict("INGRESS_ACTIVE", f"ingress {rec.id} already has a publisher")
        return rec

    def _job(self, rec: IngressRecord, *, source_url: str | None = None, whip_offer: str | None = None
             ) -> IngressJob:
        """A session's worker job: where it reads, and a token that joins the room as this ingress."""
        s = self.settings
        token = (AccessToken(s.livekit_api_key, s.livekit_api_secret)
                 .with_identity(rec.participant_identity).with_name(rec.participant_name or rec.participant_identity)
                 .with_metadata(rec.participant_metadata).with_kind("ingress")
                 .with_grants(VideoGrants(room_join=True, room=rec.room_name, can_publish=True, can_subscribe=False))
                 .with_ttl(TOKEN_TTL).to_jwt())
        return IngressJob(ingress_id=rec.id, input=InputKind(rec.input_type), source_url=source_url,
                          whip_offer=whip_offer, room_url=ws_url(s.livekit_url), token=token,
                          video=video_plan(rec.video), audio=audio_plan(rec.audio),
                          pass_video=not rec.enable_transcoding)

    async def _admit(self, job: IngressJob, ingress_id: str) -> None:
        """Hold the session's cores on this node, or refuse saying why."""
        if self.closing:
            raise Draining("the service is shutting down")
        # A passed video is neither decoded nor encoded here: such a session costs what one without video does.
        cost = ingress_cost(job.video) if job.video and not job.pass_video else COST_BY_HEIGHT[0][1]
        refuse_too_big(cost, self.dispatcher.capacity, "this server has in all", "this ingress session",
                       "video", "choose a smaller video preset or layers")
        try:
            # Never queued, never placed elsewhere: a publisher is connected to this node now, or refused (nginx
            # drops it; WHIP and the API get 503).
            await self.dispatcher.admit_here(Job(ingress_id, None, cost, (0, 0, 0)))
        except CapacityExceeded as exc:
            free = Need(exc.details.get("free", 0), exc.details.get("freeMemoryMb", 0))
            queued = exc.details.get("queued", 0)
            why = f"{queued} egresses wait for capacity first" if queued else f"needs {cost.lacking(free)}"
            raise CapacityExceeded(f"no capacity for this ingress session on this node ({why})",
                                   details=exc.details) from None

    async def _admit_or_say(self, job: IngressJob, rec: IngressRecord) -> None:
        """Admit a publisher's session; one refused for capacity leaves the reason in the ingress's state (its
        publisher, dropped by nginx, hears none)."""
        try:
            await self._admit(job, rec.id)
        except (CapacityExceeded, InvalidRequest) as exc:
            await self._change(rec.id, state=IngressState.ERROR, ended_at=time.time(), error=exc.message,
                               error_code=exc.code)
            raise

    async def _run(self, rec: IngressRecord, job: IngressJob) -> IngressRecord:
        """Start the session's worker; BUFFERING until it publishes."""
        resource = "IR_" + random_base62(12)
        rec = await self._change(rec.id, state=IngressState.BUFFERING, resource_id=resource, started_at=time.time(),
                                 ended_at=None, error="", error_code="", tracks=None, input_video=None,
                                 input_audio=None, room_id="", node=self.node_id)
        try:
            pid = await self.runner.start(job)
        except OSError as exc:
            return await self._change(rec.id, state=IngressState.ERROR, ended_at=time.time(),
                                      error_code="WORKER_START", error=f"could not start the ingress worker: {exc}")
        return await self.store.update_ingress(rec.id, worker_pid=pid)

    async def follow(self) -> None:
        """Fold each worker's events into its ingress, in order (runs until the runner shuts down)."""
        async for ingress_id, event in self.runner.events():
            try:
                await self._fold(ingress_id, event)
            except Exception:  # one bad report must not stop the others from being kept
                log.exception("ingress %s: could not keep the worker's %s event", ingress_id, event.state)

    async def _fold(self, ingress_id: str, event: IngressEvent) -> None:
        rec = await self.store.get_ingress(ingress_id)
        if rec is None or not rec.live:
            if rec is None:  # deleted during its session: its cores go back all the same
                await self._release(ingress_id)
            return
        fields: dict = {"state": event.state}
        if event.video is not None:
            fields["input_video"] = event.video
        if event.audio is not None:
            fields["input_audio"] = event.audio
        if event.tracks is not None:
            fields["tracks"] = event.tracks
        if event.room_id:
            fields["room_id"] = event.room_id
        if event.state in FINAL_STATES:
            fields.update(ended_at=event.time, worker_pid=None, error=event.error or "", error_code=event.code or "")
            if event.state == IngressState.INACTIVE and not rec.reusable:
                fields["state"] = IngressState.COMPLETE  # a URL stopped before its end is done all the same
            # A publisher still connected (a stalled one) is cut off: its next session starts with a new push.
            await self._drop_publisher(rec)
        await self._change(ingress_id, **fields)

    async def _drop_publisher(self, rec: IngressRecord) -> None:
        if self.rtmp and rec.input_type == InputKind.RTMP:
            await self.rtmp.drop(rec.stream_key)

    async def _change(self, ingress_id: str, **fields) -> IngressRecord:
        """Change an ingress with the webhooks its change causes; a session that ended gives its cores back."""
        before = await self.get(ingress_id)
        rec = await self.store.update_ingress(ingress_id, events=self.webhooks.for_ingress, **fields)
        if rec.state != before.state:
            log.info("ingress %s %s%s", ingress_id, rec.state.name, f" ({rec.error_code})" if rec.error_code else "")
            if before.live and not rec.live:
                await self._release(ingress_id)
        return rec

    async def settle_lost(self, ingress_id: str) -> None:
        """A session of a node the cluster lost ends in error; its cores go back."""
        rec = await self.store.get_ingress(ingress_id)
        if rec is None or not rec.live:
            await self._release(ingress_id)
            return
        await self._change(ingress_id, state=IngressState.ERROR, ended_at=time.time(), worker_pid=None,
                           error_code="NODE_LOST", error=f"node {rec.node or 'unknown'} was lost during this session")

    async def stop_sessions(self) -> None:
        """Stop every session this node runs (the cluster declared it lost: they count for nothing now)."""
        for ingress_id in self.runner.running:
            await self.stop_here(ingress_id)

    async def shutdown(self) -> None:
        """Stop every session (its state: INACTIVE, as its worker reports) and the RTMP ingest."""
        self.closing = True
        if self.rtmp:
            await self.rtmp.stop()
        await self.runner.shutdown()


