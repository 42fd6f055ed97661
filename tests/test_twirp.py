"""LiveKit's Egress API over Twirp (compositor/twirp.py): LiveKit access tokens, Twirp errors, protobuf and
protobuf JSON, EgressInfo from our records; then LiveKit's own Python and Node SDKs recording a room of a
real livekit-server through `compositor serve`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from datetime import timedelta

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from google.protobuf import json_format
from livekit import api
from livekit.protocol import egress as proto
from livekit.protocol import models as lkm

from compositor import analysis
from compositor.api import twirp
from compositor.api.livekit_shape import (
    from_livekit,
    from_livekit_participant,
    from_livekit_start,
    from_livekit_track,
    from_livekit_track_composite,
)
from compositor.destinations import redact_url
from compositor.service import Service
from compositor.service.requests import StartEgressRequest
from compositor.service.seams import EgressRecord
from tools.peers.livekit import API_KEY, API_SECRET, REPO, make_clip

from .conftest import HttpReceiver
from .test_livekit import ALICE, near, region
from .test_media import SIGNALLING_PAGE
from .test_service import KEY

PROTOBUF, JSON = "application/protobuf", "application/json"
STREAM_URL = "rtmp://live.example/app/SECRETKEY"
T0 = 1_700_000_000.0
NS = 1_000_000_000


def token(api_secret: str = API_SECRET, ttl: timedelta | None = None, **grants) -> str:
    grants = grants or {"room_record": True}
    tok = api.AccessToken(API_KEY, api_secret).with_grants(api.VideoGrants(**grants))
    return (tok.with_ttl(ttl) if ttl else tok).to_jwt()


async def call(client: TestClient, method: str, body: dict | bytes | str, kind: str = JSON,
               auth: str | None = "token", http_method: str = "POST", path: str = "/twirp/livekit.Egress/"):
    """(status, body as JSON or bytes, headers) of one request; auth "token" sends a roomRecord token."""
    headers = {"Content-Type": kind}
    if auth:
        headers["Authorization"] = f"Bearer {token() if auth == 'token' else auth}"
    data = json.dumps(body) if isinstance(body, dict) else body
    async with client.request(http_method, path + method, data=data, headers=headers) as resp:
        raw = await resp.read()
        is_json = resp.headers.get("Content-Type") == JSON
        return resp.status, json.loads(raw) if is_json else raw, resp.headers


def sdk(client: TestClient) -> api.LiveKitAPI:
    """LiveKit's Python SDK pointed at the test server."""
    return api.LiveKitAPI(url=str(client.make_url("")), api_key=API_KEY, api_secret=API_SECRET)


async def seed(service: Service) -> None:
    """Three stored egresses as the service leaves them (the worker's stream URLs redacted, the request's not)."""
    await service.store.create(EgressRecord(
        id="EG_done", room_name="room-a", mode="record", kind="participant", layout="default",
        quality="H264_720P_30", status="COMPLETE", created_at=T0, started_at=T0 + 0.5, ended_at=T0 + 10.25,
        request={"room": {"kind": "livekit", "identity": "alice", "screen_share": True},
                 "file": {"filepath": "/data/recordings/a.mp4", "file_type": "MP4"}},
        file={"location": "/data/recordings/a.mp4", "filename": "a.mp4", "size": 1234, "duration": 9.75}))
    await service.store.create(EgressRecord(
        id="EG_live", room_name="room-b", mode="stream", kind="room_composite", layout="grid", quality="720p",
        status="ACTIVE", created_at=T0 + 1, started_at=T0 + 2,
        request={"room": {"kind": "livekit"}, "advanced": {"width": 320, "height": 180, "x264_preset": "superfast"},
                 "stream": {"urls": [STREAM_URL]}},
        streams=[{"url": redact_url(STREAM_URL), "status": "ACTIVE", "started_at": T0 + 2}]))
    await service.store.create(EgressRecord(
        id="EG_failed", room_name="room-a", mode="record", kind="track_composite", layout="default",
        quality="720p", status="FAILED", created_at=T0 + 2, ended_at=T0 + 3, error="the worker ended",
        error_code="WORKER_CRASHED", request={"room": {"kind": "livekit", "track_ids": ["TR_audio"]},
                                              "audio_only": True}))


async def test_callers_need_a_livekit_token_granting_room_record(open_app):
    client, _ = await open_app()
    status, body, headers = await call(client, "ListEgress", {}, auth=None)
    assert (status, body["code"], set(body)) == (401, "unauthenticated", {"code", "msg", "meta"})
    assert headers["Content-Type"] == JSON  # exactly: LiveKit's Node SDK reads errors only then
    for bad in (KEY, token(api_secret="another-secret-0123456789abcdefghij"), token(ttl=timedelta(hours=-2))):
        status, body, _ = await call(client, "ListEgress", {}, auth=bad)
        assert (status, body["code"]) == (401, "unauthenticated"), body
    status, body, _ = await call(client, "ListEgress", {}, auth=token(room_admin=True, room_list=True))
    assert (status, body["code"]) == (403, "permission_denied"), body
    assert "roomRecord" in body["msg"]
    assert (await call(client, "ListEgress", {}))[0] == 200


async def test_without_livekit_credentials_it_says_what_to_set(open_app):
    client, _ = await open_app(livekit_api_key="", livekit_api_secret="", livekit_url="")
    status, body, _ = await call(client, "ListEgress", {})
    assert (status, body["code"]) == (501, "unimplemented") and "livekit_api_key" in body["msg"], body


async def test_routes_other_than_the_egress_methods(open_app):
    client, _ = await open_app()
    for method, http_method, path in (("Nope", "POST", "/twirp/livekit.Egress/"),
                                      ("ListEgress", "GET", "/twirp/livekit.Egress/"),
                                      ("ListRooms", "POST", "/twirp/livekit.RoomService/")):
        status, body, _ = await call(client, method, {}, http_method=http_method, path=path)
        assert (status, body["code"]) == (404, "bad_route"), body
        assert body["meta"]["twirp_invalid_route"] == f"{http_method} {path}{method}"
    status, body, _ = await call(client, "ListEgress", "{}", kind="text/plain")
    assert (status, body["code"]) == (404, "bad_route") and "Content-Type" in body["msg"], body


async def test_a_method_livekit_declares_but_this_server_lacks_is_unimplemented():
    # Every method of the pinned livekit-protocol is served; a newer one would declare more.
    egress = twirp.TwirpService({}, ("room_record", "roomRecord"), frozenset({"StartEgress"}))
    app = web.Application()
    app.router.add_route("*", twirp.ROUTE, twirp.handler(None, {twirp.EGRESS: egress}))
    async with TestClient(TestServer(app)) as client:
        status, body, _ = await call(client, "StartEgress", {})
        assert (status, body["code"]) == (501, "unimplemented") and "StartEgress" in body["msg"], body
        status, body, _ = await call(client, "Nope", {})
        assert (status, body["code"]) == (404, "bad_route"), body


async def test_list_in_protobuf_and_json_shows_egress_info(open_app, monkeypatch):
    client, service = await open_app()
    await seed(service)
    async with sdk(client) as lk:
        listed = await lk.egress.list_egress(proto.ListEgressRequest())
        # Oldest first, as LiveKit lists them.
        assert [i.egress_id for i in listed.items] == ["EG_done", "EG_live", "EG_failed"]
        done, live, failed = listed.items
        assert (done.status, done.room_name) == (proto.EGRESS_COMPLETE, "room-a")
        # Unix nanoseconds (to within the microsecond a float of seconds holds).
        assert (done.started_at, done.ended_at) == pytest.approx((1_700_000_000_500_000_000,
                                                                  1_700_000_010_250_000_000), abs=1000)
        assert done.WhichOneof("request") == "participant"
        assert (done.participant.room_name, done.participant.identity, done.participant.screen_share) == (
            "room-a", "alice", True)
        assert done.participant.WhichOneof("options") == "preset"
        f = done.file_results[0]
        assert (f.filename, f.location, f.size, f.duration) == ("a.mp4", "/data/recordings/a.mp4", 1234,
                                                                9_750_000_000)
        assert done.WhichOneof("result") == "file" and done.file == f

        assert (live.status, live.WhichOneof("request"), live.room_composite.layout) == (
            proto.EGRESS_ACTIVE, "room_composite", "grid")
        assert (live.room_composite.advanced.width, live.room_composite.advanced.height) == (320, 180)
        assert [(s.url, s.status) for s in live.stream_results] == [(redact_url(STREAM_URL), proto.StreamInfo.ACTIVE)]
        assert live.WhichOneof("result") == "stream" and list(live.stream.info) == list(live.stream_results)
        assert b"SECRETKEY" not in listed.SerializeToString()

        assert (failed.status, failed.error, failed.details) == (proto.EGRESS_FAILED, "the worker ended",
                                                                 "WORKER_CRASHED")
        assert (failed.track_composite.audio_track_id, failed.track_composite.video_track_id) == ("TR_audio", "")

        async def ids(**filters) -> list[str]:
            return [i.egress_id for i in (await lk.egress.list_egress(proto.ListEgressRequest(**filters))).items]

        assert await ids(room_name="room-a") == ["EG_done", "EG_failed"]
        assert await ids(active=True) == ["EG_live"]
        assert await ids(egress_id="EG_done") == ["EG_done"]
        assert await ids(egress_id="EG_done", active=True) == []
        assert await ids(room_name="room-b", egress_id="EG_done") == []

    # JSON: lowerCamelCase or proto names in, proto names out, the same message as in protobuf.
    status, body, headers = await call(client, "ListEgress", {"roomName": "room-b", "active": True})
    assert status == 200 and headers["Content-Type"] == JSON
    item = body["items"][0]
    assert (item["egress_id"], item["status"], item["started_at"]) == ("EG_live", "EGRESS_ACTIVE",
                                                                       str(live.started_at))
    assert json_format.ParseDict(body, proto.ListEgressResponse()).items[0] == live
    assert "SECRETKEY" not in json.dumps(body)
    assert [i["egress_id"] for i in (await call(client, "ListEgress", {"egress_id": "EG_done"}))[1]["items"]] == [
        "EG_done"]
    status, raw, headers = await call(client, "ListEgress", proto.ListEgressRequest(room_name="room-a")
                                      .SerializeToString(), kind=PROTOBUF)
    assert status == 200 and headers["Content-Type"] == PROTOBUF
    assert [i.egress_id for i in proto.ListEgressResponse.FromString(raw).items] == ["EG_done", "EG_failed"]

    monkeypatch.setattr(twirp, "LIST_PAGE", 2)
    first = json_format.ParseDict((await call(client, "ListEgress", {}))[1], proto.ListEgressResponse())
    assert [i.egress_id for i in first.items] == ["EG_done", "EG_live"] and first.next_page_token.token == "2"
    rest = (await call(client, "ListEgress", {"pageToken": {"token": "2"}}))[1]
    assert [i["egress_id"] for i in rest["items"]] == ["EG_failed"] and "next_page_token" not in rest
    status, body, _ = await call(client, "ListEgress", {"pageToken": {"token": "x"}})
    assert (status, body["code"], body["meta"]["field"]) == (400, "invalid_argument", "page_token")


async def test_egress_info_names_the_file_from_the_start_and_no_room_for_a_web_page(open_app):
    client, service = await open_app()
    await service.store.create(EgressRecord(
        id="EG_web", room_name="web", mode="record", kind="web", layout="default", quality="720p",
        status="STARTING", created_at=T0,
        request={"web_url": "https://example.com/", "upload": {"staging": "/data/recordings"},
                 "file": {"filepath": "/data/recordings/pages/x.mp4", "file_type": "MP4"}}))
    async with sdk(client) as lk:
        [info] = (await lk.egress.list_egress(proto.ListEgressRequest(egress_id="EG_web"))).items
    assert (info.room_name, info.web.url) == ("", "https://example.com/")
    assert info.file_results[0].filename == info.file.filename == "pages/x.mp4"
    assert (info.file.location, info.file.size) == ("", 0)  # not written yet


async def test_malformed_bodies(open_app):
    client, _ = await open_app()
    status, body, _ = await call(client, "ListEgress", b"\xff\xff\xff", kind=PROTOBUF)
    assert (status, body["code"]) == (400, "malformed"), body
    status, body, _ = await call(client, "ListEgress", "{not json")
    assert (status, body["code"]) == (400, "malformed"), body
    status, body, _ = await call(client, "StartRoomCompositeEgress",
                                 {"room_name": "r", "stream_outputs": [{"urls": STREAM_URL}]})
    assert (status, body["code"]) == (400, "malformed") and "stream_outputs.urls" in body["msg"], body
    assert "SECRETKEY" not in json.dumps(body)


async def test_invalid_starts_name_the_field_and_valid_ones_reach_admission(open_app):
    client, _ = await open_app()
    file = proto.EncodedFileOutput(file_type=proto.MP4, filepath="x.mp4")
    mp3 = proto.EncodedFileOutput(file_type=proto.MP3, filepath="x")
    async with sdk(client) as lk:
        eg = lk.egress
        refusals = [
            (eg.start_room_composite_egress(proto.RoomCompositeEgressRequest(
                room_name="r", advanced=proto.EncodingOptions(width=321, height=180))), "advanced.width"),
            (eg.start_room_composite_egress(proto.RoomCompositeEgressRequest(layout="grid")), "roomName"),
            (eg.start_participant_egress(proto.ParticipantEgressRequest(room_name="r")), "participant.identity"),
            (eg.start_track_composite_egress(proto.TrackCompositeEgressRequest(room_name="r")), "track_composite"),
            (eg.start_room_composite_egress(proto.RoomCompositeEgressRequest(room_name="r", file_outputs=[
                proto.EncodedFileOutput(s3=proto.S3Upload(access_key="AK", secret="TOPSECRET", region="x"))])),
             "storage.s3.bucket"),
            # An MP3 holds no picture: a room composite to one must say audio_only.
            (eg.start_room_composite_egress(proto.RoomCompositeEgressRequest(room_name="r", file_outputs=[mp3])),
             "file.fileType"),
            (eg.start_track_composite_egress(proto.TrackCompositeEgressRequest(
                room_name="r", audio_track_id="TR_a", video_track_id="TR_v", file_outputs=[mp3])), "file.fileType"),
            # A request's own webhook: event names of LiveKit's format, signed with an API key this server holds
            # (the key a caller names is not repeated, in case it was a secret).
            (eg.start_room_composite_egress(proto.RoomCompositeEgressRequest(room_name="r", webhooks=[
                lkm.WebhookConfig(url="https://example.com/h", filter_params=lkm.FilterParams(
                    include_events=["egress_started", "room_started"]))])), "webhooks.0.includeEvents"),
            (eg.start_participant_egress(proto.ParticipantEgressRequest(room_name="r", identity="a", webhooks=[
                lkm.WebhookConfig(url="https://example.com/h", signing_key="TOPSECRET")])), "webhooks.0.signingKey"),
            (eg.start_track_egress(proto.TrackEgressRequest(room_name="r", track_id="TR_a", webhooks=[
                lkm.WebhookConfig(url="file:///etc/passwd")])), "webhooks.0.url"),
        ]
        for start, field in refusals:
            with pytest.raises(api.TwirpError) as refused:
                await start
            err = refused.value
            assert (err.status, err.code, err.metadata["field"]) == (400, "invalid_argument", field), err
            assert field in err.message and "TOPSECRET" not in err.message
        # Valid requests of every kind get as far as admission, which has no room for them.
        for start in (
                eg.start_room_composite_egress(proto.RoomCompositeEgressRequest(
                    room_name="r", layout="speaker", preset=proto.H264_1080P_30, file_outputs=[file])),
                eg.start_room_composite_egress(proto.RoomCompositeEgressRequest(
                    room_name="r", audio_only=True, file_outputs=[mp3])),
                eg.start_track_composite_egress(proto.TrackCompositeEgressRequest(
                    room_name="r", audio_track_id="TR_a", file_outputs=[mp3], webhooks=[lkm.WebhookConfig(
                        url="https://example.com/h", signing_key=API_KEY, filter_params=lkm.FilterParams(
                            exclude_events=["egress_updated"]))])),
                eg.start_web_egress(proto.WebEgressRequest(url="https://example.com/", file=file)),
                eg.start_participant_egress(proto.ParticipantEgressRequest(room_name="r", identity="alice")),
                eg.start_track_composite_egress(proto.TrackCompositeEgressRequest(
                    room_name="r", audio_track_id="TR_a", video_track_id="TR_v")),
                eg.start_track_egress(proto.TrackEgressRequest(
                    room_name="r", track_id="TR_a", file=proto.DirectFileOutput(filepath="a.ogg"))),
                eg.start_track_egress(proto.TrackEgressRequest(
                    room_name="r", track_id="TR_a", websocket_url="wss://example.com/pcm"))):
            with pytest.raises(api.TwirpError) as refused:
                await start
            assert (refused.value.status, refused.value.code) == (429, "resource_exhausted"), refused.value
            assert refused.value.metadata["error_code"] == "CAPACITY_EXCEEDED"


def ours(mapping, request) -> StartEgressRequest:
    return StartEgressRequest.model_validate(mapping(json_format.MessageToDict(request,
                                                                               preserving_proto_field_name=True)))


def test_each_start_request_maps_onto_ours():
    s3 = proto.S3Upload(access_key="AK", secret="SK", bucket="b", region="r")
    room = ours(from_livekit, proto.RoomCompositeEgressRequest(
        room_name="r", layout="grid", audio_only=True, preset=proto.PORTRAIT_H264_720P_30,
        stream=proto.StreamOutput(urls=[STREAM_URL])))
    assert (room.kind, room.layout, room.audio_only, room.quality, room.mode, room.stream.urls) == (
        "room_composite", "grid", True, "PORTRAIT_H264_720P_30", "stream", [STREAM_URL])
    person = ours(from_livekit_participant, proto.ParticipantEgressRequest(
        room_name="r", identity="bob", screen_share=True, segment_outputs=[
            proto.SegmentedFileOutput(filename_prefix="hls/bob", segment_duration=4, s3=s3)]))
    assert (person.kind, person.participant.identity, person.participant.screen_share) == (
        "participant", "bob", True)
    assert (person.segments.filename_prefix, person.segments.segment_duration, person.storage.bucket) == (
        "hls/bob", 4, "b")
    tracks = ours(from_livekit_track_composite, proto.TrackCompositeEgressRequest(
        room_name="r", video_track_id="TR_v", advanced=proto.EncodingOptions(
            width=640, height=360, framerate=15, video_codec=lkm.H264_BASELINE)))
    assert (tracks.kind, tracks.track_composite.video_track_id, tracks.track_composite.audio_track_id) == (
        "track_composite", "TR_v", None)
    assert (tracks.advanced.width, tracks.advanced.height, tracks.advanced.framerate,
            tracks.advanced.video_codec) == (640, 360, 15, "H264_BASELINE")  # the profile is kept
    track = ours(from_livekit_track, proto.TrackEgressRequest(
        room_name="r", track_id="TR_a", file=proto.DirectFileOutput(filepath="a/{room_name}.ogg", s3=s3)))
    assert (track.kind, track.track.track_id, track.file_type, track.file.filepath, track.storage.kind) == (
        "track", "TR_a", "OGG", "a/{room_name}.ogg", "s3")
    page = ours(from_livekit, proto.WebEgressRequest(url="https://example.com/", file_outputs=[
        proto.EncodedFileOutput(filepath="pages/")]))
    assert (page.kind, page.room_name, page.web_url) == ("web", "", "https://example.com/")  # no room invented
    socket = ours(from_livekit_track, proto.TrackEgressRequest(
        room_name="r", track_id="TR_a", websocket_url="wss://example.com/pcm", webhooks=[
            lkm.WebhookConfig(url="https://example.com/h", signing_key="APIkey", filter_params=lkm.FilterParams(
                include_events=["egress_ended"], exclude_events=["egress_updated"])),
            lkm.WebhookConfig(url="https://example.com/all")]))
    assert [h.model_dump() for h in socket.webhooks] == [
        {"url": "https://example.com/h", "format": "livekit", "signing_key": "APIkey",
         "include_events": ["egress_ended"], "exclude_events": ["egress_updated"]},
        {"url": "https://example.com/all", "format": "livekit", "signing_key": None, "include_events": [],
         "exclude_events": []}]
    assert (socket.track.websocket_url, socket.wants_file) == ("wss://example.com/pcm", False)


def test_the_unified_start_request_maps_onto_ours():
    """StartEgress: each source as the older request of the same source would be, outputs with their storage."""
    s3 = proto.StorageConfig(s3=proto.S3Upload(access_key="AK", secret="SK", bucket="b", region="r"))
    template = ours(from_livekit_start, proto.StartEgressRequest(
        room_name="r", template=proto.TemplateSource(layout="grid", audio_only=True), preset=proto.H264_1080P_30,
        storage=s3, outputs=[proto.Output(file=proto.FileOutput(file_type=proto.OGG, filepath="a/{room_name}")),
                             proto.Output(segments=proto.SegmentedFileOutput(filename_prefix="hls/x")),
                             proto.Output(images=proto.ImageOutput(capture_interval=5, filename_prefix="img/x")),
                             proto.Output(stream=proto.StreamOutput(urls=[STREAM_URL]))]))
    assert (template.kind, template.room_name, template.layout, template.audio_only, template.quality) == (
        "room_composite", "r", "grid", True, "H264_1080P_30")
    assert (template.mode, template.file_type, template.file.filepath, template.segments.filename_prefix,
            template.images.capture_interval, template.stream.urls, template.storage.bucket) == (
        "both", "OGG", "a/{room_name}", "hls/x", 5, [STREAM_URL], "b")
    gcs = proto.StorageConfig(gcp=proto.GCPUpload(bucket="g"))
    split = ours(from_livekit_start, proto.StartEgressRequest(
        room_name="r", template=proto.TemplateSource(), storage=s3,
        outputs=[proto.Output(file=proto.FileOutput(filepath="f.mp4")),
                 proto.Output(images=proto.ImageOutput(filename_prefix="i/x"), storage=gcs)]))
    # Outputs of different storages each keep theirs; the request's goes to those naming none.
    assert (split.storage, split.file.storage.bucket, split.images.storage.bucket) == (None, "b", "g")
    page = ours(from_livekit_start, proto.StartEgressRequest(
        web=proto.WebSource(url="https://example.com/", video_only=True, await_start_signal=True),
        advanced=proto.EncodingOptions(width=640, height=360),
        outputs=[proto.Output(file=proto.FileOutput(filepath="w.mp4"), storage=s3)]))
    assert (page.kind, page.web_url, page.video_only, page.await_start_signal, page.advanced.width,
            page.storage.bucket) == ("web", "https://example.com/", True, True, 640, "b")
    person = ours(from_livekit_start, proto.StartEgressRequest(
        room_name="r", media=proto.MediaSource(
            participant_video=proto.ParticipantVideo(identity="bob", prefer_screen_share=True),
            audio=proto.AudioConfig(routes=[proto.AudioRoute(participant_identity="bob")])),
        outputs=[proto.Output(file=proto.FileOutput(filepath="p.mp4"))]))
    assert (person.kind, person.participant.identity, person.participant.screen_share, person.video_only) == (
        "participant", "bob", True, False)
    silent = ours(from_livekit_start, proto.StartEgressRequest(
        room_name="r", media=proto.MediaSource(participant_video=proto.ParticipantVideo(identity="bob"))))
    assert (silent.kind, silent.video_only) == ("participant", True)
    tracks = ours(from_livekit_start, proto.StartEgressRequest(
        room_name="r", media=proto.MediaSource(video_track_id="TR_v", audio=proto.AudioConfig(
            routes=[proto.AudioRoute(track_id="TR_a")]))))
    assert (tracks.kind, tracks.track_composite.video_track_id, tracks.track_composite.audio_track_id) == (
        "track_composite", "TR_v", "TR_a")
    voice = ours(from_livekit_start, proto.StartEgressRequest(
        room_name="r", media=proto.MediaSource(audio=proto.AudioConfig(routes=[proto.AudioRoute(track_id="TR_a")])),
        outputs=[proto.Output(file=proto.FileOutput(file_type=proto.MP3, filepath="v"))],
        webhooks=[lkm.WebhookConfig(url="https://example.com/h", filter_params=lkm.FilterParams(
            include_events=["egress_ended"]))]))
    assert (voice.kind, voice.track_composite.audio_track_id, voice.track_composite.video_track_id) == (
        "track_composite", "TR_a", None)
    assert (voice.file_type, [(h.url, h.format, h.include_events) for h in voice.webhooks]) == (
        "MP3", [("https://example.com/h", "livekit", ["egress_ended"])])


async def test_fields_this_server_does_not_honour_are_refused_by_name(open_app):
    client, _ = await open_app()
    file = {"file": {"filepath": "x.mp4"}}
    for method, body, field in (
            # Not a field of LiveKit's message at all (a newer client's, or a typo).
            ("StartRoomCompositeEgress", {"room_name": "r", "layoutt": "grid"}, "layoutt"),
            ("StartRoomCompositeEgress", {"room_name": "r", "file_outputs": [{"filepath": "x", "bar": 1}]},
             "file_outputs.0.bar"),
            ("StartEgress", {"room_name": "r", "template": {}, "outputs": [{"file": {"nope": True}}]},
             "outputs.0.file.nope"),
            # LiveKit's, but not made here.
            ("StartRoomCompositeEgress", {"room_name": "r", "advanced": {"width": 640, "depth": 32}},
             "advanced.depth"),
            ("StartRoomCompositeEgress", {"room_name": "r", "advanced": {"width": 640, "video_quality": 5}},
             "advanced.video_quality"),
            ("StartRoomCompositeEgress", {"room_name": "r", "file_outputs": [
                {"filepath": "x.mp4", "disable_manifest": True}]}, "file_outputs.0.disable_manifest"),
            ("StartRoomCompositeEgress", {"room_name": "r", "advanced": {"audio_codec": "OPUS"},
                                          "file_outputs": [{"filepath": "x.mp4"}]}, "advanced.audio_codec"),
            ("StartRoomCompositeEgress", {"room_name": "r", "stream_outputs": [
                {"protocol": "WEBSOCKET", "urls": ["wss://example.com/x"]}]}, "stream_outputs.0.protocol"),
            ("StartEgress", {"room_name": "r", "outputs": [file]}, "source"),
            ("StartEgress", {"room_name": "r", "media": {"video_track_id": "TR_v", "audio": {"capture_all": True}},
                             "outputs": [file]}, "media.audio.capture_all"),
            ("StartEgress", {"room_name": "r", "media": {"audio": {"routes": [
                {"track_id": "TR_a"}, {"track_id": "TR_b"}]}}, "outputs": [file]}, "media.audio.routes"),
            ("StartEgress", {"room_name": "r", "template": {}, "outputs": [
                {"stream": {"urls": [STREAM_URL]}, "storage": {"s3": {"bucket": "b"}}}]}, "outputs.0")):
        status, err, _ = await call(client, method, body)
        assert (status, err["code"], err["meta"].get("field")) == (400, "invalid_argument", field), (body, err)
        assert field.split(".")[-1] in err["msg"], err
    # In protobuf: a field number the message does not have.
    raw = proto.RoomCompositeEgressRequest(room_name="r").SerializeToString() + bytes([0xF8, 0x07, 0x01])
    status, err, _ = await call(client, "StartRoomCompositeEgress", raw, kind=PROTOBUF)
    assert (status, err["code"], err["meta"]["field"]) == (400, "invalid_argument", "127"), err


async def test_stop_and_updates_of_missing_or_ended_egresses(open_app):
    client, service = await open_app()
    await seed(service)
    for method, body, status, code, ours_code in (
            ("StopEgress", {"egress_id": "EG_nope"}, 404, "not_found", "NOT_FOUND"),
            ("StopEgress", {"egressId": "EG_done"}, 412, "failed_precondition", "EGRESS_ENDED"),
            ("UpdateLayout", {"egress_id": "EG_nope", "layout": "grid"}, 404, "not_found", "NOT_FOUND"),
            ("UpdateLayout", {"egress_id": "EG_done", "layout": "grid"}, 412, "failed_precondition",
             "EGRESS_NOT_ACTIVE"),
            # A path is never looked up: it would probe the server's disk.
            ("UpdateLayout", {"egress_id": "EG_done", "layout": "/etc/passwd"}, 400, "invalid_argument",
             "INVALID_ARGUMENT"),
            ("UpdateLayout", {"egress_id": "EG_done", "layout": "no-such-layout"}, 400, "invalid_argument",
             "INVALID_ARGUMENT"),
            ("UpdateStream", {"egress_id": "EG_done", "add_output_urls": [STREAM_URL]}, 412, "failed_precondition",
             "NO_STREAM_OUTPUT"),
            ("UpdateStream", {"egress_id": "EG_live"}, 400, "invalid_argument", "INVALID_ARGUMENT")):
        got, err, _ = await call(client, method, body)
        assert (got, err["code"], err["meta"]["error_code"]) == (status, code, ours_code), (method, body, err)


# End to end: a real livekit-server, a publisher, `compositor serve`, and LiveKit's SDKs as the callers.

@pytest.fixture(scope="module")
def alice_clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clips"), *ALICE, seconds=30)


def check_recording(path: str, size: int, room: str, folder: str) -> None:
    """The file is where it was asked, as big as said, and shows and sounds like alice."""
    assert path.endswith(f"/recordings/{folder}/{room}.mp4") and os.path.getsize(path) == size
    facts = analysis.facts(path)
    assert (facts.width, facts.height) == (320, 180) and 2.5 < facts.duration < 10
    assert near(region(path, 1.0, 0.45, 0.4), ALICE[0]) and near(region(path, facts.duration - 0.7, 0.45, 0.4),
                                                                 ALICE[0])
    assert analysis.loudest_level(analysis.audio_samples(path), ALICE[1], 0.5) > 0.02


def test_livekit_python_sdk_records_a_room(livekit, alice_clip, livekit_service):
    room = "twirp-py"
    publisher = livekit.publish(room, "alice", alice_clip.video, alice_clip.audio)
    livekit.wait_published(room, {"alice": 2})

    async def until(eg, egress_id: str, status: int) -> proto.EgressInfo:
        for _ in range(300):
            [info] = (await eg.list_egress(proto.ListEgressRequest(egress_id=egress_id))).items
            if info.status == status:
                return info
            await asyncio.sleep(0.2)
        raise AssertionError(f"{egress_id} never reached {proto.EgressStatus.Name(status)}: {info}")

    async def record() -> proto.EgressInfo:
        async with api.LiveKitAPI(url=livekit_service.base, api_key=API_KEY, api_secret=API_SECRET) as lk:
            eg = lk.egress
            started = await eg.start_room_composite_egress(proto.RoomCompositeEgressRequest(
                room_name=room, layout="grid", advanced=proto.EncodingOptions(width=320, height=180),
                file_outputs=[proto.EncodedFileOutput(file_type=proto.MP4, filepath="py/{room_name}.mp4")]))
            assert started.egress_id.startswith("EG_") and started.status == proto.EGRESS_STARTING
            assert (started.room_composite.room_name, started.room_composite.layout) == (room, "grid")
            # LiveKit names the file, folder included, from the start (and in the deprecated `file` too).
            assert started.file_results[0].filename == started.file.filename == f"py/{room}.mp4"
            live = await until(eg, started.egress_id, proto.EGRESS_ACTIVE)
            assert (live.file.filename, live.file.location) == (f"py/{room}.mp4", "")
            active = await eg.list_egress(proto.ListEgressRequest(room_name=room, active=True))
            assert [i.egress_id for i in active.items] == [started.egress_id]
            changed = await eg.update_layout(proto.UpdateLayoutRequest(egress_id=started.egress_id, layout="speaker"))
            assert changed.room_composite.layout == "speaker"
            with pytest.raises(api.TwirpError) as refused:  # it was started without a stream output
                await eg.update_stream(proto.UpdateStreamRequest(egress_id=started.egress_id,
                                                                 add_output_urls=["rtmp://127.0.0.1:1/live/k"]))
            assert (refused.value.status, refused.value.code) == (412, "failed_precondition")
            await asyncio.sleep(3)
            stopped = await eg.stop_egress(proto.StopEgressRequest(egress_id=started.egress_id))
            assert stopped.status in (proto.EGRESS_ENDING, proto.EGRESS_COMPLETE)
            done = await until(eg, started.egress_id, proto.EGRESS_COMPLETE)
            assert not (await eg.list_egress(proto.ListEgressRequest(room_name=room, active=True))).items
            return done

    try:
        done = asyncio.run(record())
    finally:
        publisher.stop()
    assert done.room_composite.layout == "speaker" and done.ended_at > done.started_at > 0
    f = done.file_results[0]
    assert f.filename == f"py/{room}.mp4" and 2.5 * NS < f.duration < 10 * NS and done.file == f
    check_recording(f.location, f.size, room, "py")


def test_livekit_node_sdk_records_a_room(livekit, alice_clip, livekit_service):
    if not shutil.which("node") or not (REPO / "node_modules" / "livekit-server-sdk").is_dir():
        pytest.skip("LiveKit's Node SDK is not installed: run `npm ci` (package.json devDependencies)")
    room = "twirp-node"
    publisher = livekit.publish(room, "alice", alice_clip.video, alice_clip.audio)
    try:
        livekit.wait_published(room, {"alice": 2})
        run = subprocess.run(["node", str(REPO / "tests" / "twirp_node_client.mjs"), livekit_service.base, API_KEY,
                              API_SECRET, room], capture_output=True, text=True, timeout=120, cwd=REPO)
    finally:
        publisher.stop()
    assert run.returncode == 0, run.stderr[-3000:]
    steps = {line["step"]: line for line in map(json.loads, run.stdout.splitlines())}
    started = steps["started"]["info"]
    assert started["egressId"].startswith("EG_") and started["roomComposite"]["roomName"] == room
    assert steps["active"]["info"]["status"] == "EGRESS_ACTIVE"
    assert steps["layout"]["info"]["roomComposite"]["layout"] == "speaker"
    done = steps["complete"]["info"]
    assert done["status"] == "EGRESS_COMPLETE"
    assert steps["stop again"]["error"] == {"status": 412, "code": "failed_precondition",
                                            "message": f"egress {started['egressId']} has already ended (COMPLETE)"}
    f = done["fileResults"][0]
    check_recording(f["location"], int(f["size"]), room, "node")


def test_livekit_python_sdk_records_a_room_with_the_unified_start(livekit, alice_clip, livekit_service):
    """StartEgress from a template source into a file, HLS segments and thumbnails, with the v2 request carried
    back in every EgressInfo."""
    room = "twirp-v2-py"
    publisher = livekit.publish(room, "alice", alice_clip.video, alice_clip.audio)
    livekit.wait_published(room, {"alice": 2})

    async def record() -> tuple[proto.EgressInfo, proto.EgressInfo]:
        async with api.LiveKitAPI(url=livekit_service.base, api_key=API_KEY, api_secret=API_SECRET) as lk:
            eg = lk.egress
            started = await eg.start_egress(proto.StartEgressRequest(
                room_name=room, template=proto.TemplateSource(layout="grid"),
                advanced=proto.EncodingOptions(width=320, height=180),
                outputs=[proto.Output(file=proto.FileOutput(file_type=proto.MP4, filepath="v2/{room_name}.mp4")),
                         proto.Output(segments=proto.SegmentedFileOutput(filename_prefix="v2/hls/seg",
                                                                         segment_duration=1)),
                         proto.Output(images=proto.ImageOutput(capture_interval=1, filename_prefix="v2/img/x"))]))
            for _ in range(300):
                [info] = (await eg.list_egress(proto.ListEgressRequest(egress_id=started.egress_id))).items
                if info.status != proto.EGRESS_STARTING:
                    break
                await asyncio.sleep(0.2)
            assert info.status == proto.EGRESS_ACTIVE, info
            await asyncio.sleep(3)
            await eg.stop_egress(proto.StopEgressRequest(egress_id=started.egress_id))
            for _ in range(300):
                [done] = (await eg.list_egress(proto.ListEgressRequest(egress_id=started.egress_id))).items
                if done.status >= proto.EGRESS_COMPLETE:
                    return started, done
                await asyncio.sleep(0.2)
            raise AssertionError(f"never ended: {done}")

    try:
        started, done = asyncio.run(record())
    finally:
        publisher.stop()
    for info in (started, done):
        assert info.WhichOneof("request") == "egress", info
        assert (info.egress.room_name, info.egress.template.layout) == (room, "grid")
        assert (info.egress.advanced.width, info.egress.advanced.height) == (320, 180)
    assert done.status == proto.EGRESS_COMPLETE, done
    f = done.file_results[0]
    check_recording(f.location, f.size, room, "v2")
    [seg] = done.segment_results
    assert seg.segment_count >= 2 and seg.playlist_location.endswith("v2/hls/seg.m3u8")
    assert analysis.facts(seg.playlist_location).duration > 2
    [img] = done.image_results
    assert img.image_count >= 2


def lkegress(service, request: proto.StartEgressRequest, seconds: float = 4) -> dict[str, dict]:
    """`tools/lkegress` (LiveKit's Go server SDK) starting `request`, following it, stopping it after `seconds`:
    its steps (started, active, stopped, ended) by name."""
    tool = REPO / ".tools" / "bin" / "lkegress"
    if not tool.exists():
        pytest.skip("tools/lkegress is not built: run `make livekit-tools`")
    run = subprocess.run([str(tool), "-url", service.base, "-key", API_KEY, "-secret", API_SECRET, "-seconds",
                          str(seconds)], input=json_format.MessageToJson(request), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    steps = {line["step"]: line for line in map(json.loads, run.stdout.splitlines())}
    assert "error" not in steps["started"], steps["started"]
    assert steps["active"]["info"]["status"] == "EGRESS_ACTIVE"
    assert steps["ended"]["info"]["status"] == "EGRESS_COMPLETE", steps["ended"]
    return steps


def test_livekit_go_sdk_starts_a_media_egress(livekit, alice_clip, livekit_service, nginx):
    """LiveKit's Go server SDK (the first to send StartEgress) records one participant's video and voice into a
    file and a live stream at once."""
    room = "twirp-v2-go"
    publisher = livekit.publish(room, "alice", alice_clip.video, alice_clip.audio)
    request = proto.StartEgressRequest(
        room_name=room, media=proto.MediaSource(
            participant_video=proto.ParticipantVideo(identity="alice"),
            audio=proto.AudioConfig(routes=[proto.AudioRoute(participant_identity="alice")])),
        advanced=proto.EncodingOptions(width=320, height=180),
        outputs=[proto.Output(file=proto.FileOutput(filepath="go/{room_name}.mp4")),
                 proto.Output(stream=proto.StreamOutput(urls=[nginx.url("live", "v2go")]))])
    try:
        livekit.wait_published(room, {"alice": 2})
        steps = lkegress(livekit_service, request)
    finally:
        publisher.stop()
    for step in ("started", "ended"):
        media = steps[step]["info"]["egress"]["media"]
        assert media["participantVideo"]["identity"] == "alice", steps[step]
        assert media["audio"]["routes"] == [{"participantIdentity": "alice"}], steps[step]
    done = steps["ended"]["info"]
    f = done["fileResults"][0]
    check_recording(f["location"], int(f["size"]), room, "go")
    [stream] = done["streamResults"]
    assert "v2go" not in stream["url"]  # the stream key is a secret: redacted
    [flv] = nginx.recordings("v2go")
    assert near(region(str(flv), 1.0, 0.45, 0.4), ALICE[0])


def test_livekit_go_sdk_starts_a_media_egress_of_two_tracks_with_the_sound_routed(livekit, alice_clip,
                                                                                   livekit_service):
    """A media source by track ids: one video track, and one audio track routed to the left channel."""
    room = "twirp-v2-tracks"
    publisher = livekit.publish(room, "alice", alice_clip.video, alice_clip.audio)
    try:
        livekit.wait_published(room, {"alice": 2})
        tracks = livekit.tracks(room)["alice"]
        steps = lkegress(livekit_service, proto.StartEgressRequest(
            room_name=room, media=proto.MediaSource(
                video_track_id=tracks["camera"], audio=proto.AudioConfig(routes=[proto.AudioRoute(
                    track_id=tracks["microphone"], channel=proto.AUDIO_CHANNEL_LEFT)])),
            advanced=proto.EncodingOptions(width=320, height=180),
            outputs=[proto.Output(file=proto.FileOutput(filepath="go/{room_name}.mp4"))]))
    finally:
        publisher.stop()
    media = steps["ended"]["info"]["egress"]["media"]
    assert media["videoTrackId"] == tracks["camera"], media
    assert media["audio"]["routes"] == [{"trackId": tracks["microphone"], "channel": "AUDIO_CHANNEL_LEFT"}], media
    f = steps["ended"]["info"]["fileResults"][0]
    assert near(region(f["location"], 1.0, 0.45, 0.4), ALICE[0])
    left, right = (analysis.audio_samples(f["location"], channel=side) for side in ("left", "right"))
    assert analysis.loudest_level(left, ALICE[1], 0.5) > 0.02 > analysis.loudest_level(right, ALICE[1], 0.5)


def test_livekit_python_sdk_starts_a_web_egress(livekit_service):
    """A web source: any page, recorded from its own start signal (await_start_signal)."""
    page = HttpReceiver(page=SIGNALLING_PAGE)

    async def record() -> proto.EgressInfo:
        async with api.LiveKitAPI(url=livekit_service.base, api_key=API_KEY, api_secret=API_SECRET) as lk:
            started = await lk.egress.start_egress(proto.StartEgressRequest(
                web=proto.WebSource(url=page.url, await_start_signal=True),
                advanced=proto.EncodingOptions(width=320, height=180),
                outputs=[proto.Output(file=proto.FileOutput(filepath="web/page.mp4"))]))
            assert (started.egress.web.url, started.egress.web.await_start_signal, started.room_name) == (
                page.url, True, "")
            for _ in range(300):
                [info] = (await lk.egress.list_egress(proto.ListEgressRequest(egress_id=started.egress_id))).items
                if info.status == proto.EGRESS_ACTIVE:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(2)
            await lk.egress.stop_egress(proto.StopEgressRequest(egress_id=started.egress_id))
            for _ in range(300):
                [info] = (await lk.egress.list_egress(proto.ListEgressRequest(egress_id=started.egress_id))).items
                if info.status >= proto.EGRESS_COMPLETE:
                    return info
                await asyncio.sleep(0.2)
            raise AssertionError(f"never ended: {info}")

    try:
        done = asyncio.run(record())
    finally:
        page.close()
    assert done.status == proto.EGRESS_COMPLETE, done
    # Recorded from the page's signal on: its first frame already shows the page's second colour.
    location = done.file_results[0].location
    assert analysis.color_distance(analysis.region_color(analysis.frame_at(location, 0.05), 0, 0, 1, 1),
                                   "#2e8b57") <= 40
