"""Audio routing: each voice in the channel the request puts it (routes by track, identity or participant kind;
LiveKit's dual-channel mixings), checked by splitting the recording's channels and listening for each tone."""

from __future__ import annotations

import json
import os
import time

import pytest
from google.protobuf import json_format
from livekit.protocol import egress as egress_proto

from compositor import analysis
from compositor.api.livekit_shape import from_livekit
from compositor.errors import InvalidRequest
from compositor.plan import resolve
from compositor.request import RecordRequest, first_error
from compositor.service.livekit_info import egress_info
from compositor.service.requests import ServerFacts, StartEgressRequest
from compositor.service.seams import EgressRecord
from tools.peers.livekit import make_clip

HEARD, SILENT = 0.02, 0.003  # a tone's RMS where it plays, and at most where it must not


def channels(path, *tones: float, t0: float = 0.5) -> dict[str, list[float]]:
    """Each tone's level in the left and the right channel: its loudest second after t0 (a tone that must not play
    in a channel must not play in any second of it)."""
    return {side: [analysis.loudest_level(pcm, f, t0) for f in tones]
            for side in ("left", "right") for pcm in [analysis.audio_samples(path, side)]}


def assert_placed(levels: dict[str, list[float]], tones: list[float], places: list[str | None]) -> None:
    """Each tone is heard in its place's channels (left, right, both) and nowhere else (None: not at all)."""
    for i, place in enumerate(places):
        for side in ("left", "right"):
            level = levels[side][i]
            if place in (side, "both"):
                assert level > HEARD, f"{tones[i]} Hz should play in the {side} channel: {levels}"
            else:
                assert level < SILENT, f"{tones[i]} Hz should not play in the {side} channel: {levels}"


# --- the request ---------------------------------------------------------------------------------------------

def egress(audio: dict, **body) -> StartEgressRequest:
    return StartEgressRequest.model_validate({"roomName": "r", "audio": audio, **body})


@pytest.mark.parametrize(("audio", "message"), [
    ({"routes": [{"trackId": "TR_a", "participantIdentity": "bob", "channel": "left"}]},
     "audio.routes.0: a route names exactly one of trackId, participantIdentity and participantKind, not trackId "
     "and participantIdentity"),
    ({"routes": [{"channel": "left"}]},
     "audio.routes.0: a route names exactly one of trackId, participantIdentity and participantKind"),
    ({"routes": [{"participantKind": "robot", "channel": "left"}]}, "audio.routes.0.participantKind: Input should be"),
    ({"routes": [{"trackId": "TR_a", "channel": "middle"}]}, "audio.routes.0.channel: Input should be 'both', "),
    ({"routes": [{"participantKind": "agent", "channel": "left"}], "mixing": "dual_channel_agent"},
     "audio: give routes or mixing 'dual_channel_agent', not both"),
    ({"mixing": "quad"}, "audio.mixing: Input should be 'default', 'dual_channel_agent' or"),
    ({"routes": [{"trackId": "TR_a", "chanel": "left"}]}, "audio.routes.0.chanel: Extra inputs are not permitted"),
])
def test_a_bad_audio_field_is_refused_naming_the_field(audio, message):
    with pytest.raises(ValueError) as caught:
        egress(audio)
    assert first_error(caught.value).startswith(message), first_error(caught.value)


def test_routes_read_both_spellings_and_reach_the_worker_as_given():
    ours = egress({"routes": [{"participantKind": "agent", "channel": "left"},
                              {"participant_identity": "bob", "channel": "right"}], "captureAll": True})
    livekits = egress({"routes": [{"participant_kind": "AGENT", "channel": "AUDIO_CHANNEL_LEFT"},
                                  {"participantIdentity": "bob", "channel": "AUDIO_CHANNEL_RIGHT"}],
                       "capture_all": True})
    assert ours == livekits
    req = ours.to_record_request({"file": "out.mp4"}, None, ServerFacts())
    assert req.audio == ours.audio
    assert resolve(req).routing == ours.audio


def test_livekit_audio_mixing_is_our_mixing():
    body = {"room_name": "r", "file_outputs": [{"filepath": "x.mp4"}]}
    for mixing, ours in (("DUAL_CHANNEL_AGENT", "dual_channel_agent"), (2, "dual_channel_alternate"),
                         ("DEFAULT_MIXING", "default")):
        assert StartEgressRequest.model_validate(from_livekit({**body, "audio_mixing": mixing})).audio.mixing == ours
    assert StartEgressRequest.model_validate(from_livekit(body)).audio is None
    # As Twirp reads it: the protobuf message as JSON.
    message = egress_proto.RoomCompositeEgressRequest(room_name="r", audio_mixing=egress_proto.DUAL_CHANNEL_AGENT,
                                                      file_outputs=[egress_proto.EncodedFileOutput(filepath="x.mp4")])
    twirp = json_format.MessageToDict(message, preserving_proto_field_name=True)
    assert StartEgressRequest.model_validate(from_livekit(twirp)).audio.mixing == "dual_channel_agent"


def test_livekits_egress_info_says_the_mixing_it_was_asked_for():
    req = StartEgressRequest.model_validate(from_livekit({"room_name": "r", "audio_mixing": "DUAL_CHANNEL_ALTERNATE",
                                                          "file_outputs": [{"filepath": "x.mp4"}]}))
    record = EgressRecord(id="EG_mixed", room_name="r", mode="record", kind="room_composite", layout="grid",
                          quality="720p", status="ACTIVE", created_at=0,
                          request=req.to_record_request({"file": "x.mp4"}, None, ServerFacts()).model_dump(
                              mode="json", exclude_none=True))
    assert egress_info(record).room_composite.audio_mixing == egress_proto.DUAL_CHANNEL_ALTERNATE


@pytest.mark.parametrize("request_body", [
    {"web_url": "https://example.com/"},
    {"room": {"kind": "livekit"}, "template_url": "https://example.com/template"},
    {"video_only": True},
])
def test_routing_where_no_page_of_ours_plays_the_sound_is_refused(request_body):
    req = RecordRequest.model_validate({"file": {"filepath": "x.mp4"}, "audio": {"mixing": "dual_channel_agent"},
                                        **request_body})
    env = {"LIVEKIT_URL": "ws://127.0.0.1:7880", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s" * 32}
    with pytest.raises(InvalidRequest) as caught:
        resolve(req, env=env)
    assert caught.value.details["field"] == "audio"


def test_no_routing_leaves_the_page_as_it_was():
    for audio in (None, {"mixing": "default"}, {"routes": []}):
        req = RecordRequest.model_validate({"file": {"filepath": "x.mp4"}, "audio": audio})
        assert resolve(req).routing is None


# --- a synthetic room (no room server) ------------------------------------------------------------------------

def record_routed(record, audio: dict, *participants: str, tmp_path):
    config = tmp_path / "request.json"
    config.write_text(json.dumps({"audio": audio}))
    args = [a for p in participants for a in ("--participant", p)]
    run = record("--config", str(config), "--layout", "audio-only", "--duration", "3", *args, output="out.ogg")
    assert run.code == 0, run.stderr[-2000:]
    return run.output


def test_dual_channel_agent_puts_the_agent_left_and_everyone_else_right(record, tmp_path):
    out = record_routed(record, {"mixing": "dual_channel_agent"},
                        "name=Ann,tone=450", "name=Bot,tone=650,kind=agent", "name=Cy,tone=850", tmp_path=tmp_path)
    assert_placed(channels(out, 450, 650, 850), [450, 650, 850], ["right", "left", "right"])


def test_dual_channel_alternate_follows_join_order(record, tmp_path):
    # Ann joins last: Bob (first) is left, Cy right, Ann left again; silent Eve takes no side.
    out = record_routed(record, {"mixing": "dual_channel_alternate"}, "name=Ann,tone=450,joins=0.3",
                        "name=Eve,tone=0", "name=Bob,tone=650", "name=Cy,tone=850", tmp_path=tmp_path)
    assert_placed(channels(out, 450, 650, 850, t0=0.8), [450, 650, 850], ["left", "left", "right"])


@pytest.mark.parametrize("capture_all", [False, True])
def test_routes_place_what_they_name_and_capture_all_the_rest(record, tmp_path, capture_all):
    routes = [{"trackId": "TR_Ann_mic", "channel": "right"}, {"participantIdentity": "Ann", "channel": "left"},
              {"participantKind": "sip", "channel": "left"}, {"participantIdentity": "Bob", "channel": "both"}]
    out = record_routed(record, {"routes": routes, "captureAll": capture_all},
                        "name=Ann,tone=450", "name=Bob,tone=650", "name=Sip,tone=850,kind=sip", "name=Dee,tone=1050",
                        tmp_path=tmp_path)
    # Ann's track route beats her identity's; Dee, whom no route names, is left out unless capture_all.
    assert_placed(channels(out, 450, 650, 850, 1050), [450, 650, 850, 1050],
                  ["right", "both", "left", "both" if capture_all else None])


# --- a LiveKit room: an agent and a person publishing, each in their own tone --------------------------------

AGENT_TONE, PERSON_TONE = 450, 750


@pytest.fixture(scope="module")
def voices(livekit, tmp_path_factory):
    """An agent and a standard participant in one room, publishing their tones; the room's name."""
    folder = tmp_path_factory.mktemp("voices")
    room = "routed-room"
    livekit.publish(room, "robot", make_clip(folder, "#e6194b", AGENT_TONE, seconds=90).audio, kind="agent")
    livekit.wait_published(room, {"robot": 1})  # the robot first: join order places dual_channel_alternate
    livekit.publish(room, "human", make_clip(folder, "#3cb44b", PERSON_TONE, seconds=90).audio)
    livekit.wait_published(room, {"robot": 1, "human": 1})
    return room


def test_livekit_dual_channel_agent_through_livekits_request_shape(livekit, voices, livekit_service):
    status, info, _ = livekit_service.call("POST", "/v1/egress/start", {
        "room_name": voices, "audio_only": True, "audio_mixing": "DUAL_CHANNEL_AGENT",
        "file_outputs": [{"file_type": "OGG"}]})
    assert status == 201, info
    livekit_service.wait_status(info["id"], "ACTIVE", timeout=60)
    time.sleep(3)
    assert livekit_service.call("POST", f"/v1/egress/{info['id']}/stop")[0] == 200
    done = livekit_service.wait_status(info["id"], "COMPLETE", timeout=60)
    path = done["file"]["location"]
    assert analysis.facts(path).channels == 2
    assert_placed(channels(path, AGENT_TONE, PERSON_TONE), [AGENT_TONE, PERSON_TONE], ["left", "right"])


@pytest.mark.parametrize("audio", [
    {"routes": [{"participantIdentity": "robot", "channel": "left"},
                {"participantIdentity": "human", "channel": "right"}]},
    {"mixing": "dual_channel_alternate"},  # the robot joined first
], ids=["routes", "alternate"])
def test_livekit_routes_by_identity_and_alternates_by_join_order(livekit, voices, record, tmp_path, audio):
    config = tmp_path / "request.json"
    config.write_text(json.dumps({"audio": audio}))
    run = record("--config", str(config), "--room", "livekit", "--room-name", voices, "--width", "320",
                 "--height", "180", "--duration", "3", env={**os.environ, **livekit.env})
    assert run.code == 0, run.stderr[-2000:]
    assert_placed(channels(run.output, AGENT_TONE, PERSON_TONE), [AGENT_TONE, PERSON_TONE], ["left", "right"])
