"""Stops, kills and crashes: the file survives, and nothing is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from compositor import analysis
from compositor.pipeline.encoder import Encoder
from compositor.pipeline.pipes import StartGate
from compositor.worker.stage import sweep_stale_workdirs

from .conftest import REPO, SMALL, assert_released, record_argv


def mp4_top_level_boxes(path) -> list[str]:
    boxes, data = [], path.read_bytes()
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        boxes.append(data[pos + 4:pos + 8].decode("latin-1"))
        if size == 1:
            size = int.from_bytes(data[pos + 8:pos + 16], "big")
        if size < 8:
            break
        pos += size
    return boxes


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly_with_a_faststart_file(start_record, sig):
    run = start_record(*SMALL, "--participant", "name=A")
    active = run.wait_for_status("ACTIVE")
    time.sleep(3)
    sent = time.monotonic()
    run.proc.send_signal(sig)
    done = run.finish()
    assert done.code == 0, done.stderr[-2000:]
    f = done.result["file"]
    assert 2.5 <= f["duration"] <= 4.5, f
    boxes = mp4_top_level_boxes(done.output)
    assert boxes.index("moov") < boxes.index("mdat"), boxes  # faststart
    assert "moof" not in boxes  # a normal MP4, not the fragmented partial
    assert not any(p.name.endswith(".partial.mp4") for p in done.output.parent.iterdir())
    assert time.monotonic() - sent < 10
    assert_released(active["resources"])


def test_a_stop_as_soon_as_it_starts_keeps_a_file_with_picture_and_sound(start_record):
    """An egress starts at its first frame, which may come before the sound's first packet, and ffmpeg writes a
    file only once each stream has one: a stop at once left it empty (FAILED, "the encoder wrote nothing", in 5
    of 8 tries). A stop waits for the sound to begin."""
    for _ in range(3):
        run = start_record(*SMALL, "--participant", "name=A")
        run.wait_for_status("ACTIVE")
        run.proc.send_signal(signal.SIGINT)
        done = run.finish()
        assert done.code == 0, done.stderr[-2000:]
        f = done.result["file"]
        assert (f["video_codec"], f["audio_codec"]) == ("h264", "aac") and f["duration"] > 0, f


def test_a_second_signal_stops_at_once_and_says_so(start_record):
    """A person's second Ctrl-C: stop now, not after finishing the file; the job ends INTERRUPTED, and its
    processes, display and temp dir still go."""
    run = start_record(*SMALL, "--participant", "name=A")
    active = run.wait_for_status("ACTIVE")
    time.sleep(1.5)
    run.proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    run.proc.send_signal(signal.SIGINT)
    done = run.finish()
    assert done.code == 130, done.stderr[-2000:]
    error = next(e for e in done.events if e["type"] == "error")
    assert (error["code"], error["message"]) == ("INTERRUPTED", "stopped by a second signal"), error
    assert_released(active["resources"])


def test_sigkill_leaves_a_playable_file_up_to_the_kill(start_record):
    run = start_record(*SMALL, "--participant", "name=A")
    active = run.wait_for_status("ACTIVE")
    time.sleep(5)
    os.killpg(run.proc.pid, signal.SIGKILL)
    killed_after = 5.0
    run.proc.wait()
    partial = run.output.with_name("live.partial.mp4")
    assert partial.exists()
    facts = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                            str(partial)], capture_output=True, text=True, check=True).stdout
    assert float(facts) >= killed_after - 2, facts
    # It decodes to the end: the last second is real picture.
    frame = analysis.frame_at(partial, float(facts) - 0.5)
    assert frame.mean() > 10
    # The worker's children die with it (PR_SET_PDEATHSIG), even though they
    # run in sessions of their own; the temp dir is the one thing left, and
    # the next worker sweeps it away.
    resources = dict(active["resources"])
    workdir = resources.pop("workdir")
    assert_released({**resources, "workdir": "/nonexistent"})
    assert os.path.isdir(workdir)
    sweep_stale_workdirs()
    assert not os.path.exists(workdir)


def test_crashed_browser_fails_the_job_but_keeps_the_file(start_record):
    run = start_record(*SMALL, "--participant", "name=A")
    active = run.wait_for_status("ACTIVE")
    time.sleep(3)
    os.kill(active["resources"]["pids"]["chromium"], signal.SIGKILL)
    done = run.finish()
    assert done.code != 0
    err = done.error
    assert err["code"] == "BROWSER_FAILED", err
    kept = err["file"]["path"]
    assert kept.endswith(".mp4") and os.path.getsize(kept) > 0
    assert analysis.frame_at(kept, 1.0).shape == (360, 640, 3)
    assert_released(active["resources"])


def test_stop_before_start_aborts_without_leaks(tmp_path):
    out = tmp_path / "never.mp4"
    before = {p for p in os.listdir("/tmp") if p.startswith("compositor-")}
    proc = subprocess.Popen(record_argv([*SMALL, "--participant", "name=A"], out), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    # STARTING is printed before any process starts; stop during start-up.
    proc.stdout.readline()
    time.sleep(0.8)
    proc.send_signal(signal.SIGINT)
    out_text, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert '"ABORTED"' in out_text
    assert not out.exists()
    after = {p for p in os.listdir("/tmp") if p.startswith("compositor-")}
    assert after <= before, after - before


def test_two_workers_at_once_do_not_collide(tmp_path):
    procs = [subprocess.Popen(record_argv([*SMALL, "--duration", "3", "--participant", f"name=W{i},color={c}"],
                                          tmp_path / f"w{i}.mp4"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, c in enumerate(["#e6194b", "#4363d8"])]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1000:] for o in outs]
    events = [[json.loads(line) for line in o[0].splitlines()] for o in outs]
    displays = [next(e for e in ev if e.get("status") == "ACTIVE")["resources"]["display"] for ev in events]
    assert displays[0] != displays[1]
    for i, color in enumerate(["#e6194b", "#4363d8"]):
        frame = analysis.frame_at(tmp_path / f"w{i}.mp4", 1.5)
        assert analysis.color_distance(analysis.region_color(frame, 0, 0, 1, 1), color) <= 40


def test_a_job_leaves_nothing_in_the_temp_folder(record):
    """Not even Chromium's own temp folders (a long-lived service runs thousands of jobs)."""
    # Short: Unix sockets (PulseAudio's, Chromium's) are made under it.
    tmp = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))
    try:
        run = record(*SMALL, "--duration", "1", env={**os.environ, "TMPDIR": str(tmp)})
        assert run.code == 0, json.dumps(run.events[-1])
        assert_released(run.resources)
        assert not list(tmp.iterdir()), list(tmp.iterdir())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def test_a_page_that_logs_all_the_time_leaves_nothing_held(tmp_path):
    """Every console line reaches the worker with a handle to each of its arguments; the browser lets go of them,
    so a long recording's page talking once a second does not grow the worker, its driver or Chromium."""
    from compositor.pipeline.browser import MAX_PROBLEMS
    from compositor.pipeline.sidecars import RoomLog

    async with _lone_browser(tmp_path) as browser:
        browser.room_log = RoomLog(limit=10)
        held = browser.page._impl_obj._connection._objects  # Playwright's handles, by guid
        before = len(held)
        await browser.evaluate("""() => {
            for (let i = 0; i < 1500; i++) {
                console.log(`ROOM_EVENT ${JSON.stringify({kind: 'speaking', identity: 'p' + i, name: 'P', at: i})}`);
                console.error('layout trouble', i);
            }
        }""")
        deadline = time.monotonic() + 20
        while len(held) > before + 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(held) <= before + 5, f"{len(held) - before} handles still held"
        assert len(browser.room_log.events) == 10 and browser.room_log.dropped == 1490
        assert len(browser.problems) == MAX_PROBLEMS and browser.problems[-1].message == "layout trouble 1499"


async def test_a_warm_up_page_leaves_nothing_a_job_would_take_for_its_own(tmp_path):
    """A warm worker loads a page of ours before its job comes: what that page said (START_RECORDING, errors)
    must not start the job's recording early or fail it, and the browser is left on a blank page."""
    from compositor.pipeline.browser import START_RECORDING

    page = ("data:text/html,<script>console.log('START_RECORDING'); console.error('warm trouble');"
            "setTimeout(() => { throw new Error('warm error'); })</script><p>warm</p>")
    async with _lone_browser(tmp_path) as browser:
        await browser.warm_up(page)
        assert browser.page.url == "about:blank"
        assert browser.signals.empty() and not browser.problems
        # The job's page: its own signal is the one the recorder waits for.
        await browser.open("data:text/html,<script>setTimeout(() => console.log('START_RECORDING'), 200)</script>")
        assert browser.signals.empty()
        await asyncio.wait_for(browser.until_signal(START_RECORDING), 5)


@contextlib.asynccontextmanager
async def _lone_browser(tmp_path: Path):
    """A started Browser on a small display of its own, its proxy leading nowhere; both stopped after."""
    from compositor.pipeline.browser import Browser
    from compositor.pipeline.display import Display

    display = Display(320, 240)
    await display.start()
    browser = Browser(display=display.name, pulse_server=None, width=320, height=240,
                      profile_dir=tmp_path / "profile", proxy="http://127.0.0.1:9", direct="127.0.0.1:9")
    try:
        await browser.start()
        yield browser
    finally:
        await browser.stop()
        await display.stop()


async def test_a_cancellation_nobody_asked_for_fails_the_job_as_internal():
    """Only a second signal stops a job at once (INTERRUPTED). A cancellation that a library lets out (Playwright
    cancels its own start when its driver dies) is the job's failure, and says so, not "a second signal"."""
    from compositor import worker
    from compositor.events import EventSink
    from compositor.outbound import OutboundPolicy

    def request():
        raise asyncio.CancelledError

    out = io.StringIO()
    code = await worker.record(worker.WorkerOptions(events=EventSink("json", out), policy=OutboundPolicy()), request)
    event = json.loads(out.getvalue().splitlines()[-1])
    assert code == 1 and (event["type"], event["status"], event["code"]) == ("error", "FAILED", "INTERNAL"), event
    assert "cancelled unexpectedly" in event["message"]


def gated_argv(gate_fd: int | str, out: Path) -> list[str]:
    """An encode behind a start gate (pipes.StartGate), of a test picture into `out`."""
    return ["ffmpeg", "-v", "error", "-nostdin", "-probesize", "32", "-f", "data", "-i", f"pipe:{gate_fd}",
            "-f", "lavfi", "-i", "testsrc2=s=64x36:r=10", "-map", "1:v", "-c:v", "libx264", "-y", str(out)]


async def test_an_encoder_waits_at_its_gate_and_encodes_once_it_opens(tmp_path):
    """Started early, ffmpeg opens nothing (no capture, no output) until the gate opens; then it encodes."""
    out = tmp_path / "gated.mkv"
    gate = StartGate()
    encoder = Encoder(gated_argv(gate.read_fd, out), gate=gate)
    await encoder.start()
    try:
        await asyncio.sleep(0.5)
        assert encoder.process.running and not out.exists()
        encoder.open_gate()
        await asyncio.sleep(1.5)
    finally:
        await encoder.stop()
    assert len(analysis.frame_times(out)) >= 5 and analysis.frame_at(out, 0.2).shape == (36, 64, 3)


async def test_an_encoder_stopped_at_its_gate_is_killed_and_writes_nothing(tmp_path, caplog):
    """A job that ends before its page is ready: the waiting encoder has nothing to finish. (A signal would not
    end its wait: the stop would sit out its 10 s deadline, and say so.)"""
    out = tmp_path / "never.mkv"
    gate = StartGate()
    encoder = Encoder(gated_argv(gate.read_fd, out), gate=gate)
    await encoder.start()
    await asyncio.sleep(0.3)
    assert await encoder.stop() == -signal.SIGKILL
    assert not out.exists()
    assert "deadline" not in caplog.text


def test_a_killed_worker_leaves_no_encoder_waiting_at_its_gate(tmp_path):
    """SIGKILL of the worker while its encoder waits at the gate: the gate's end closes with the worker, and
    the encoder, told to stop (its death signal), ends instead of waiting forever."""
    script = ("import asyncio, json, sys\n"
              "from compositor.pipeline.encoder import Encoder\n"
              "from compositor.pipeline.pipes import StartGate\n"
              "async def main():\n"
              "    gate = StartGate()\n"
              "    argv = [a.replace('GATE', str(gate.read_fd)) for a in json.loads(sys.argv[1])]\n"
              "    encoder = Encoder(argv, gate=gate)\n"
              "    await encoder.start()\n"
              "    print(encoder.process.pid, flush=True)\n"
              "    await asyncio.sleep(60)\n"
              "asyncio.run(main())\n")
    argv = json.dumps(gated_argv("GATE", tmp_path / "orphan.mkv"))
    worker = subprocess.Popen([sys.executable, "-c", script, argv], stdout=subprocess.PIPE, text=True, cwd=REPO)
    pid = int(worker.stdout.readline())
    time.sleep(0.3)
    assert Path(f"/proc/{pid}").exists()
    worker.kill()
    worker.wait()
    deadline = time.monotonic() + 15
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists(), "the encoder outlived its worker"
