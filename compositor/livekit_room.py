"""Joining a LiveKit room as the recorder: where the server is and the token the page joins with.

The worker reads the server from the environment, as LiveKit's own tools do
(`LIVEKIT_URL`, `LIVEKIT_API_KEY`, `LIVEKIT_API_SECRET`); the service passes
its settings that way, so no key ever sits in a request or a job file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
from livekit import api

from .errors import Conflict, InvalidRequest

log = logging.getLogger(__name__)

# Asking the server about a room delays the egress's start: past this, it starts without the answer.
LOOKUP_TIMEOUT_S = 5.0

# Long enough to join: once connected, the LiveKit server hands its participants fresh tokens (for reconnects)
# itself, so a recording outlives it, while a token copied out of a page (a template's) is soon worthless.
TOKEN_TTL = timedelta(minutes=10)


@dataclass(frozen=True)
class SourceFacts:
    """What the LiveKit server says of an egress's source, as LiveKit's filename placeholders name it (empty
    when unknown), and the sound's channel count of an audio track."""

    room_id: str = ""
    publisher_identity: str = ""
    track_id: str = ""
    track_type: str = ""  # audio | video
    track_source: str = ""  # camera | microphone | screen_share | screen_share_audio
    #: of the audio track named (1: mono; None: not an audio track, or unknown)
    channels: int | None = None


@dataclass(frozen=True)
class LiveKitServer:
    url: str
    api_key: str = field(repr=False)
    api_secret: str = field(repr=False)

    @property
    def host(self) -> str:
        """host:port of the server, for the page's allow list."""
        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'wss' else 80)}"

    def recorder_token(self, room: str, identity: str) -> str:
        """A token that joins `room` hidden and subscribe-only, marked as a recorder."""
        grants = api.VideoGrants(room_join=True, room=room, can_publish=False, can_publish_data=False,
                                 can_subscribe=True, hidden=True, recorder=True)
        # Kind egress: the server and webhook consumers (our auto egress too) tell it from people.
        return (api.AccessToken(self.api_key, self.api_secret).with_identity(identity).with_name("compositor")
                .with_kind("egress").with_grants(grants).with_ttl(TOKEN_TTL).to_jwt())


    async def source_facts(self, room: str, identity: str | None = None,
                           track_ids: tuple[str, ...] = ()) -> SourceFacts:
        """The room's sid and, for a participant or tracks, who publishes them and what they are. Of several
        tracks the video one names the egress, as LiveKit's track composite does. What the server does not
        answer (a room not yet created, a track not found, the server away) is left empty."""
        facts = SourceFacts(publisher_identity=identity or "")
        try:
            async with api.LiveKitAPI(http_url(self.url), self.api_key, self.api_secret) as lkapi:
                rooms = await asyncio.wait_for(lkapi.room.list_rooms(api.ListRoomsRequest(names=[room])),
                                               LOOKUP_TIMEOUT_S)
                facts = SourceFacts(room_id=next((r.sid for r in rooms.rooms if r.name == room), ""),
                                    publisher_identity=facts.publisher_identity)
                if not (rooms.rooms and track_ids):
                    return facts
                people = await asyncio.wait_for(lkapi.room.list_participants(api.ListParticipantsRequest(
                    room=room)), LOOKUP_TIMEOUT_S)
        except (api.TwirpError, OSError, TimeoutError, aiohttp.ClientError) as exc:
            log.warning("the LiveKit server did not say what room %s holds (%s); names that use it stay empty",
                        room, exc)
            return facts
        found = [(p.identity, t) for p in people.participants for t in p.tracks if t.sid in track_ids]
        if not found:
            return facts
        owner, track = max(found, key=lambda f: f[1].type == api.TrackType.VIDEO)
        stereo = track.stereo or api.AudioTrackFeature.TF_STEREO in track.audio_features
        return SourceFacts(room_id=facts.room_id, publisher_identity=owner, track_id=track.sid,
                           track_type=api.TrackType.Name(track.type).lower(),
                           track_source=api.TrackSource.Name(track.source).lower(),
                           channels=(2 if stereo else 1) if track.type == api.TrackType.AUDIO else None)

    async def set_recorder_layout(self, room: str, identity: str, layout: str) -> None:
        """Tell a template the layout changed, the way @livekit/egress-sdk listens: the recorder's metadata."""
        try:
            async with api.LiveKitAPI(http_url(self.url), self.api_key, self.api_secret) as lkapi:
                await lkapi.room.update_participant(api.UpdateParticipantRequest(
                    room=room, identity=identity, metadata=json.dumps({"layout": layout})))
        except api.TwirpError as exc:
            raise Conflict("EGRESS_NOT_ACTIVE",
                           f"the LiveKit server refused the layout change: {exc.message}") from None


def with_query(base: str, **params: str) -> str:
    """`base` with these query parameters set (its others kept): what LiveKit passes a custom template
    (url, token, layout)."""
    parts = urlsplit(base)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in params]
    return urlunsplit(parts._replace(query=urlencode([*query, *params.items()])))


def server_from_env(env: dict | None = None) -> LiveKitServer:
    """The LiveKit server the worker records from, or InvalidRequest naming what is missing."""
    env = os.environ if env is None else env
    values = {name: env.get(name, "") for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")}
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise InvalidRequest(f"a LiveKit room needs {', '.join(missing)} in the environment",
                             details={"field": "room"})
    url = ws_url(values["LIVEKIT_URL"])
    if not url.startswith(("ws://", "wss://")):
        raise InvalidRequest(f"LIVEKIT_URL {url!r} must be ws(s):// or http(s)://", details={"field": "room"})
    return LiveKitServer(url, values["LIVEKIT_API_KEY"], values["LIVEKIT_API_SECRET"])


def http_url(url: str) -> str:
    """A LiveKit server's URL as its HTTP API (RoomService) is reached: ws(s):// becomes http(s)://."""
    return "http" + url.removeprefix("ws") if url.startswith("ws") else url


def ws_url(url: str) -> str:
    """A LiveKit server's URL as a room client connects to it: http(s):// becomes ws(s):// (LiveKit's tools
    accept either spelling)."""
    return "ws" + url.removeprefix("http") if url.startswith("http") else url
