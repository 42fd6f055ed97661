"""Ingress through `compositor serve`: RTMP pushed with ffmpeg through our nginx-rtmp, WHIP from an aiortc client,
a URL pulled from 127.0.0.1, into a real livekit-server; then our own egress records that room and the colour
and tone are checked in the file. The API: REST, and LiveKit's IngressService (livekit-api) over Twirp."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from livekit import api

from compositor import analysis
from compositor.service.webhooks import EVENT_ID_HEADER
from tools.peers.livekit import API_KEY, API_SECRET
from tools.peers.receivers import free_port, free_ports

from .conftest import HttpReceiver
from .test_service import Server

COLOR, TONE = "#e6194b", 660


@pytest.fixture(scope="module")
def hooks():
    receiver = HttpReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def service(livekit, hooks, tmp_path_factory):
    """`compositor serve` with RTMP and RTMPS ingest, publishing into the module's livekit-server."""
    rtmp_port, rtmps_port = free_ports(2)
    folder = tmp_path_factory.mktemp("ingress")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout",
                    folder / "key.pem", "-out", folder / "cert.pem", "-subj", "/CN=127.0.0.1"], check=True,
                   capture_output=True)
    env = {"COMPOSITOR_LIVEKIT_URL": livekit.http_url, "COMPOSITOR_LIVEKIT_API_KEY": API_KEY,
           "COMPOSITOR_LIVEKIT_API_SECRET": API_SECRET, "COMPOSITOR_INGRESS_RTMP_PORT": str(rtmp_port),
           "COMPOSITOR_INGRESS_RTMP_HOST": "127.0.0.1", "COMPOSITOR_INGRESS_RTMPS_PORT": str(rtmps_port),
           "COMPOSITOR_INGRESS_TLS_CERT": str(folder / "cert.pem"),
           "COMPOSITOR_INGRESS_TLS_KEY": str(folder / "key.pem"),
           "COMPOSITOR_WEBHOOK_URLS": hooks.url,
           "COMPOSITOR_WEBHOOK_FORMAT": "both",
           # WHIP answers with candidates on 127.0.0.1 only (aioice leaves loopback out unless told).
           "COMPOSITOR_WHIP_ICE_ADDRESSES": "127.0.0.1"}
    server = Server(folder / "data", "-v", env=env)
    server.rtmp_port, server.rtmps_port = rtmp_port, rtmps_port
    yield server
    server.stop_server()


def create(service, **body) -> dict:
    status, info, _ = service.call("POST", "/v1/ingress", {"participantIdentity": "encoder", **body})
    assert status == 201, info
    return info


def wait_state(service, ingress_id: str, *states: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, info, _ = service.call("GET", f"/v1/ingress/{ingress_id}")
        assert status == 200, info
        if info["state"]["status"] in states:
            return info
        time.sleep(0.1)
    raise AssertionError(f"{ingress_id} never reached {states}: {info}\n{service.log.read_text()[-3000:]}")


def push(url: str, seconds: float = 60, color: str = COLOR, tone: int = TONE) -> subprocess.Popen:
    """ffmpeg pushing a solid colour and a tone to `url` as OBS would (H.264 + AAC in FLV), in real time."""
    return subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
         f"color=c=0x{color.lstrip('#')}:s=320x240:r=30", "-f", "lavfi", "-i",
         f"sine=frequency={tone}:sample_rate=48000", "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast",
         "-tune", "zerolatency", "-g", "30", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k", "-f", "flv", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def record_room(service, room: str, seconds: float = 3) -> str:
    """Our own egress records the room for `seconds`: the file's path."""
    status, info, _ = service.call("POST", "/v1/egress/start", {"roomName": room, "layout": "grid",
                                                                "advanced": {"width": 320, "height": 180}})
    assert status == 201, info
    service.wait_status(info["id"], "ACTIVE", timeout=60)
    time.sleep(seconds)
    assert service.call("POST", f"/v1/egress/{info['id']}/stop")[0] == 200
    return service.wait_status(info["id"], "COMPLETE", timeout=60)["file"]["location"]


def shows(path: str, color: str, tone: int) -> None:
    """The recording shows `color` in the middle and sounds `tone` in most tenths of a second from 1 s to 2.5 s
    (the room's jitter buffers stretch the sound now and then, which shifts its phase: a DFT over a longer
    window would count that against it; the tone alone is ~0.09)."""
    rgb = analysis.region_color(analysis.frame_at(path, 2.0), 0.4, 0.4, 0.2, 0.2)
    assert analysis.color_distance(rgb, color) <= 45, rgb
    samples = analysis.audio_samples(path)
    levels = [round(analysis.tone_level(samples, tone, t / 10, t / 10 + 0.1), 3) for t in range(10, 25)]
    assert sum(level > 0.03 for level in levels) >= 0.8 * len(levels), levels


def events_of(hooks, ingress_id: str, livekit: bool = False) -> list[str]:
    """The webhook events received for an ingress, in order, each once: BaxCloud's Stream In ones, or LiveKit's.
    Delivery is at-least-once (an event a node was sending when it was killed goes again from another node): a
    receiver knows a repeat by its event id (our header; a LiveKit event's own id), as this one does."""
    where = "ingressInfo" if livekit else "data"
    seen, names = set(), []
    for headers, body in hooks.posts:
        event = json.loads(body)
        key = headers.get(EVENT_ID_HEADER) or event.get("id")
        if event.get(where, {}).get("ingressId") != ingress_id or key in seen:
            continue
        seen.add(key)
        names.append(event["event"])
    return names


def until(condition, timeout: float, what: str | Callable[[], str]):
    """Wait for `condition` to hold; `what` (or what it returns, when the wait failed) says what did not."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(what() if callable(what) else what)
        time.sleep(0.1)
    return value


def test_an_rtmp_push_is_in_the_room_and_in_our_recording_of_it(service, livekit, hooks):
    info = create(service, inputType="rtmp", roomName="rtmp-room", name="obs")
    assert info["url"] == f"rtmp://127.0.0.1:{service.rtmp_port}/live" and len(info["streamKey"]) >= 16
    assert info["state"]["status"] == "ENDPOINT_INACTIVE" and info["reusable"]
    # OBS: the server URL and the key, joined.
    pusher = push(f"{info['url']}/{info['streamKey']}")
    try:
        live = wait_state(service, info["ingressId"], "ENDPOINT_PUBLISHING")
        assert live["state"]["video"]["width"] == 320 and live["state"]["audio"]["sample_rate"] == 48000
        assert {t["type"] for t in live["state"]["tracks"]} == {"video", "audio"}
        livekit.wait_published("rtmp-room", {"encoder": 2})
        shows(record_room(service, "rtmp-room"), COLOR, TONE)
        # One publisher per key: a second push of the same key is refused.
        second = push(f"{info['url']}/{info['streamKey']}", seconds=5)
        assert second.wait(10) != 0
    finally:
        pusher.terminate()
        pusher.wait(10)
    ended = time.monotonic()
    done = wait_state(service, info["ingressId"], "ENDPOINT_INACTIVE", timeout=10)
    assert time.monotonic() - ended <= 5, "the end of the push was seen late"
    assert done["state"]["error"] is None
    until(lambda: "encoder" not in livekit.participants("rtmp-room"), 10, "the ingress stayed in the room")
    until(lambda: events_of(hooks, info["ingressId"]) == ["live.started", "live.ended"], 10,
          lambda: f"webhooks: {events_of(hooks, info['ingressId'])}")
    # LiveKit's format is an event of its own, delivered after ours: waited for, not raced.
    until(lambda: events_of(hooks, info["ingressId"], livekit=True) == ["ingress_started", "ingress_ended"], 10,
          lambda: f"LiveKit webhooks: {events_of(hooks, info['ingressId'], livekit=True)}")
    # Reusable: the same key goes live again.
    again = push(f"{info['url']}/{info['streamKey']}", seconds=30)
    try:
        wait_state(service, info["ingressId"], "ENDPOINT_PUBLISHING")
    finally:
        again.terminate()
        again.wait(10)
    wait_state(service, info["ingressId"], "ENDPOINT_INACTIVE", timeout=10)


def test_rtmps_goes_through_tls_to_the_same_ingest(service, livekit):
    info = create(service, inputType="rtmp", roomName="rtmps-room")
    assert info["rtmpsUrl"] == f"rtmps://127.0.0.1:{service.rtmps_port}/live"
    pusher = push(f"{info['rtmpsUrl']}/{info['streamKey']}")
    try:
        wait_state(service, info["ingressId"], "ENDPOINT_PUBLISHING")
        livekit.wait_published("rtmps-room", {"encoder": 2})
    finally:
        pusher.terminate()
        pusher.wait(10)
    wait_state(service, info["ingressId"], "ENDPOINT_INACTIVE", timeout=10)


def test_a_stalled_publisher_ends_its_session_in_error_within_5_s(service, livekit):
    info = create(service, inputType="rtmp", roomName="stall-room")
    pusher = push(f"{info['url']}/{info['streamKey']}")
    try:
        wait_state(service, info["ingressId"], "ENDPOINT_PUBLISHING")
        pusher.send_signal(signal.SIGSTOP)  # connected, sending nothing
        stalled = time.monotonic()
        done = wait_state(service, info["ingressId"], "ENDPOINT_ERROR", timeout=10)
        assert time.monotonic() - stalled <= 5, "the stall was seen late"
        assert done["state"]["errorCode"] == "INPUT_STALLED", done["state"]
        until(lambda: "encoder" not in livekit.participants("stall-room"), 10, "the ingress stayed in the room")
    finally:
        pusher.send_signal(signal.SIGCONT)
        pusher.kill()
        pusher.wait()
    # The key is free again: a new push goes live.
    again = push(f"{info['url']}/{info['streamKey']}", seconds=30)
    try:
        wait_state(service, info["ingressId"], "ENDPOINT_PUBLISHING")
    finally:
        again.terminate()
        again.wait(10)


def test_a_wrong_or_disabled_key_is_refused_at_once(service):
    info = create(service, inputType="rtmp", roomName="refused-room")
    started = time.monotonic()
    wrong = push(f"{info['url']}/not-{info['streamKey']}", seconds=10)
    assert wrong.wait(10) != 0 and time.monotonic() - started < 2.0
    assert service.call("PATCH", f"/v1/ingress/{info['ingressId']}", {"enabled": False})[0] == 200
    disabled = push(f"{info['url']}/{info['streamKey']}", seconds=10)
    assert disabled.wait(10) != 0
    assert service.call("GET", f"/v1/ingress/{info['ingressId']}")[1]["state"]["status"] == "ENDPOINT_INACTIVE"


def test_deleting_a_live_ingress_stops_its_session(service, livekit):
    info = create(service, inputType="rtmp", roomName="delete-room")
    pusher = push(f"{info['url']}/{info['streamKey']}")
    try:
        wait_state(service, info["ingressId"], "ENDPOINT_PUBLISHING")
        livekit.wait_published("delete-room", {"encoder": 2})
        status, gone, _ = service.call("DELETE", f"/v1/ingress/{info['ingressId']}")
        assert status == 200 and gone["state"]["status"] == "ENDPOINT_INACTIVE"
        assert service.call("GET", f"/v1/ingress/{info['ingressId']}")[0] == 404
        until(lambda: "encoder" not in livekit.participants("delete-room"), 10, "the ingress stayed in the room")
        assert pusher.wait(10) != 0  # its key admits no one now: nginx dropped it
    finally:
        pusher.kill()
        pusher.wait()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 15 s MP4 (colour + tone) served over HTTP on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("files")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "color=c=0x3cb44b:s=320x240:r=30",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", "15", "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-movflags", "+faststart",
                    str(folder / "clip.mp4")], check=True)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_a_url_is_pulled_in_real_time_into_the_room_and_completes(service, livekit, files):
    started = time.monotonic()
    info = create(service, inputType="url", roomName="url-room", url=f"{files}/clip.mp4")
    assert info["streamKey"] == "" and not info["reusable"]
    wait_state(service, info["ingressId"], "ENDPOINT_PUBLISHING")
    shows(record_room(service, "url-room", seconds=2.5), "#3cb44b", 440)
    done = wait_state(service, info["ingressId"], "ENDPOINT_COMPLETE", timeout=40)
    assert time.monotonic() - started >= 15, "pulled faster than real time"
    assert done["state"]["error"] is None


def test_a_url_the_policy_refuses_is_never_fetched(service):
    # Only 127.0.0.1 is allowed to this server: any other private address is refused before anything starts.
    status, body, _ = service.call("POST", "/v1/ingress", {"inputType": "url", "roomName": "r",
                                                           "participantIdentity": "p", "url": "http://10.1.2.3/x.mp4"})
    assert status == 400 and body["error"]["code"] == "ADDRESS_NOT_ALLOWED"
    # A DASH manifest would have ffmpeg open the URLs it names, out of the policy's reach: refused, saying so.
    status, body, _ = service.call("POST", "/v1/ingress", {"inputType": "url", "roomName": "r",
                                                           "participantIdentity": "p",
                                                           "url": "http://127.0.0.1:9/live.mpd?token=x"})
    assert status == 400 and body["error"]["code"] == "UNSUPPORTED" and "DASH" in body["error"]["message"]


def test_whip_from_an_aiortc_publisher(service, livekit):
    from tools.peers.whip import WhipPublisher

    info = create(service, inputType="whip", roomName="whip-room")
    assert info["url"] == service.base + "/w"

    async def session():
        publisher = WhipPublisher(rgb=tuple(int(COLOR[i:i + 2], 16) for i in (1, 3, 5)), tone_hz=TONE)
        try:
            location = await publisher.publish(info["url"], info["streamKey"])
            await asyncio.to_thread(wait_state, service, info["ingressId"], "ENDPOINT_PUBLISHING")
            path = await asyncio.to_thread(record_room, service, "whip-room")
            await publisher.stop(location, info["streamKey"])
            return path
        finally:
            await publisher.close()

    shows(asyncio.run(session()), COLOR, TONE)
    wait_state(service, info["ingressId"], "ENDPOINT_INACTIVE", timeout=10)


@pytest.mark.parametrize("codec", ["video/VP8", "video/H264"])
def test_whip_bypass_puts_the_publishers_own_video_in_the_room(service, livekit, codec):
    """bypassTranscoding (WHIP only, as LiveKit's): the publisher's pictures go into the room as they came, in
    its codec and one layer, and our recording of the room still shows them (and hears the sound, which is
    transcoded: the SDK takes no encoded audio)."""
    from livekit import api

    from tools.peers.whip import WhipPublisher

    room = f"pass-{codec[6:].lower()}"
    info = create(service, inputType="whip", roomName=room, bypassTranscoding=True)
    assert info["enableTranscoding"] is False

    def video_track():
        async def call(lkapi):
            res = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
            return [t for p in res.participants if p.identity == "encoder" for t in p.tracks
                    if t.type == api.TrackType.VIDEO]
        return livekit.api(call)

    async def session():
        publisher = WhipPublisher(rgb=tuple(int(COLOR[i:i + 2], 16) for i in (1, 3, 5)), tone_hz=TONE,
                                  video_codec=codec)
        try:
            location = await publisher.publish(info["url"], info["streamKey"])
            await asyncio.to_thread(wait_state, service, info["ingressId"], "ENDPOINT_PUBLISHING")
            tracks = await asyncio.to_thread(video_track)
            path = await asyncio.to_thread(record_room, service, room)
            await publisher.stop(location, info["streamKey"])
            return tracks, path
        finally:
            await publisher.close()

    tracks, path = asyncio.run(session())
    assert len(tracks) == 1 and tracks[0].mime_type.lower() == codec.lower() and not tracks[0].simulcast, tracks
    shows(path, COLOR, TONE)
    wait_state(service, info["ingressId"], "ENDPOINT_INACTIVE", timeout=10)


def test_a_wrong_whip_key_is_unauthenticated(service):
    status, body, _ = service.call("POST", "/w", None, key="nope")
    assert status in (400, 401)


def test_the_sdk_ingress_service_drives_the_twirp_api(service):
    async def drive():
        async with api.LiveKitAPI(service.base, API_KEY, API_SECRET) as lkapi:
            made = await lkapi.ingress.create_ingress(api.CreateIngressRequest(
                input_type=api.IngressInput.RTMP_INPUT, name="sdk", room_name="sdk-room",
                participant_identity="sdk-encoder", participant_name="SDK",
                video=api.IngressVideoOptions(source=api.TrackSource.CAMERA,
                                              preset=api.IngressVideoEncodingPreset.H264_540P_25FPS_2_LAYERS)))
            listed = await lkapi.ingress.list_ingress(api.ListIngressRequest(room_name="sdk-room"))
            changed = await lkapi.ingress.update_ingress(api.UpdateIngressRequest(ingress_id=made.ingress_id,
                                                                                  name="renamed"))
            whip = await lkapi.ingress.create_ingress(api.CreateIngressRequest(
                input_type=api.IngressInput.WHIP_INPUT, room_name="sdk-room", participant_identity="w",
                enable_transcoding=False))
            # Bypass is WHIP's only, as LiveKit's: an RTMP ingress cannot be changed to it.
            with pytest.raises(api.TwirpError) as rtmp_bypass:
                await lkapi.ingress.update_ingress(api.UpdateIngressRequest(ingress_id=made.ingress_id,
                                                                            enable_transcoding=False))
            assert rtmp_bypass.value.code == "invalid_argument"
            gone = await lkapi.ingress.delete_ingress(api.DeleteIngressRequest(ingress_id=made.ingress_id))
            after = await lkapi.ingress.list_ingress(api.ListIngressRequest(room_name="sdk-room"))
            with pytest.raises(api.TwirpError) as bad:
                await lkapi.ingress.create_ingress(api.CreateIngressRequest(
                    input_type=api.IngressInput.URL_INPUT, room_name="sdk-room", participant_identity="u"))
            return made, listed, changed, whip, gone, after, bad.value

    made, listed, changed, whip, gone, after, bad = asyncio.run(drive())
    assert made.ingress_id.startswith("IN_") and made.stream_key and made.url.startswith("rtmp://")
    assert made.state.status == api.IngressState.ENDPOINT_INACTIVE and made.reusable
    assert made.video.preset == api.IngressVideoEncodingPreset.H264_540P_25FPS_2_LAYERS
    assert [i.ingress_id for i in listed.items] == [made.ingress_id]
    assert changed.name == "renamed" and changed.room_name == "sdk-room"
    assert whip.url.endswith("/w") and whip.input_type == api.IngressInput.WHIP_INPUT
    assert made.enable_transcoding and not whip.enable_transcoding and whip.bypass_transcoding
    assert gone.ingress_id == made.ingress_id and [i.ingress_id for i in after.items] == [whip.ingress_id]
    assert bad.code == "invalid_argument"


def test_the_ingress_api_needs_the_ingress_admin_grant(service):
    token = api.AccessToken(API_KEY, API_SECRET).with_grants(api.VideoGrants(room_record=True)).to_jwt()
    import urllib.request
    req = urllib.request.Request(service.base + "/twirp/livekit.Ingress/ListIngress", data=b"{}", method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 403 and b"ingressAdmin" in err.value.read()


@pytest.mark.parametrize("body, field", [
    ({"inputType": "ftp", "roomName": "r", "participantIdentity": "p"}, "inputType"),
    ({"inputType": "rtmp", "roomName": "r", "participantIdentity": "p", "url": "http://x/y"}, ""),
    ({"inputType": "url", "roomName": "r", "participantIdentity": "p", "url": "file:///etc/passwd"}, ""),
    ({"inputType": "rtmp", "roomName": "r", "participantIdentity": "p", "bypassTranscoding": True}, ""),
    ({"inputType": "rtmp", "roomName": "r", "participantIdentity": "p", "video": {"preset": "H264_8K"}}, "video"),
    ({"inputType": "rtmp", "roomName": "../r", "participantIdentity": "p"}, "roomName"),
])
def test_bad_ingress_requests_say_which_field(service, body, field):
    status, answer, _ = service.call("POST", "/v1/ingress", body)
    assert status == 400 and answer["error"]["code"] == "INVALID_ARGUMENT", answer
    assert answer["error"]["details"].get("field", "").startswith(field)


def test_a_session_that_does_not_fit_is_refused_saying_why(livekit, files, tmp_path):
    """Ingress sessions share the node's cores with egresses: one over the capacity is refused, and says so."""
    env = {"COMPOSITOR_LIVEKIT_URL": livekit.http_url, "COMPOSITOR_LIVEKIT_API_KEY": API_KEY,
           "COMPOSITOR_LIVEKIT_API_SECRET": API_SECRET, "COMPOSITOR_INGRESS_RTMP_PORT": str(free_port()),
           "COMPOSITOR_INGRESS_RTMP_HOST": "127.0.0.1", "COMPOSITOR_CAPACITY": "0.6"}
    small = Server(tmp_path / "data", env=env)
    try:
        # 1080p needs a core: more than this node has at all.
        status, body, _ = small.call("POST", "/v1/ingress", {
            "inputType": "url", "roomName": "r", "participantIdentity": "p", "url": f"{files}/clip.mp4",
            "video": {"preset": "H264_1080P_30FPS_1_LAYER"}})
        assert status == 400 and "1.0 cores" in body["error"]["message"], body
        # An egress holds 0.25 of its 0.6 cores: a 720p session (0.5) does not fit beside it now.
        status, egress, _ = small.call("POST", "/v1/egress/start", {
            "roomName": "r", "advanced": {"width": 320, "height": 180},
            "room": {"participants": [{"name": "A", "color": "#4363d8", "tone": 450}]}})
        assert status == 201, egress
        info = create(small, inputType="rtmp", roomName="r")
        pusher = push(f"{info['url']}/{info['streamKey']}", seconds=10)
        assert pusher.wait(10) != 0
        state = small.call("GET", f"/v1/ingress/{info['ingressId']}")[1]["state"]
        assert state["status"] == "ENDPOINT_ERROR" and state["errorCode"] == "CAPACITY_EXCEEDED", state
        assert "needs 0.5 cores" in state["error"]
        small.call("POST", f"/v1/egress/{egress['id']}/stop")
        small.wait_status(egress["id"], "COMPLETE", "FAILED", "ABORTED", timeout=60)
    finally:
        small.stop_server()
