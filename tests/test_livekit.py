"""Recording real LiveKit rooms: a livekit-server on 127.0.0.1, publishers sending pre-encoded clips in
distinct colours and tones, and the worker joining as a hidden recorder. Checked from the pixels and
the sound of what it recorded."""

from __future__ import annotations

import json
import signal
import statistics
import time
from pathlib import Path

import jwt
import pytest

from compositor import analysis
from tools.peers.livekit import API_SECRET, make_clip, make_marker_clip
from tools.peers.receivers import BackgroundApp, PcmReceiver, TcpProxy

TINY = ["--width", "320", "--height", "180"]
ALICE = ("#e6194b", 350)
BOB = ("#3cb44b", 650)
SHARE = ("#4363d8", 950)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return {name: make_clip(folder, *spec) for name, spec in (("alice", ALICE), ("bob", BOB), ("share", SHARE))}


def publish(livekit, room: str, identity: str, clip, source: str = ""):
    return livekit.publish(room, identity, clip.video, clip.audio, source=source)


def region(path, t: float, x: float, y: float, w: float = 0.1, h: float = 0.2):
    return analysis.region_color(analysis.frame_at(path, t), x, y, w, h)


def near(rgb, color: str) -> bool:
    return analysis.color_distance(rgb, color) <= 45


def test_grid_shows_each_publisher_and_reflows_when_one_leaves(livekit, clips, start_record):
    room = "grid-room"
    publish(livekit, room, "alice", clips["alice"])
    livekit.wait_published(room, {"alice": 2})  # alice first: join order is tile order
    bob = publish(livekit, room, "bob", clips["bob"])
    livekit.wait_published(room, {"alice": 2, "bob": 2})
    run = start_record("--room", "livekit", "--room-name", room, "--layout", "grid", *TINY, env=livekit.env)
    run.wait_for_status("ACTIVE", timeout=40)
    time.sleep(3.5)
    bob.stop()  # bob leaves: the grid gives alice the whole stage
    time.sleep(4)
    run.proc.send_signal(signal.SIGINT)
    done = run.finish()
    assert done.code == 0, done.stderr[-2000:]
    out = done.output
    duration = analysis.facts(out).duration
    assert duration > 6
    # Both on stage, side by side, in join order.
    assert near(region(out, 1.5, 0.2, 0.4), ALICE[0]) and near(region(out, 1.5, 0.7, 0.4), BOB[0])
    # Bob gone: alice fills the middle, nothing of bob is left.
    late = analysis.frame_at(out, duration - 1)
    assert near(analysis.region_color(late, 0.45, 0.4, 0.1, 0.2), ALICE[0])
    assert not near(analysis.region_color(late, 0.75, 0.4, 0.1, 0.2), BOB[0])
    sound = analysis.audio_samples(out)
    assert all(analysis.loudest_level(sound, tone, 0.5, 3) > 0.02 for tone in (ALICE[1], BOB[1]))
    assert analysis.tone_level(sound, ALICE[1], duration - 2, duration - 0.5) > 0.02
    assert analysis.tone_level(sound, BOB[1], duration - 2, duration - 0.5) < 0.005
    # The sidecars: both there from the start, alice to the end; bob's leave is where his tile goes; each
    # spoke (their clips' tones), bob no longer than he stayed.
    people = json.loads(out.with_name(f"{out.name}.participants.json").read_text())["participants"]
    assert [(p["identity"], p["from_start"], p["until_end"]) for p in people] == [("alice", True, True),
                                                                                 ("bob", True, False)]
    left = people[1]["end"]["offset"]
    assert near(region(out, left - 0.4, 0.7, 0.4), BOB[0]) and not near(region(out, left + 0.4, 0.75, 0.4), BOB[0])
    speakers = json.loads(out.with_name(f"{out.name}.speakers.json").read_text())["speakers"]
    assert {s["identity"] for s in speakers} == {"alice", "bob"}
    assert max(s["end"]["offset"] for s in speakers if s["identity"] == "bob") <= left


def test_room_deleted_ends_the_recording_complete(livekit, clips, start_record):
    room = "deleted-room"
    publish(livekit, room, "alice", clips["alice"])
    livekit.wait_published(room, {"alice": 2})
    run = start_record("--room", "livekit", "--room-name", room, "--layout", "grid", *TINY, env=livekit.env)
    run.wait_for_status("ACTIVE", timeout=40)
    time.sleep(2.5)
    livekit.delete_room(room)
    done = run.finish(timeout=30)
    assert done.code == 0, done.stderr[-2000:]
    assert done.result["stopped_by"] == "room_ended" and done.result["status"] == "COMPLETE"
    assert 1.5 < analysis.facts(done.output).duration < 6
    assert near(region(done.output, 1.0, 0.45, 0.4), ALICE[0])


def test_room_left_empty_ends_the_recording_idle(livekit, clips, start_record):
    # Idle stop is watched by the page's room model, the same for LiveKit rooms as for synthetic ones.
    room = "idle-room"
    alice = publish(livekit, room, "alice", clips["alice"])
    livekit.wait_published(room, {"alice": 2})
    run = start_record("--room", "livekit", "--room-name", room, "--layout", "grid", "--duration", "30",
                       "--idle-empty", "2", *TINY, env=livekit.env)
    run.wait_for_status("ACTIVE", timeout=40)
    time.sleep(2.5)
    alice.stop()  # she leaves; the room stays (LiveKit keeps an empty room a while)
    done = run.finish(timeout=40)
    assert done.code == 0, done.stderr[-2000:]
    assert done.result["stopped_by"] == "idle" and done.result["status"] == "COMPLETE", done.result
    assert done.result["reason"] == "no one in the room for 2 s"
    # About 2.5 s with her, then 2 s empty: far short of the 30 s limit.
    assert 3 < analysis.facts(done.output).duration < 10
    assert near(region(done.output, 1.0, 0.45, 0.4), ALICE[0])


def test_speaker_layout_features_who_is_talking(livekit, clips, start_record):
    room = "speaker-room"
    livekit.publish(room, "bob", clips["bob"].video)  # on camera, silent, and first in the room
    livekit.wait_published(room, {"bob": 1})
    publish(livekit, room, "alice", clips["alice"])
    livekit.wait_published(room, {"bob": 1, "alice": 2})
    run = start_record("--room", "livekit", "--room-name", room, "--layout", "speaker", "--duration", "4", *TINY,
                       env=livekit.env)
    done = run.finish(timeout=60)
    assert done.code == 0, done.stderr[-2000:]
    # Alice talks: she has the main area; bob, who joined first, is the thumbnail in the strip below.
    assert near(region(done.output, 3.0, 0.45, 0.3), ALICE[0])
    assert near(region(done.output, 3.0, 0.48, 0.86, 0.04, 0.08), BOB[0])


def test_layout_changes_while_recording(livekit, clips, start_record):
    room = "layout-room"
    publish(livekit, room, "alice", clips["alice"])
    livekit.wait_published(room, {"alice": 2})
    livekit.publish(room, "bob", clips["bob"].video)  # silent: alice is the one speaker
    livekit.wait_published(room, {"alice": 2, "bob": 1})
    run = start_record("--room", "livekit", "--room-name", room, "--layout", "grid", *TINY, control=True,
                       env=livekit.env)
    run.wait_for_status("ACTIVE", timeout=40)
    time.sleep(2.5)
    run.send({"op": "update_layout", "id": 1, "layout": "custom/mine"})
    refused = run.wait_for(lambda e: e["type"] == "command" and e.get("id") == 1)
    assert not refused["ok"] and refused["code"] == "INVALID_ARGUMENT"
    sent = time.time()
    run.send({"op": "update_layout", "id": 2, "layout": "single-speaker-light"})
    reply = run.wait_for(lambda e: e["type"] == "command" and e.get("id") == 2)
    assert reply["ok"] and reply["layout"] == "single-speaker-light", reply
    time.sleep(2.5)
    run.proc.send_signal(signal.SIGINT)
    done = run.finish()
    assert done.code == 0, done.stderr[-2000:]
    at = sent - done.result["timings"]["start_recording"]
    # Grid before (bob on the right); within a second of the request, only the speaker, alice, fills the frame.
    assert near(region(done.output, at - 0.5, 0.75, 0.4), BOB[0])
    assert near(region(done.output, at + 1.0, 0.75, 0.4), ALICE[0])
    assert near(region(done.output, at + 1.0, 0.2, 0.4), ALICE[0])


def test_a_short_network_loss_reconnects_without_ending(livekit, clips, start_record):
    room = "flaky-room"
    publish(livekit, room, "alice", clips["alice"])
    livekit.wait_published(room, {"alice": 2})
    proxy = TcpProxy(livekit.port)  # the recorder reaches the server through this
    try:
        run = start_record("--room", "livekit", "--room-name", room, "--layout", "grid", *TINY,
                           env={**livekit.env, "LIVEKIT_URL": f"ws://127.0.0.1:{proxy.port}"})
        run.wait_for_status("ACTIVE", timeout=40)
        time.sleep(2)
        proxy.cut(3)  # the signal connection drops, and nothing connects for 3 s
        time.sleep(5)
        publish(livekit, room, "bob", clips["bob"])  # news only a reconnected recorder hears of
        livekit.wait_published(room, {"alice": 2, "bob": 2})
        time.sleep(6)  # the client retries with growing pauses (up to 7 s): one is past the outage by now
        run.proc.send_signal(signal.SIGINT)
        done = run.finish()
    finally:
        proxy.close()
    assert done.code == 0, done.stderr[-2000:]
    assert done.result["stopped_by"] == "stopped", done.result  # not room_ended: it came back
    duration = analysis.facts(done.output).duration
    assert duration > 10
    # Alice all along; bob, who joined after the loss, on stage beside her with his sound.
    assert near(region(done.output, 3, 0.45, 0.4), ALICE[0])
    assert near(region(done.output, duration - 0.5, 0.2, 0.4), ALICE[0])
    assert near(region(done.output, duration - 0.5, 0.7, 0.4), BOB[0])
    sound = analysis.audio_samples(done.output)
    assert analysis.tone_level(sound, ALICE[1], duration - 1.5, duration - 0.3) > 0.02
    assert analysis.tone_level(sound, BOB[1], duration - 1.5, duration - 0.3) > 0.02


def test_audio_only_room_composite(livekit, clips, start_record):
    room = "audio-room"
    publish(livekit, room, "alice", clips["alice"])
    livekit.publish(room, "bob", clips["bob"].audio)  # no camera at all
    livekit.wait_published(room, {"alice": 2, "bob": 1})
    run = start_record("--room", "livekit", "--room-name", room, "--audio-only", "--duration", "3",
                       output="room.ogg", env=livekit.env)
    done = run.finish(timeout=60)
    assert done.code == 0, done.stderr[-2000:]
    facts = analysis.facts(done.output)
    assert facts.video_codec is None and facts.audio_codec == "opus" and facts.duration > 2.5
    sound = analysis.audio_samples(done.output)
    assert all(analysis.loudest_level(sound, tone, 0.5) > 0.02 for tone in (ALICE[1], BOB[1]))


def test_each_picture_waits_for_its_sound(livekit, tmp_path, start_record):
    """LiveKit's server gives each track a stream of its own, so Chrome plays a sound ~80 ms after its
    picture; the page holds each video back by its sound's delay (static/sdk/lipsync.js). Once it has
    measured, the sync markers (a flash and a click each second) in the recording agree."""
    clip = make_marker_clip(tmp_path)
    room = "sync-room"
    livekit.publish(room, "alice", clip.video, clip.audio)
    livekit.wait_published(room, {"alice": 2})
    run = start_record("--room", "livekit", "--room-name", room, "--layout", "grid", *TINY, "--duration", "12",
                       env=livekit.env)
    done = run.finish(timeout=90)
    assert done.code == 0, done.stderr[-2000:]
    settled = analysis.av_offsets(done.output)[5:]  # one marker a second: from the sixth second on
    assert len(settled) >= 5, settled
    assert abs(statistics.median(settled)) <= 0.045, settled


def test_an_empty_room_is_recorded_after_the_wait_and_says_so(livekit, start_record):
    run = start_record("--room", "livekit", "--room-name", "empty-room", "--duration", "1", *TINY, env=livekit.env)
    done = run.finish(timeout=60)
    assert done.code == 0, done.stderr[-2000:]
    active = next(e for e in done.events if e["type"] == "status" and e["status"] == "ACTIVE")
    assert "nothing was published" in active["message"]


def test_tiles_take_the_simulcast_layer_that_fits_them(livekit, tmp_path, start_record):
    # Each layer of alice's camera in its own colour: the picture says which layer the recorder took.
    low, high = "#f58231", "#911eb4"
    layers = [make_clip(tmp_path, color, ALICE[1], seconds=30, size=size).video
              for color, size in ((low, "160x120"), ("#42d4f4", "320x240"), (high, "640x480"))]
    room = "simulcast-room"
    livekit.publish(room, "alice", *layers, simulcast=True)
    livekit.wait_published(room, {"alice": 1})
    for (width, height), color in (((128, 72), low), ((1280, 720), high)):
        run = start_record("--room", "livekit", "--room-name", room, "--layout", "grid", "--duration", "4",
                           "--width", str(width), "--height", str(height), output=f"{width}.mp4", env=livekit.env)
        done = run.finish(timeout=60)
        assert done.code == 0, done.stderr[-2000:]
        assert near(region(done.output, 3.5, 0.45, 0.4), color), width


def test_screen_share_takes_the_stage(livekit, clips, start_record):
    room = "share-room"
    publish(livekit, room, "alice", clips["alice"])
    publish(livekit, room, "carol", clips["share"], source="screen_share")
    livekit.wait_published(room, {"alice": 2, "carol": 2})
    run = start_record("--room", "livekit", "--room-name", room, "--layout", "pip", "--duration", "3", *TINY,
                       env=livekit.env)
    done = run.finish(timeout=60)
    assert done.code == 0, done.stderr[-2000:]
    assert near(region(done.output, 2.0, 0.45, 0.4), SHARE[0])  # the share fills the frame
    sound = analysis.audio_samples(done.output)
    assert analysis.loudest_level(sound, SHARE[1], 0.5) > 0.02  # the share's own sound plays


def test_the_service_records_a_room_of_its_livekit_server(livekit, clips, livekit_service):
    room = "service-room"
    publish(livekit, room, "alice", clips["alice"])
    livekit.wait_published(room, {"alice": 2})
    # A plain BaxCloud request: the room name is the LiveKit room.
    status, info, _ = livekit_service.call("POST", "/v1/egress/start", {"roomName": room, "layout": "grid",
                                                                       "advanced": {"width": 320, "height": 180}})
    assert status == 201, info
    livekit_service.wait_status(info["id"], "ACTIVE", timeout=60)
    time.sleep(2.5)
    livekit.delete_room(room)  # the room closes: the egress completes
    done = livekit_service.wait_status(info["id"], "COMPLETE", timeout=60)
    path = done["file"]["location"]
    assert near(region(path, 1.0, 0.45, 0.4), ALICE[0])
    assert analysis.loudest_level(analysis.audio_samples(path), ALICE[1], 0.5) > 0.02


def start(server, **body) -> str:
    status, info, _ = server.call("POST", "/v1/egress/start", {"advanced": {"width": 320, "height": 180}, **body})
    assert status == 201, info
    return info["id"]


def record_together(server, *egresses: str, seconds: float = 3) -> dict[str, dict]:
    """Once all are ACTIVE, record `seconds` more, stop them all; each one's info once COMPLETE."""
    for egress in egresses:
        server.wait_status(egress, "ACTIVE", timeout=60)
    time.sleep(seconds)
    for egress in egresses:
        assert server.call("POST", f"/v1/egress/{egress}/stop")[0] == 200
    return {egress: server.wait_status(egress, "COMPLETE", timeout=60) for egress in egresses}


def test_participant_and_track_composite_egress(livekit, clips, livekit_service):
    room = "parts-room"
    publish(livekit, room, "alice", clips["alice"])
    publish(livekit, room, "bob", clips["bob"])
    livekit.wait_published(room, {"alice": 2, "bob": 2})
    tracks = livekit.tracks(room)
    bob_only = start(livekit_service, roomName=room, participant={"identity": "bob"},
                     file={"filepath": "{room_name}/{room_id}-{publisher_identity}"})
    # Alice's voice over bob's picture; the video track names the file, as LiveKit's does.
    mixed = start(livekit_service, roomName=room, trackComposite={"audioTrackId": tracks["alice"]["microphone"],
                                                                 "videoTrackId": tracks["bob"]["camera"]},
                  file={"filepath": "tc/{publisher_identity}-{track_type}-{track_source}-{track_id}"})
    done = record_together(livekit_service, bob_only, mixed)
    assert done[bob_only]["kind"] == "participant" and done[mixed]["kind"] == "track_composite"
    room_id = livekit.room_sid(room)
    assert room_id.startswith("RM_")
    assert done[bob_only]["file"]["location"].endswith(f"/{room}/{room_id}-bob.mp4")
    assert done[mixed]["file"]["location"].endswith(f"/tc/bob-video-camera-{tracks['bob']['camera']}.mp4")
    for egress, (picture, voice, other) in ((bob_only, (BOB[0], BOB[1], ALICE[1])),
                                           (mixed, (BOB[0], ALICE[1], BOB[1]))):
        path = done[egress]["file"]["location"]
        assert near(region(path, 1.5, 0.2, 0.4), picture) and near(region(path, 1.5, 0.75, 0.4), picture)
        sound = analysis.audio_samples(path)
        assert analysis.loudest_level(sound, voice, 0.5) > 0.02
        assert analysis.tone_level(sound, other, 0.5, 2) < 0.003


def test_track_egress_to_a_websocket_and_to_an_ogg_file(livekit, clips, livekit_service):
    room = "track-room"
    publish(livekit, room, "alice", clips["alice"])
    publish(livekit, room, "bob", clips["bob"])
    livekit.wait_published(room, {"alice": 2, "bob": 2})
    tracks = livekit.tracks(room)
    receiver = PcmReceiver()
    try:
        socket = start(livekit_service, roomName=room, track={"trackId": tracks["bob"]["microphone"],
                                                             "websocketUrl": receiver.url})
        ogg = start(livekit_service, roomName=room, track={"trackId": tracks["alice"]["microphone"]},
                    file={"filepath": "{track_type}/{publisher_identity}-{track_source}-{track_id}"})
        done = record_together(livekit_service, socket, ogg)
        sound = receiver.samples()
        assert len(sound) > 2 * 48000  # seconds of 48 kHz PCM
        assert analysis.loudest_level(sound, BOB[1], 0.5) > 0.02
        assert analysis.tone_level(sound, ALICE[1], 0.5, 2) < 0.003
        assert "secret-key" not in str(done[socket])  # the URL's query is redacted
        path = done[ogg]["file"]["location"]
        assert path.endswith(f"/audio/alice-microphone-{tracks['alice']['microphone']}.ogg")
        facts = analysis.facts(path)
        # The track is mono (lkpub publishes it so): so is its file, as LiveKit's untranscoded track egress.
        assert facts.audio_codec == "opus" and facts.video_codec is None and facts.channels == 1
        ogg_sound = analysis.audio_samples(path)
        assert analysis.loudest_level(ogg_sound, ALICE[1], 0.5) > 0.02
        assert analysis.tone_level(ogg_sound, BOB[1], 0.5, 2) < 0.003
    finally:
        receiver.close()


REPO = Path(__file__).resolve().parent.parent


class TemplateServer(BackgroundApp):
    """Serves tests/egress_template, with livekit-client and @livekit/egress-sdk from node_modules."""

    def __init__(self):
        from aiohttp import web

        modules = REPO / "node_modules"
        # egress-sdk ships CommonJS only; its users bundle it. This wraps it as an ES module instead.
        sdk = (modules / "@livekit/egress-sdk/dist/index.js").read_text()
        shim = ("import * as lk from '/livekit-client.mjs';\nconst exports = {};\nconst require = () => lk;\n"
                f"{sdk}\nexport default exports.default;\n")
        js = {"Content-Type": "text/javascript"}
        #: the join tokens the page was opened with
        self.tokens: list[str] = []

        async def page(request):
            self.tokens.append(request.query.get("token", ""))
            return web.FileResponse(REPO / "tests/egress_template/index.html")

        async def egress_sdk(_):
            return web.Response(text=shim, headers=js)

        async def livekit_client(_):
            return web.FileResponse(modules / "livekit-client/dist/livekit-client.esm.mjs", headers=js)

        app = web.Application()
        app.router.add_get("/", page)
        app.router.add_get("/egress-sdk.mjs", egress_sdk)
        app.router.add_get("/livekit-client.mjs", livekit_client)
        super().__init__(app)
        self.url = f"http://127.0.0.1:{self.port}/?theme=mine"


def test_a_template_written_for_the_egress_sdk_records_unchanged(livekit, clips, livekit_service):
    room = "template-room"
    publish(livekit, room, "alice", clips["alice"])
    livekit.wait_published(room, {"alice": 2})
    template = TemplateServer()
    try:
        # LiveKit's own request shape: custom_base_url is the template, layout is its to read.
        egress = start(livekit_service, room_name=room, custom_base_url=template.url, layout="plain")
        livekit_service.wait_status(egress, "ACTIVE", timeout=60)
        time.sleep(2)
        status, info, _ = livekit_service.call("POST", f"/v1/egress/{egress}/layout", {"layout": "banner"})
        assert status == 200 and info["layout"] == "banner", info
        time.sleep(2.5)
        livekit.delete_room(room)  # egress-sdk says END_RECORDING when the room goes
        done = livekit_service.wait_status(egress, "COMPLETE", timeout=60)
    finally:
        template.close()
    # The page's token joins this room only, hidden and subscribe-only, and is soon worthless if copied out.
    claims = jwt.decode(template.tokens[-1], API_SECRET, algorithms=["HS256"], options={"verify_aud": False})
    grant = claims["video"]
    assert (claims["sub"], grant["room"], grant["roomJoin"], grant["hidden"]) == (egress, room, True, True)
    assert grant["canPublish"] is False and grant["canPublishData"] is False and "roomAdmin" not in grant
    assert claims["exp"] - claims["nbf"] <= 600
    path = done["file"]["location"]
    duration = analysis.facts(path).duration
    assert near(region(path, 1.0, 0.45, 0.05), ALICE[0])  # plain: alice's camera up to the top
    assert near(region(path, duration - 0.5, 0.45, 0.05), "#ffffff")  # banner, from the recorder's metadata
    assert near(region(path, duration - 0.5, 0.45, 0.6), ALICE[0])
    assert analysis.loudest_level(analysis.audio_samples(path), ALICE[1], 0.5) > 0.02
