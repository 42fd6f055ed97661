"""The container image, built by scripts/docker-test.sh (`make test-docker`), run with podman.

One egress per container (`record`), checked in its pixels and tones, and
the service (`serve`) answering and recording in a container.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from compositor import analysis
from tools.peers.receivers import free_port

from .conftest import assert_color
from .support.client import caller, until_ended

pytestmark = pytest.mark.docker

IMAGE = os.environ.get("COMPOSITOR_IMAGE", "localhost/compositor:test")
PODMAN = shlex.split(os.environ.get("PODMAN", "podman"))
ROOM = ["--participant", "name=A,color=#e6194b,tone=440", "--participant", "name=B,color=#4363d8,tone=660"]


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=check)


def writable(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o777)  # the image runs as its own non-root user
    return folder


def test_one_egress_per_container_records_the_room(tmp_path):
    out = writable(tmp_path / "out")
    run = podman("run", "--rm", "--network", "none", "-v", f"{out}:/out", IMAGE, "record", "--events", "json",
                 "--width", "640", "--height", "360", "--layout", "grid", "--duration", "4", *ROOM,
                 "-o", "/out/room.mp4", check=False)
    events = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert run.returncode == 0, run.stderr[-3000:]
    result = next(e for e in events if e["type"] == "result")
    assert result["file"]["path"] == "/out/room.mp4"
    video = out / "room.mp4"
    facts = analysis.facts(video)
    assert (facts.width, facts.height, facts.video_codec, facts.audio_codec) == (640, 360, "h264", "aac")
    assert abs(facts.duration - 4) <= 0.4
    frame = analysis.frame_at(video, 2.0)
    assert_color(frame, (0.1, 0.3, 0.3, 0.4), "#e6194b")
    assert_color(frame, (0.6, 0.3, 0.3, 0.4), "#4363d8")
    samples = analysis.audio_samples(video)
    assert analysis.tone_level(samples, 440, 1.0, 3.0) > 0.05 and analysis.tone_level(samples, 660, 1.0, 3.0) > 0.05


def test_the_image_runs_as_a_user_and_declares_its_health_check():
    image = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    config = image["Config"]
    assert config["User"] == "compositor"
    assert "healthz" in " ".join(image["Healthcheck"]["Test"])
    assert config["Entrypoint"] == ["compositor"] and config["Cmd"][0] == "serve"


def test_the_service_in_a_container_answers_and_records(tmp_path):
    data = writable(tmp_path / "data")
    port = free_port()
    name = f"compositor-test-{port}"
    # Host networking, bound to 127.0.0.1: nothing else on the machine is touched.
    podman("run", "-d", "--rm", "--name", name, "--network", "host", "-v", f"{data}:/data",
           "-e", "COMPOSITOR_API_KEYS=container-key", IMAGE, "serve", "--host", "127.0.0.1", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2) as resp:
                    assert json.loads(resp.read()) == {"status": "ok"}
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(podman("logs", name, check=False).stderr[-2000:]) from None
                time.sleep(0.3)

        call = caller(base, "container-key")
        info = until_ended(call, call("POST", "/v1/egress/start", {"roomName": "boxed", "maxDuration": 3,
                                                                    "advanced": {"width": 640, "height": 360}}))
        assert info["status"] == "LIMIT_REACHED", info
        kept = data / "recordings" / Path(info["file"]["location"]).name
        assert analysis.facts(kept).duration > 2.5
    finally:
        podman("stop", "-t", "20", name, check=False, timeout=60)
