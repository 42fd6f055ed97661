"""Pause and resume into one file: the paused span is left out of the file and HLS (one continuous file, A/V
in sync across the cut, a discontinuity at each resume) while live destinations show the slate."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import signal
import subprocess
import threading
import time
from datetime import datetime

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from compositor import analysis
from compositor.errors import InvalidRequest
from compositor.outbound import AddressRefused, AllowedHosts, OutboundPolicy
from compositor.pipeline.finalize import finalize
from compositor.pipeline.pause import (
    SLATE_MAX_BYTES,
    concat_script,
    cut_playlist,
    fetch_slate,
    kept_pieces,
    sniff_image,
)
from compositor.plan import resolve
from compositor.protocol import COMMAND, Pause, Resume
from compositor.request import RecordRequest

from .conftest import assert_released
from .support.media import marker_partial
from .test_service import LK_KEY, LK_SECRET, both_formats_server

SLATE = "#14161a"  # the default card's background
ADA, CY = ("Ada", "#3cb44b", 450), ("Cy", "#e6194b", 900)
TINY = ["--width", "320", "--height", "180"]


def colour_share(frame: np.ndarray, color: str, tol: float = 40) -> float:
    return float((np.abs(frame.astype(float) - analysis.hex_rgb(color)).max(axis=2) <= tol).mean())


# --- the pieces ----------------------------------------------------------------------------------------------

def test_the_commands_are_typed():
    assert isinstance(COMMAND.validate_python({"op": "pause", "id": 1}), Pause)
    assert isinstance(COMMAND.validate_python({"op": "resume"}), Resume)


def test_pieces_around_the_spans_start_on_keyframes():
    keys = [0.0, 2.0, 4.0, 6.0, 8.0]
    assert kept_pieces([(3.1, 5.7)], keys) == [(None, 3.1), (6.0, None)]
    assert kept_pieces([(3.1, 5.7)], None) == [(None, 3.1), (5.7, None)]  # sound alone cuts anywhere
    assert kept_pieces([(1.0, 2.0), (3.0, 8.5)], keys) == [(None, 1.0), (2.0, 3.0)]  # paused to the end
    script = concat_script("/tmp/it's.mp4", [(None, 3.1), (6.0, None)])  # type: ignore[arg-type]
    assert script.splitlines() == ["ffconcat version 1.0", "file '/tmp/it'\\''s.mp4'", "outpoint 3.100000",
                                   "file '/tmp/it'\\''s.mp4'", "inpoint 6.000000"]


@pytest.mark.parametrize("shift", [0.0, 0.0087])
async def test_a_cut_keeps_the_sound_up_to_the_pause_and_in_step_after_it(tmp_path, shift):
    """A crash-safe MP4 (fragments of a second, each second's picture stored before its sound) with a flash and
    a click every second, cut around a pause at 3.5 s that resumes at the keyframe at 6 s. Copied, the sound's
    pieces lost what lay between the fragment's start and the pause (3.0-3.5 s), and the sound after the cut
    came that much early (or late, where copied pieces overlapped): it moved with where the pause fell. A sound
    moved against its picture (`sound_shift`) stays moved by as much in every piece."""
    partial = marker_partial(tmp_path / "rec.partial.mp4", 8)
    config = resolve(RecordRequest.model_validate({"file": {"filepath": str(tmp_path / "rec.mp4")}}))
    facts = await finalize(config, partial, [(None, 3.5), (6.0, None)], sound_shift=shift)
    after = analysis.marker_pairs(facts.path)
    # The markers at 1, 2, 3 s; then those at 6 and 7 s of the recording, at 3.5 and 4.5 s of the file; each
    # with its click.
    assert [round(f, 2) for f, _ in after] == [1.0, 2.0, 3.0, 3.5, 4.5], after
    assert max(abs(offset - shift) for _, offset in after) <= 0.003, after
    sound = analysis.audio_samples(facts.path).size / analysis.AUDIO_RATE
    assert abs(facts.duration - 5.5) <= 0.05 and abs(sound - facts.duration) <= 0.03, (facts.duration, sound)


def test_the_playlist_loses_the_paused_segments_and_marks_the_resume(tmp_path):
    names = [f"s_{i}.ts" for i in range(5)]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    playlist = tmp_path / "s.m3u8"
    playlist.write_text("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n"
                        + "".join(f"#EXTINF:2.000000,\n{n}\n" for n in names) + "#EXT-X-ENDLIST\n")
    dropped = cut_playlist(playlist, [(2.7, 5.8)])  # segments start at 0, 2, 4, 6, 8
    assert [p.name for p in dropped] == ["s_2.ts"] and not (tmp_path / "s_2.ts").exists()
    lines = playlist.read_text().splitlines()
    assert lines[lines.index("s_1.ts") + 1] == "#EXT-X-DISCONTINUITY"
    assert lines.count("#EXT-X-DISCONTINUITY") == 1 and lines[-1] == "#EXT-X-ENDLIST"


def test_a_slate_must_be_an_image():
    assert sniff_image(b"\x89PNG\r\n\x1a\nrest") == "image/png"
    assert sniff_image(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp"
    with pytest.raises(InvalidRequest, match="not a PNG, JPEG, GIF or WebP"):
        sniff_image(b"<svg onload=alert(1)>")


async def test_the_worker_fetches_a_slate_as_an_attacker_would_want_it_not_to():
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
    answers = {"/slate.png": web.Response(body=png),
               "/page": web.Response(text="<script>alert(1)</script>", content_type="text/html"),
               "/huge": web.Response(body=png + b"\0" * SLATE_MAX_BYTES)}

    async def answer(request):
        if request.path == "/elsewhere":
            raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")
        return answers[request.path]

    app = web.Application()
    app.router.add_get("/{name:.*}", answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    base = f"http://127.0.0.1:{server.port}"
    try:
        allowed = OutboundPolicy(AllowedHosts.parse([f"127.0.0.1:{server.port}"]), trusted=False)
        assert await fetch_slate(f"{base}/slate.png", allowed, None) == \
            "data:image/png;base64," + base64.b64encode(png).decode()
        for path, why in (("/elsewhere", "HTTP 302"), ("/page", "not a PNG, JPEG, GIF or WebP"),
                          ("/huge", "larger than 5 MB")):
            with pytest.raises(InvalidRequest, match=why) as caught:
                await fetch_slate(base + path, allowed, None)
            assert caught.value.details["field"] == "pause.slateUrl"
        # Without the operator's leave, a local address is refused before anything connects.
        with pytest.raises(AddressRefused):
            await fetch_slate(f"{base}/slate.png", OutboundPolicy(trusted=False), None)
    finally:
        await server.close()


# --- through the real pipeline -------------------------------------------------------------------------------

def slate_times(path, step: float = 0.25) -> list[float]:
    """The times (every `step` s) at which the default slate fills the frame."""
    length = analysis.facts(path).duration
    return [float(t) for t in np.arange(0.2, length - 0.1, step)
            if colour_share(analysis.frame_at(path, float(t)), SLATE, 6) > 0.5]


def test_a_paused_span_is_left_out_of_the_file_and_hls_and_live_shows_the_slate(start_record, nginx, tmp_path):
    # Cy is let in only while the recording is paused: neither their colour nor their tone may be kept, nor
    # the slate that covered them.
    run = start_record(*TINY, "--layout", "grid", "--sync-markers",
                       "--participant", f"name={ADA[0]},color={ADA[1]},tone={ADA[2]}",
                       "--participant", f"name={CY[0]},color={CY[1]},tone={CY[2]}", "--exclude", CY[0],
                       "--segments", str(tmp_path / "hls"), "--stream", nginx.url("live", "pause-slate"), "-v",
                       control=True)
    run.wait_for_status("ACTIVE", timeout=60)
    t0 = time.time()
    time.sleep(3)
    run.send({"op": "pause", "id": 1})
    paused = run.wait_for(lambda e: e["type"] == "command" and e.get("id") == 1)
    assert paused["ok"] and paused["paused"] is True and paused["pauses"][0]["end"] is None, paused
    run.send({"op": "pause", "id": 2})
    again = run.wait_for(lambda e: e["type"] == "command" and e.get("id") == 2)
    assert not again["ok"] and again["code"] == "ALREADY_PAUSED", again
    run.send({"op": "update_participants", "id": 3, "participants": {"exclude": []}})
    assert run.wait_for(lambda e: e["type"] == "command" and e.get("id") == 3)["ok"]
    time.sleep(max(0.0, t0 + 5.5 - time.time()))
    run.send({"op": "update_participants", "id": 4, "participants": {"exclude": [CY[0]]}})
    assert run.wait_for(lambda e: e["type"] == "command" and e.get("id") == 4)["ok"]
    time.sleep(max(0.0, t0 + 6 - time.time()))
    run.send({"op": "resume", "id": 5})
    resumed = run.wait_for(lambda e: e["type"] == "command" and e.get("id") == 5)
    assert resumed["ok"] and resumed["paused"] is False, resumed
    run.send({"op": "resume", "id": 6})
    assert run.wait_for(lambda e: e["type"] == "command" and e.get("id") == 6)["code"] == "NOT_PAUSED"
    (span,) = resumed["pauses"]
    time.sleep(max(0.0, t0 + 11 - time.time()))
    run.proc.send_signal(signal.SIGINT)
    done = run.finish()
    assert done.code == 0, done.stderr[-2000:]
    result, out = done.result, done.output
    # Nothing left behind: processes (pactl and ffprobe among them), the join's script, the partial file.
    assert_released(done.resources)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("hls")) == [
        "live.mp4", "live.mp4.participants.json", "live.mp4.speakers.json"]
    # The sidecars tell the file's room: Cy, there only while paused, never was; Ada was there all along.
    sidecar = json.loads((tmp_path / "live.mp4.participants.json").read_text())
    assert [(p["name"], p["start"]["offset"], p["from_start"], p["until_end"]) for p in sidecar["participants"]] \
        == [(ADA[0], 0.0, True, True)], sidecar
    assert abs(sidecar["participants"][0]["end"]["offset"] - analysis.facts(out).duration) < 0.1, sidecar
    timings = result["timings"]
    paused_for = span["end"] - span["start"]
    assert 3.0 <= paused_for <= 5.2, span  # asked for 3 s; the resume waits for a keyframe (at most 2 s)
    # One file as long as what was recorded (its first frame to the stop, less the pause; the encoder takes what
    # it already captured after the stop). The file goes on from the keyframe after the resume: just after it,
    # or (when a loaded machine reported the encoder's frame clock late) the one after that, 2 s on.
    facts = analysis.facts(out)
    recorded = timings["stop_requested"] - timings["first_sample"] - paused_for
    kept = [ln.split("recorder: ")[-1] for ln in done.stderr.splitlines() if "the file keeps" in ln]
    assert recorded - 2.3 <= facts.duration <= recorded + 0.8, (facts.duration, recorded, span, kept, timings)
    assert result["file"]["duration"] == pytest.approx(facts.duration, abs=0.01)
    # Ada all along; never Cy, never the slate.
    for t in np.arange(0.3, facts.duration - 0.1, 0.2):
        frame = analysis.frame_at(out, float(t))
        assert colour_share(frame, CY[1]) < 0.002, f"Cy on screen at {t:.2f}"
        assert colour_share(frame, SLATE, 6) < 0.5, f"the slate at {t:.2f}"
    pcm = analysis.audio_samples(out)
    cut = span["start"] - timings["first_sample"]  # the cut in the file's time
    assert analysis.tone_level(pcm, CY[2], 0.2, facts.duration - 0.1) < 0.003
    # Ada on each side of the cut. (Not across it: her tone's phase jumps there, and one measure over both sides
    # can cancel itself out, as it did once: 0.014.)
    assert analysis.tone_level(pcm, ADA[2], 0.3, cut - 0.2) > 0.02, cut
    assert analysis.tone_level(pcm, ADA[2], cut + 0.2, facts.duration - 0.3) > 0.02, cut
    # The sync markers agree on both sides of the cut: a cut that moved the sound against the picture would move
    # every marker after it (copied pieces of sound moved it by up to a second). (A loaded machine delays a
    # marker's flash or click now and then, paused or not: the best marker of each side, and the middle one, are
    # what a shift would show in.)
    paired = analysis.marker_pairs(out, pcm)
    before = [o for f, o in paired if f < cut - 0.6]
    after = [o for f, o in paired if f > cut + 0.6]
    assert before and after and min(map(abs, before)) <= 0.05 and min(map(abs, after)) <= 0.05, (paired, cut)
    assert abs(float(np.median(after) - np.median(before))) <= 0.025, (paired, cut)
    # HLS: the slate's segments are gone, the resume is a discontinuity.
    playlist = (tmp_path / "hls.m3u8").read_text()
    assert playlist.count("#EXT-X-DISCONTINUITY") == 1, playlist
    assert result["segments"]["duration"] <= facts.duration + 2.1, (result["segments"], facts.duration)
    # Live: the destination stayed connected all along and saw the slate, in silence, for the pause.
    (received,) = nginx.recordings("pause-slate")
    slate = slate_times(received)
    assert len(slate) >= 3.0 / 0.25 - 1 and slate[-1] - slate[0] <= paused_for + 0.3, slate
    live = analysis.audio_samples(received)
    assert analysis.tone_level(live, ADA[2], slate[0] + 0.3, slate[-1] - 0.3) < 0.003
    assert analysis.tone_level(live, ADA[2], slate[-1] + 0.5, analysis.facts(received).duration - 0.3) > 0.02


# --- through the service -------------------------------------------------------------------------------------

def test_pause_and_resume_through_the_api_with_their_webhooks(tmp_path):
    from livekit.api import TokenVerifier, WebhookReceiver

    key, secret = LK_KEY, LK_SECRET
    server, receiver = both_formats_server(tmp_path, "hook")
    room = {"roomName": "r", "advanced": {"width": 320, "height": 180},
            "room": {"participants": [{"name": ADA[0], "color": ADA[1], "tone": ADA[2]}]}}
    try:
        # A slate is fetched under the outbound policy: an attacker's internal address is refused at the start.
        for url in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/slate.png"):
            status, body, _ = server.call("POST", "/v1/egress/start", {**room, "pause": {"slateUrl": url}})
            assert status == 400 and body["error"]["details"]["field"] == "pause.slateUrl", body
        status, body, _ = server.call("POST", "/v1/egress/start", {**room, "pause": {"slateUrl": "file:///etc/passwd"}})
        assert status == 400 and "pause.slateUrl" in body["error"]["message"], body
        assert server.call("POST", "/v1/egress/EG_000000000000/pause")[0] == 404
        status, info, _ = server.call("POST", "/v1/egress/start", room)
        assert status == 201 and info["paused"] is False and info["pausedSpans"] == [], info
        egress = f"/v1/egress/{info['id']}"
        server.wait_status(info["id"], "ACTIVE")
        active_at = time.time()  # its first frame came a little before
        time.sleep(2)
        status, body, _ = server.call("POST", f"{egress}/resume")
        assert status == 409 and body["error"]["code"] == "NOT_PAUSED", body
        status, paused, _ = server.call("POST", f"{egress}/pause")
        assert status == 200 and paused["status"] == "ACTIVE" and paused["paused"] is True, paused
        assert len(paused["pausedSpans"]) == 1 and paused["pausedSpans"][0]["end"] is None, paused
        status, body, _ = server.call("POST", f"{egress}/pause")
        assert status == 409 and body["error"]["code"] == "ALREADY_PAUSED", body
        assert server.call("GET", egress)[1]["paused"] is True
        time.sleep(2)
        status, resumed, _ = server.call("POST", f"{egress}/resume")
        assert status == 200 and resumed["paused"] is False, resumed
        (span,) = resumed["pausedSpans"]
        paused_for = (datetime.fromisoformat(span["end"]) - datetime.fromisoformat(span["start"])).total_seconds()
        assert 2.0 <= paused_for <= 4.5, span
        time.sleep(2)
        stop_at = time.time()
        assert server.call("POST", f"{egress}/stop")[0] == 200
        done = server.wait_status(info["id"], "COMPLETE")
        assert done["pausedSpans"] == [span] and done["paused"] is False, done
        status, body, _ = server.call("POST", f"{egress}/pause")
        assert status == 409 and body["error"]["code"] == "EGRESS_NOT_ACTIVE", body
        recording = server.call("GET", f"/v1/recordings/rec_{info['id'][3:]}")[1]
        assert recording["pausedSpans"] == [span], recording
        # The file: what was recorded, less the pause.
        recorded = stop_at - active_at - paused_for
        assert recorded - 0.5 <= done["file"]["duration"] <= recorded + 1.5, (done["file"], recorded)
        # Webhooks: ours say paused and resumed with the spans; LiveKit's egress_updated says it in details.
        deadline = time.monotonic() + 20
        while b"egress_ended" not in b"".join(b for _, b in receiver.posts) and time.monotonic() < deadline:
            time.sleep(0.2)
        ours = [json.loads(b) for h, b in receiver.posts if h.get("Content-Type") == "application/json"]
        assert [e["event"] for e in ours] == ["recording.started", "recording.paused", "recording.resumed",
                                              "recording.completed"], ours
        assert ours[1]["data"]["paused"] is True and ours[1]["data"]["pausedSpans"][0]["end"] is None
        assert ours[2]["data"]["paused"] is False and ours[2]["data"]["pausedSpans"] == [span]
        assert ours[3]["data"]["pausedSpans"] == [span]
        check = WebhookReceiver(TokenVerifier(key, secret))
        lk = [check.receive(b.decode(), h["Authorization"]) for h, b in receiver.posts
              if h.get("Content-Type") == "application/webhook+json"]
        updates = [e.egress_info.details for e in lk if e.event == "egress_updated"]
        assert any(d.startswith("Paused since ") for d in updates), updates
    finally:
        server.stop_server()
        receiver.close()


def test_live_destinations_show_the_requests_slate_image(start_record, nginx, tmp_path):
    # The slate is an image of the request's (here magenta), fetched by the worker and shown full frame.
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=0xff00ff:s=64x36", "-frames:v", "1",
                    str(tmp_path / "slate.png")], check=True)
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(tmp_path)))
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        run = start_record(*TINY, "--layout", "grid", "--participant", f"name={ADA[0]},color={ADA[1]}",
                           "--stream", nginx.url("live", "pause-image"),
                           "--slate-url", f"http://127.0.0.1:{site.server_port}/slate.png", output=None,
                           control=True)
        run.wait_for_status("ACTIVE", timeout=60)
        time.sleep(1.5)
        run.send({"op": "pause", "id": 1})
        assert run.wait_for(lambda e: e["type"] == "command" and e.get("id") == 1)["ok"]
        time.sleep(2.5)
        run.send({"op": "resume", "id": 2})
        assert run.wait_for(lambda e: e["type"] == "command" and e.get("id") == 2)["ok"]
        time.sleep(1.5)
        run.proc.send_signal(signal.SIGINT)
        assert run.finish().code == 0
    finally:
        site.shutdown()
        site.server_close()
    (received,) = nginx.recordings("pause-image")
    shown = [float(t) for t in np.arange(0.2, analysis.facts(received).duration - 0.1, 0.25)
             if colour_share(analysis.frame_at(received, float(t)), "#ff00ff") > 0.9]
    assert len(shown) >= 6, shown  # the pause's 2.5 s, in frames sampled every 0.25 s
    assert colour_share(analysis.frame_at(received, shown[-1] + 1.0), ADA[1]) > 0.3  # the room is back
