"""WhipInput against an aiortc WHIP publisher, in-process over 127.0.0.1 (no HTTP): what comes out is what was
sent, and frames() ends when either side goes away."""

from __future__ import annotations

import asyncio
import contextlib
import re

import av
import numpy as np
import pytest

from compositor.ingress.inputs import PassedVideo
from compositor.ingress.whip import WhipInput, WhipOfferInvalid
from tools.peers.whip import LOOPBACK, WhipPublisher


async def connect(publisher: WhipPublisher, **kwargs) -> WhipInput:
    """The in-process WHIP exchange: offer, answer, accept."""
    whip = WhipInput(await publisher.offer(), ice_addresses=LOOPBACK, **kwargs)
    await publisher.accept(await whip.answer())
    return whip


async def collect(frames, seconds: float) -> tuple[list[av.VideoFrame], list[av.AudioFrame]]:
    """The frames of `seconds` from the first one (which must come within 10 s)."""
    video, audio = [], []
    async with asyncio.timeout(10 + seconds):
        async for frame in frames:
            (video if isinstance(frame, av.VideoFrame) else audio).append(frame)
            if frame.time >= seconds:
                break
    return video, audio


@pytest.mark.parametrize("codec", ["video/VP8", "video/H264"])
async def test_a_passed_video_comes_as_it_was_sent_from_its_first_key_frame(codec):
    """pass_video (WHIP's bypass): whole encoded pictures in the publisher's codec, the first a key frame that
    says the picture's size, on the same clock as the (decoded) sound; they decode to what was sent."""
    publisher = WhipPublisher(rgb=(200, 60, 120), tone_hz=440.0, video_codec=codec, width=320, height=240)
    whip = await connect(publisher, pass_video=True)
    frames = whip.frames()
    try:
        passed, audio = [], []
        async with asyncio.timeout(12):
            async for frame in frames:
                (passed if isinstance(frame, PassedVideo) else audio).append(frame)
                if frame.time >= 2.0:
                    break
        assert len(passed) >= 15 and len(audio) >= 50, (len(passed), len(audio))
        assert passed[0].keyframe and {(p.mime_type, p.width, p.height) for p in passed} == {(codec, 320, 240)}
        assert [p.time for p in passed] == sorted(p.time for p in passed) and passed[-1].time > 1.5
        decoder = av.CodecContext.create("libvpx" if codec == "video/VP8" else "h264", "r")
        pictures = [pic for p in passed for pic in decoder.decode(av.Packet(p.data))]
        assert len(pictures) >= len(passed) - 2, (len(pictures), len(passed))
        colour = pictures[-1].to_ndarray(format="rgb24").mean(axis=(0, 1))
        assert np.allclose(colour, publisher.rgb, atol=10), colour
    finally:
        await frames.aclose()
        await whip.close()
        await publisher.close()


def dominant_hz(audio: list[av.AudioFrame]) -> float:
    """The strongest frequency of the frames' first channel."""
    samples = np.concatenate([f.to_ndarray()[0, :: len(f.layout.channels)] for f in audio]).astype(float)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / audio[0].sample_rate)[spectrum.argmax()])


@pytest.mark.parametrize("codec", ["video/VP8", "video/H264"])
async def test_frames_carry_what_was_published(codec):
    publisher = WhipPublisher(rgb=(200, 60, 120), tone_hz=440.0, video_codec=codec)
    whip = await connect(publisher)
    assert whip.kinds == ("audio", "video")
    frames = whip.frames()
    try:
        video, audio = await collect(frames, 2.0)

        assert len(video) >= 15 and len(audio) >= 50, (len(video), len(audio))
        # Skip the first half second: the encoder settles on the picture and the decoder on the tone.
        colour = np.mean([f.to_ndarray(format="rgb24").mean(axis=(0, 1)) for f in video if f.time > 0.5], axis=0)
        assert np.allclose(colour, publisher.rgb, atol=10), colour
        assert abs(dominant_hz([f for f in audio if f.time > 0.5]) - 440.0) < 5

        # One clock for both tracks, from 0, in step with the publisher's pace.
        for frames_of_kind in (video, audio):
            times = [f.time for f in frames_of_kind]
            assert times == sorted(times) and 0 <= times[0] < 0.5, times[:3]
        assert np.median(np.diff([f.time for f in video])) == pytest.approx(1 / 15, rel=0.1)

        info = whip.video_info()
        assert {k: info[k] for k in ("mime_type", "width", "height")} == {
            "mime_type": codec, "width": 320, "height": 240}
        assert info["framerate"] == pytest.approx(15, abs=3)
        assert whip.audio_info() == {"mime_type": "audio/opus", "channels": 2, "sample_rate": 48_000}

        await publisher.close()
        async with asyncio.timeout(5):
            async for _ in frames:
                pass
        assert whip.end_reason is not None
    finally:
        await frames.aclose()
        await publisher.close()
        await whip.close()


async def test_close_ends_frames_promptly():
    publisher = WhipPublisher(video=False)
    whip = await connect(publisher)
    first = asyncio.Event()

    async def read() -> int:
        count = 0
        async with contextlib.aclosing(whip.frames()) as frames:
            async for _ in frames:
                count += 1
                first.set()
        return count

    reader = asyncio.create_task(read())
    try:
        async with asyncio.timeout(10):
            await first.wait()
        await whip.close()
        await whip.close()  # idempotent
        async with asyncio.timeout(1):
            assert await reader > 0
        assert whip.end_reason == "closed"
    finally:
        reader.cancel()
        await publisher.close()


async def test_a_publisher_that_never_connects_ends_frames():
    publisher = WhipPublisher(audio=False)
    whip = WhipInput(await publisher.offer(), ice_addresses=LOOPBACK, stall_s=0.5)
    await whip.answer()  # never given to the publisher
    try:
        async with asyncio.timeout(3), contextlib.aclosing(whip.frames()) as frames:
            assert [f async for f in frames] == []
        assert "did not connect" in whip.end_reason
    finally:
        await whip.close()
        await publisher.close()


def _without_lines(prefix: str):
    return lambda sdp: "".join(line for line in sdp.splitlines(True) if not line.startswith(prefix))


@pytest.mark.parametrize("mangle, why", [
    (lambda sdp: "hello", "not an SDP"),
    (lambda sdp: "", "not an SDP"),
    (lambda sdp: sdp.split("m=", 1)[0], "no audio or video"),
    (lambda sdp: sdp.replace("a=sendonly", "a=recvonly"), "recvonly"),
    (lambda sdp: re.sub(r"(VP8|H264)/90000", "VP9/90000", sdp), "include none of video/VP8, video/H264"),
    (lambda sdp: re.sub(r"opus/48000/2", "PCMU/8000", sdp), "include none of audio/opus"),
    (_without_lines("a=fingerprint"), "no DTLS fingerprint"),
    (_without_lines("a=ice-pwd"), "no ICE credentials"),
])
async def test_an_invalid_offer_is_refused(mangle, why):
    publisher = WhipPublisher()
    try:
        with pytest.raises(WhipOfferInvalid, match=why):
            WhipInput(mangle(await publisher.offer()))
    finally:
        await publisher.close()


# A browser's offer, as Chrome makes one (trimmed): many codecs, RTX, RED, FEC, header extensions, SSRC groups.
CHROME_OFFER = "\r\n".join([
    "v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
    "a=extmap-allow-mixed", "a=msid-semantic: WMS s",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126", "c=IN IP4 0.0.0.0", "a=rtcp:9 IN IP4 0.0.0.0",
    "a=candidate:1 1 udp 2122260223 127.0.0.1 9 typ host generation 0 network-id 1",
    "a=ice-ufrag:Wq8n", "a=ice-pwd:b0OnYCZx8yO5q6nMpkTeQ4Jc", "a=ice-options:trickle",
    "a=fingerprint:sha-256 " + ":".join(["5A"] * 32), "a=setup:actpass", "a=mid:0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid", "a=sendonly", "a=msid:s a", "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2", "a=rtcp-fb:111 transport-cc", "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:63 red/48000/2", "a=fmtp:63 111/111", "a=rtpmap:9 G722/8000", "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000", "a=rtpmap:13 CN/8000", "a=rtpmap:110 telephone-event/48000",
    "a=rtpmap:126 telephone-event/8000", "a=ssrc:1001 cname:c", "a=ssrc:1001 msid:s a",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99 102 103 106 107 112 113 45 46 116 117", "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0", "a=candidate:1 1 udp 2122260223 127.0.0.1 9 typ host generation 0 network-id 1",
    "a=ice-ufrag:Wq8n", "a=ice-pwd:b0OnYCZx8yO5q6nMpkTeQ4Jc", "a=ice-options:trickle",
    "a=fingerprint:sha-256 " + ":".join(["5A"] * 32), "a=setup:actpass", "a=mid:1",
    "a=extmap:14 urn:ietf:params:rtp-hdrext:toffset",
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid", "a=sendonly", "a=msid:s v", "a=rtcp-mux", "a=rtcp-rsize",
    "a=rtpmap:96 VP8/90000", "a=rtcp-fb:96 goog-remb", "a=rtcp-fb:96 transport-cc", "a=rtcp-fb:96 ccm fir",
    "a=rtcp-fb:96 nack", "a=rtcp-fb:96 nack pli", "a=rtpmap:97 rtx/90000", "a=fmtp:97 apt=96",
    "a=rtpmap:98 VP9/90000", "a=fmtp:98 profile-id=0", "a=rtpmap:99 rtx/90000", "a=fmtp:99 apt=98",
    "a=rtpmap:102 H264/90000", "a=rtcp-fb:102 nack", "a=rtcp-fb:102 nack pli",
    "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
    "a=rtpmap:103 rtx/90000", "a=fmtp:103 apt=102", "a=rtpmap:106 H264/90000",
    "a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
    "a=rtpmap:107 rtx/90000", "a=fmtp:107 apt=106", "a=rtpmap:112 H264/90000",
    "a=fmtp:112 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f",
    "a=rtpmap:113 rtx/90000", "a=fmtp:113 apt=112", "a=rtpmap:45 AV1/90000",
    "a=rtpmap:46 rtx/90000", "a=fmtp:46 apt=45", "a=rtpmap:116 red/90000", "a=rtpmap:117 ulpfec/90000",
    "a=ssrc-group:FID 2001 2002", "a=ssrc:2001 cname:c", "a=ssrc:2001 msid:s v", "a=ssrc:2002 cname:c",
    "a=ssrc:2002 msid:s v", "",
])
def h264_only(offer: str) -> str:
    """The offer as OBS's WHIP output makes it: H264 (with its RTX) the only video codec."""
    others = {"96", "97", "98", "99", "102", "103", "112", "113", "45", "46", "116", "117"}
    lines = []
    for line in offer.split("\r\n"):
        if (pt := re.match(r"a=(?:rtpmap|fmtp|rtcp-fb):(\d+) ", line)) and pt[1] in others:
            continue
        lines.append("m=video 9 UDP/TLS/RTP/SAVPF 106 107" if line.startswith("m=video") else line)
    return "\r\n".join(lines)


def codecs_of(answer: str) -> dict[str, list[str]]:
    """{kind: the answer's codec names} per m-section."""
    codecs: dict[str, list[str]] = {}
    for section in answer.split("m=")[1:]:
        codecs[section.split(" ", 1)[0]] = re.findall(r"a=rtpmap:\d+ ([\w-]+)/", section)
    return codecs


@pytest.mark.parametrize("offer, video", [(CHROME_OFFER, ["VP8", "rtx"]), (h264_only(CHROME_OFFER), ["H264", "rtx"])])
async def test_a_browser_offer_is_answered_with_one_codec_each(offer, video, monkeypatch):
    monkeypatch.setenv("COMPOSITOR_WHIP_ICE_ADDRESSES", "127.0.0.1")
    whip = WhipInput(offer)
    try:
        answer = await whip.answer()
    finally:
        await whip.close()
    assert codecs_of(answer) == {"audio": ["opus"], "video": video}
    assert re.findall(r"a=candidate:\S+ \d \w+ \d+ (\S+)", answer) == ["127.0.0.1"] * 2
    assert "a=setup:active" in answer and answer.count("a=recvonly") == 2
