"""Layout authoring: check, snapshot, preview; overlays; broken layouts while recording; what a page may reach."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from compositor import analysis
from compositor.errors import InvalidRequest
from compositor.outbound import AllowedHosts
from compositor.pipeline.browser import chromium_path

from .conftest import REPO, SMALL, HttpReceiver, assert_color

EXAMPLE = REPO / "examples" / "layouts" / "branded"
RED, GREEN = "#e6194b", "#3cb44b"


def layouts(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compositor", "layouts", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def write_layout(folder, template: str, script: str | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "layout.html.j2").write_text(template)
    if script is not None:
        (folder / "layout.js").write_text(script)
    return folder


BASE = '{% extends "_base.html.j2" %}\n'
# Each broken layout, and what `check` must say about it.
BROKEN = {
    "jinja-syntax": (BASE + "{% block body %}\n<p>{{ params.title }</p>\n{% endblock %}\n", None,
                     "template: layout.html.j2:3: unexpected '}'"),
    "jinja-undefined": (BASE + "{% block body %}\n\n<p>{{ no_such_value }}</p>{% endblock %}\n", None,
                        "template: layout.html.j2:4: 'no_such_value' is undefined"),
    "script-throws": (BASE, "export default function (view) {\n  return view.nobody.map((p) => p);\n}\n",
                      "error: TypeError: Cannot read properties of undefined (reading 'map')"),
    "missing-file": (BASE + '{% block head %}<link rel="stylesheet" href="{{ assets }}/gone.css">{% endblock %}',
                     None, "request: GET /custom/gone.css answered 404"),
    "no-start": ("<!doctype html><html><body>my own page, never says START_RECORDING</body></html>", None,
                 "the page never logged START_RECORDING"),
    "outside": (BASE + '{% block body %}<div id="ribbon" style="position:fixed;left:50vw;top:0;width:60vw;'
                       'height:10vh;background:#fff"></div>{% endblock %}', None,
                "outside the frame: div#ribbon at 320,0 size 384x36 (frame 640x360)"),
    "local-file": (BASE, "fetch('file:///etc/hostname').then((r) => r.text()).then((t) => { document.title = t; });\n"
                         "export { default } from '/layouts/grid/layout.js';\n", "Failed to fetch"),
}


@pytest.mark.parametrize("kind", BROKEN)
def test_check_reports_each_kind_of_broken_layout(tmp_path, kind):
    template, script, expected = BROKEN[kind]
    folder = write_layout(tmp_path / kind, template, script)
    run = layouts("check", str(folder), *SMALL, "--participants", "2", "--timeout", "3")
    assert run.returncode == 1, run.stdout + run.stderr
    assert expected in run.stdout, run.stdout


def test_check_passes_a_good_layout_and_names_what_it_saw():
    run = layouts("check", str(EXAMPLE), *SMALL, "--participants", "3", "--names", "--title", "T")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok:" in run.stdout and "3 tiles, no errors" in run.stdout


def test_the_page_reaches_only_allowed_hosts(tmp_path):
    other = HttpReceiver(page="hello")
    try:
        folder = write_layout(tmp_path / "fetcher", BASE + f'{{% block body %}}<img src="{other.url}logo.png" '
                                                           'style="display: none">{% endblock %}')
        refused = layouts("check", str(folder), *SMALL, "--participants", "1")
        assert refused.returncode == 1 and f"blocked: GET {other.url}logo.png refused" in refused.stdout
        assert "--allow-host" in refused.stdout and other.gets == []
        allowed = layouts("check", str(folder), *SMALL, "--participants", "1", "--allow-host",
                          f"127.0.0.1:{other.port}")
        assert allowed.returncode == 0, allowed.stdout
        assert other.gets == ["/logo.png"]
    finally:
        other.close()


@pytest.mark.parametrize("entry, url, permitted", [
    ("cdn.example.com", "https://cdn.example.com/logo.png", True),
    ("cdn.example.com", "https://evil.example.com/logo.png", False),
    ("*.example.com", "https://a.b.example.com/x", True),
    ("*.example.com", "https://example.com.evil.net/x", False),
    ("127.0.0.1:7880", "ws://127.0.0.1:7880/rtc", True),
    ("127.0.0.1:7880", "http://127.0.0.1:7881/", False),
    ("*", "https://anything.net/", True),
    ("*", "file:///etc/passwd", False),
])
def test_allowed_hosts(entry, url, permitted):
    assert AllowedHosts.parse([entry]).permits(url) is permitted


@pytest.mark.parametrize("entry", ["https://cdn.example.com", "host:port", "a/b"])
def test_allowed_hosts_refuse_what_is_not_a_host(entry):
    with pytest.raises(InvalidRequest):
        AllowedHosts.parse([entry])


def test_a_layout_that_breaks_while_recording_ends_the_egress_with_its_message(record, tmp_path):
    # Fine with one person; throws when the second one joins at 1.5 s.
    folder = write_layout(tmp_path / "fragile", BASE, (
        "import grid from '/layouts/grid/layout.js';\n"
        "export default function (view) {\n"
        "  if (view.participants.length > 1) throw new Error('two is a crowd');\n"
        "  return grid(view);\n}\n"))
    run = record(*SMALL, "--duration", "6", "--layout", str(folder), "--participant", f"name=A,color={RED}",
                 "--participant", f"name=B,color={GREEN},joins=1.5")
    assert run.code == 1
    assert run.error["code"] == "TEMPLATE_ERROR" and "two is a crowd" in run.error["message"], run.error
    assert "/custom/layout.js:3" in run.error["message"]
    # What was recorded before is kept, not thrown away, and it is not a black video.
    kept = run.error["file"]["path"]
    assert 1.0 <= analysis.facts(kept).duration < 4.5
    assert_color(analysis.frame_at(kept, 0.5), (0.4, 0.4, 0.2, 0.2), RED)


def test_a_broken_template_fails_before_anything_records(record, tmp_path):
    folder = write_layout(tmp_path / "typo", BASE + "{% block body %}{% if x %}{% endblock %}\n")
    run = record(*SMALL, "--duration", "2", "--layout", str(folder))
    assert run.code == 1 and run.error["code"] == "TEMPLATE_ERROR"
    assert run.error["message"].startswith("layout.html.j2:2: "), run.error
    assert not run.output.exists() and not [e for e in run.of_type("status") if e["status"] == "ACTIVE"]


def test_overlays_show_in_the_pixels(record, tmp_path):
    logo = tmp_path / "logo.png"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=0x00ff00:s=120x120", "-frames:v", "1",
                    str(logo)], check=True)
    run = record(*SMALL, "--duration", "3.5", "--layout", "grid", "--participant", f"name=Ada,color={RED}",
                 "--title", "Board meeting", "--clock", "--names", "--logo", str(logo), "--logo-position", "top-left")
    assert run.code == 0, run.stderr[-2000:]
    first, later = analysis.frame_at(run.output, 1.0), analysis.frame_at(run.output, 3.0)
    h, w = first.shape[:2]
    bar = int(h * 0.08)
    assert_color(first, (0.45, 0.01, 0.1, 0.05), "#1d1d1f")       # the title bar (between title and clock)
    assert_color(first, (0.02, 0.12, 0.02, 0.02), "#00ff00")       # the logo, below the bar, top left
    assert_color(first, (0.45, 0.5, 0.1, 0.1), RED)                # the tile, pushed below the bar
    # Title text: white pixels in the bar's left part.
    assert (first[5:bar - 5, 10: w // 3].min(axis=2) > 200).sum() > 50
    # The clock ticks: its digits change between 1 s and 3 s.
    clock = (slice(0, bar), slice(int(w * 0.8), w))
    assert np.abs(first[clock].astype(int) - later[clock].astype(int)).max() > 100
    # The name label: a dark box at the tile's bottom left (the tile is red and its moving square white).
    label = first[int(h * 0.9): int(h * 0.98), int(w * 0.05): int(w * 0.2)]
    assert (label.max(axis=2) < 90).sum() > 100


def test_overlay_values_are_checked():
    from compositor.request import Overlays

    with pytest.raises(ValueError, match="unknown time zone"):
        Overlays(clock=True, clock_timezone="Mars/Olympus")


def test_snapshot_renders_the_frame_at_the_presets_size(tmp_path):
    out = tmp_path / "grid5.png"
    run = layouts("snapshot", "grid", "--participants", "5", "--preset", "480p", "-o", str(out))
    assert run.returncode == 0, run.stderr
    assert analysis.video_size(out) == (854, 480)
    frame = analysis.frame_at(out, 0)
    # 5 people: 3 on top, 2 centred below, each in their palette colour.
    from compositor.request import PALETTE
    cells = [(0.5 / 3, 0.25), (1.5 / 3, 0.25), (2.5 / 3, 0.25), (1 / 3, 0.75), (2 / 3, 0.75)]
    for (cx, cy), color in zip(cells, PALETTE):
        assert_color(frame, (cx - 0.05, cy - 0.05, 0.1, 0.1), color)


def test_preview_reloads_when_the_layout_changes(tmp_path):
    folder = shutil.copytree(EXAMPLE, tmp_path / "live")
    proc = subprocess.Popen([sys.executable, "-m", "compositor", "layouts", "preview", str(folder), "--port", "0",
                             "--participants", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)
    try:
        line = proc.stdout.readline()
        assert "preview: http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split()[3]
        asyncio.run(_watch_preview(url, folder))
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0


async def _watch_preview(url: str, folder) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path(), headless=True)
        try:
            page = await browser.new_page(viewport={"width": 800, "height": 600})
            await page.goto(url)
            assert await page.inner_text("#size") == "1280 × 720 px"
            assert "shown at 61%" in await page.inner_text("#scale")
            frame = page.frame_locator("#frame")
            await frame.locator("#title").wait_for()
            assert await frame.locator("#title").inner_text() == "Weekly sync"
            assert await page.eval_on_selector("#frame", "f => [f.offsetWidth, f.offsetHeight]") == [1280, 720]
            manifest = json.loads((folder / "layout.json").read_text())
            manifest["params"]["title"]["default"] = "Changed on disk"
            (folder / "layout.json").write_text(json.dumps(manifest))
            deadline = time.monotonic() + 10
            while await _title(frame) != "Changed on disk":
                assert time.monotonic() < deadline, "the preview did not reload"
                await asyncio.sleep(0.2)
            assert "reloaded (layout.json)" in await page.inner_text("#status")
        finally:
            await browser.close()


async def _title(frame) -> str | None:
    try:
        return await frame.locator("#title").inner_text(timeout=500)
    except Exception:  # the frame is between documents
        return None


def test_the_service_records_layouts_of_its_layouts_dir(tmp_path):
    from .test_service import Server

    shutil.copytree(EXAMPLE, tmp_path / "layouts" / "branded")
    server = Server(tmp_path / "data", env={"COMPOSITOR_LAYOUTS_DIR": str(tmp_path / "layouts")})
    try:
        info = server.start(layout="custom/branded", layoutParams={"brand": "#2e8b57"},
                            overlays={"names": True}, maxDuration=2.5)
        done = server.wait_status(info["id"], "LIMIT_REACHED", "FAILED")
        assert done["status"] == "LIMIT_REACHED" and done["layout"] == "custom/branded", done
        frame = analysis.frame_at(done["file"]["location"], 2.0)
        assert_color(frame, (0.05, 0.5, 0.3, 0.3), "#2e8b57")  # the parameter, through the API
        assert_color(frame, (0.3, 0.03, 0.4, 0.08), "#ffd700")  # the layout's own CSS
        for body, message in [
            ({"layout": "custom/nope"}, "no custom layout 'nope'; available: branded"),
            ({"layout": "custom/../branded"}, "letters, digits"),
            ({"layout": str(EXAMPLE)}, "must be a built-in layout name, or custom/NAME"),
            ({"layout": "custom/branded", "layoutParams": {"brand": "blue"}}, "must be a colour"),
            ({"overlays": {"logo": "/etc/hostname"}}, "overlays.logo must be an http(s) URL"),
        ]:
            status, err, _ = server.call("POST", "/v1/egress/start", {"roomName": "r", **body})
            assert status == 400 and message in err["error"]["message"], (body, err)
    finally:
        server.stop_server()
    bare = Server(tmp_path / "bare")
    try:
        status, err, _ = bare.call("POST", "/v1/egress/start", {"roomName": "r", "layout": "custom/branded"})
        assert status == 400 and "no layouts_dir" in err["error"]["message"]
    finally:
        bare.stop_server()
