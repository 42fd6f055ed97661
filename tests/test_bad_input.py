"""Bad input fails before anything starts, with a typed error that says what to fix."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("args, code, words", [
    (["--layout", "mosaic"], "INVALID_ARGUMENT", "unknown layout 'mosaic'"),
    (["--preset", "8k"], "INVALID_ARGUMENT", "unknown preset '8k'"),
    (["--participant", "name=A,color=red"], "INVALID_ARGUMENT", "is not #rrggbb"),
    (["--participant", "name=A,speaks=3-1"], "INVALID_ARGUMENT", "must be after its start"),
    (["--participant", "name=A,hat=yes"], "INVALID_ARGUMENT", "unknown key(s) hat"),
    (["--duration", "-1"], "INVALID_ARGUMENT", "duration"),
    (["--width", "641"], "INVALID_ARGUMENT", "even"),
    (["--exclude", ""], "INVALID_ARGUMENT", "participants.exclude.0: String should have at least 1 character"),
    (["--web-url", "http://127.0.0.1:9/", "--include", "A"], "INVALID_ARGUMENT",
     "participants: a web page has no participants to filter"),
    (["--web-url", "http://127.0.0.1:9/"], "WEB_URL_UNREACHABLE", "unreachable"),
    (["--web-url", "file:///nonexistent/page.html"], "WEB_URL_UNREACHABLE", "does not exist"),
])
def test_bad_request_is_refused_with_its_reason(record, args, code, words):
    run = record(*args, timeout=30)
    assert run.code != 0
    assert run.error["code"] == code
    assert words in run.error["message"], run.error
    assert not [e for e in run.events if e.get("status") == "ACTIVE"]


def test_unknown_extension_is_refused(record):
    run = record("--duration", "1", output="out.avi", timeout=30)
    assert run.error["code"] == "INVALID_ARGUMENT" and ".mp4, .webm, .ogg or .mp3" in run.error["message"]


def test_unwritable_output_is_refused(record, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    run = record("--duration", "1", output="file/out.mp4", timeout=30)
    assert run.error["code"] == "OUTPUT_NOT_WRITABLE", run.error
    assert "cannot create output folder" in run.error["message"]


def test_missing_system_program_names_the_package(record, tmp_path):
    # A PATH with python but none of Xvfb, pulseaudio, ffmpeg.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {**os.environ, "PATH": str(bin_dir)}
    run = record("--duration", "1", env=env, timeout=30)
    assert run.code == 3
    assert run.error["code"] == "MISSING_DEPENDENCY"
    assert "apt-get install" in run.error["message"] and "ffmpeg" in run.error["message"]
    assert not Path(tmp_path / "out.mp4").exists()


def test_missing_camera_clip_is_refused(record):
    run = record("--duration", "1", "--participant", "name=A,video=/nonexistent/clip.webm", timeout=30)
    assert run.error["code"] == "INVALID_ARGUMENT"
    assert "does not exist" in run.error["message"]
