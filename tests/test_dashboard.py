"""The dashboard at `/` of `compositor serve`, in real Chromium: signed in with the API key (which never goes in a
URL), egresses live by server push, started from its form, previewed, stopped, downloaded; hostile names shown as
text; the event stream refused without the key."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import struct
import time
import urllib.error
import urllib.request

import pytest

from compositor.api.dashboard import SNAPSHOT_SIZE
from compositor.pipeline.browser import chromium_path
from compositor.probe import probe
from compositor.protocol import Status
from compositor.service.changes import RESYNC, ChangeFeed, next_batch
from compositor.service.seams import EgressRecord
from compositor.service.store import SqliteStore

from .conftest import REPO
from .test_service import KEY, Server

HOSTILE = '<img src=x onerror="window.pwned=1">'


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "data")
    yield s
    s.stop_server()


async def _browser(pw):
    return await pw.chromium.launch(executable_path=chromium_path(), headless=True)


async def _sign_in(page, base: str, requested: list[str], *, wrong_first: bool = False) -> list:
    """Sign in on the dashboard at `base`, recording each URL the page requests; the page's errors, as they come."""
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # (An HTTP error the page handles, such as no thumbnail yet, is logged too: not counted.)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" and not m.text.startswith(
        "Failed to load resource") else None)
    page.on("request", lambda r: requested.append(r.url))
    await page.goto(base + "/")
    if wrong_first:
        await page.fill("#api-key", "not-the-key")
        await page.click("#sign-in button[type=submit]")
        await page.locator("#sign-in-error").wait_for()
        assert "refused" in await page.inner_text("#sign-in-error")
        assert await page.evaluate("sessionStorage.length") == 0
    await page.fill("#api-key", KEY)
    await page.click("#sign-in button[type=submit]")
    await page.locator("#nav").wait_for()
    await page.locator("#live").wait_for()  # the event stream is open
    return errors


async def _thumbnail(page) -> str:
    """A digest of the preview as shown (a screenshot of it: the page's CSP keeps scripts from reading blobs)."""
    return hashlib.sha256(await page.locator("#preview").screenshot()).hexdigest()


async def test_start_watch_preview_stop_and_download_from_the_dashboard(server, tmp_path):
    from playwright.async_api import async_playwright, expect

    requested: list[str] = []
    async with async_playwright() as pw:
        browser = await _browser(pw)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
            errors = await _sign_in(page, server.base, requested)
            await page.evaluate("window.notReloaded = true")
            assert await page.evaluate("sessionStorage.getItem('compositor.apiKey')") == KEY
            assert await page.evaluate("localStorage.length") == 0

            await page.click("#nav a[data-view=start]")
            form = page.locator("#start-form")
            await form.locator("[name=roomName]").fill("dash-room")
            await form.locator("[name=size]").fill("320x180")
            await form.locator("[name=synthetic]").fill("2")
            await form.locator("[name=hls]").check()
            await form.locator("button[type=submit]").click()

            # Pushed, not reloaded: the detail of the new egress turns ACTIVE by itself.
            status = page.locator("#detail .facts .status")
            await expect(status).to_have_text("ACTIVE", timeout=60_000)
            assert not errors

            # Its layout changes while live, and the change comes back through the stream.
            await page.select_option("#detail select[name=layout]", "grid-light")
            await page.click("#detail button:text('Change layout')")
            await expect(page.locator("#detail .facts tr", has_text="Layout")).to_have_text("Layoutgrid-light")
            row = page.locator("#egress-rows tr").first
            assert "ACTIVE" in await row.inner_text() and "dash-room" in await row.inner_text()

            # The preview shows the latest thumbnail, and it changes (the synthetic room's speaker changes).
            await expect(page.locator("#preview")).to_have_attribute("src", re.compile("^blob:"), timeout=30_000)
            first = await _thumbnail(page)
            deadline = time.monotonic() + 30
            while await _thumbnail(page) == first:
                assert time.monotonic() < deadline, "the preview never changed"
                await asyncio.sleep(0.5)

            await page.click("#detail button.danger")
            await expect(status).to_have_text("COMPLETE", timeout=60_000)
            assert await page.evaluate("window.notReloaded") is True

            await page.click("#nav a[data-view=recordings]")
            button = page.locator("#recording-rows button.download").first
            await button.wait_for()
            async with page.expect_download() as download:
                await button.click()
            saved = tmp_path / "downloaded.mp4"
            await (await download.value).save_as(saved)
        finally:
            await browser.close()

    _, listed, _ = server.call("GET", "/v1/egress?roomName=dash-room")
    done = listed["items"][0]
    assert done["layout"] == "grid-light" and done["segments"]["segmentCount"] >= 1 and done["images"]["count"] >= 2
    facts = (await probe(saved)).to_dict()
    assert facts["width"] == 320 and facts["height"] == 180 and facts["video_codec"] == "h264"
    assert facts["duration"] >= 1.0
    assert requested and not [url for url in requested if KEY in url]


async def _hostile_egress(data_dir) -> None:
    """An ended egress whose every caller-given field is markup, stored as the service would keep it."""
    store = SqliteStore(data_dir / "compositor.db")
    await store.create(EgressRecord(
        id="EG_hostile00001", room_name=HOSTILE, mode="stream", layout=HOSTILE, quality="720p", request={},
        status=Status.FAILED, error=HOSTILE, error_code="X", started_at=time.time() - 5, ended_at=time.time(),
        streams=[{"url": f"rtmp://x/{HOSTILE}", "status": "FAILED", "retries": 2, "error": HOSTILE}]))
    await store.close()


async def test_hostile_names_are_shown_as_text(tmp_path):
    from playwright.async_api import async_playwright

    await _hostile_egress(tmp_path / "data")
    server = Server(tmp_path / "data")
    try:
        async with async_playwright() as pw:
            browser = await _browser(pw)
            try:
                page = await browser.new_page()
                await _sign_in(page, server.base, [], wrong_first=True)
                row = page.locator("#egress-rows tr").first
                await row.wait_for()
                assert HOSTILE in await row.inner_text()
                await row.click()
                detail = await page.locator("#detail").inner_text()
                assert detail.count(HOSTILE) >= 4  # room, layout, error, the destination's URL and error
                assert await page.evaluate("window.pwned") is None
                assert await page.locator("main img[src='x']").count() == 0
            finally:
                await browser.close()
    finally:
        server.stop_server()


def _get(url: str, key: str | None = None, timeout: float = 10) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            # The event stream never ends: its first event is enough.
            return resp.status, dict(resp.headers), resp.readline() if "event-stream" in resp.headers.get(
                "Content-Type", "") else resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_the_page_needs_no_key_and_the_data_does(server):
    for path in ("/", "/dashboard/app.js", "/dashboard/app.css"):
        status, headers, _ = _get(server.base + path)
        assert status == 200, path
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"
    status, _, page = _get(server.base + "/")
    # No inline script or handler: the CSP would refuse them anyway.
    assert b"<script>" not in page and not re.search(rb"\son[a-z]+=", page)
    for path in ("/v1/events", "/v1/layouts", "/v1/layouts/grid/snapshot", "/v1/egress/EG_x/preview"):
        assert _get(server.base + path)[0] == 401, path
        assert _get(server.base + path, "wrong-key")[0] == 401, path
    status, headers, first = _get(server.base + "/v1/events", KEY)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert json.loads(first.removeprefix(b"data: ")) == {"type": "resync"}
    status, _, body = _get(server.base + "/v1/layouts", KEY)
    names = {item["name"] for item in json.loads(body)["items"]}
    assert {"grid", "speaker", "pip", "default"} <= names


async def test_a_watcher_that_falls_behind_is_told_to_read_everything_again():
    feed = ChangeFeed()
    with feed.watch() as queue:
        feed.publish("EG_1")
        feed.publish("EG_1")
        feed.publish("EG_2")
        assert await next_batch(queue) == ["EG_1", "EG_2"]  # a burst of one egress's changes is read once
        for n in range(queue.maxsize + 5):
            feed.publish(f"EG_{n}")
        assert await next_batch(queue) is RESYNC and queue.empty()
    feed.publish("EG_3")  # no one watches: nothing is kept


def test_custom_layouts_are_listed_with_their_snapshots(tmp_path):
    shutil.copytree(REPO / "examples" / "layouts" / "branded", tmp_path / "layouts" / "branded")
    (tmp_path / "layouts" / HOSTILE.replace("/", "")).mkdir()  # not a name a request could give: not listed
    server = Server(tmp_path / "data", env={"COMPOSITOR_LAYOUTS_DIR": str(tmp_path / "layouts")})
    try:
        status, listed, _ = server.call("GET", "/v1/layouts")
        custom = [item for item in listed["items"] if not item["builtin"]]
        assert status == 200 and [item["name"] for item in custom] == ["custom/branded"]
        assert custom[0]["description"]
        # Rendered through the whole pipeline: a while on a busy machine.
        status, headers, png = _get(server.base + "/v1/layouts/custom/branded/snapshot", KEY, timeout=120)
        assert status == 200 and headers["Content-Type"] == "image/png"
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == SNAPSHOT_SIZE
        assert _get(server.base + "/v1/layouts/custom/nope/snapshot", KEY)[0] == 400
    finally:
        server.stop_server()
