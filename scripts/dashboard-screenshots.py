"""The README's pictures of the dashboard (`make snapshots`): each page of it, on a real `compositor serve`
with a synthetic room recording, taken in Debian's Chromium.

    .venv/bin/python scripts/dashboard-screenshots.py docs/dashboard
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.async_api import Page, async_playwright, expect

from compositor.pipeline.browser import chromium_path

REPO = Path(__file__).resolve().parent.parent
VIEWPORT = {"width": 1280, "height": 800}
PEOPLE = [{"name": "Ada", "color": "#4363d8", "tone": 440}, {"name": "Grace", "color": "#e6194b", "tone": 520,
                                                              "speaks": [{"start": 2, "end": 30}]},
          {"name": "Alan", "color": "#3cb44b", "tone": 0, "speaks": []}]


def _call(base: str, key: str, method: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _start(base: str, key: str, room: str, **extra) -> dict:
    return _call(base, key, "POST", "/v1/egress/start", {
        "roomName": room, "layout": "grid", "advanced": {"width": 640, "height": 360}, "room": {"participants": PEOPLE},
        "images": {"filenamePrefix": "previews/{egress_id}/thumb", "captureInterval": 1, "width": 320}, **extra})


def _until(base: str, key: str, egress_id: str, *statuses: str) -> None:
    deadline = time.monotonic() + 90
    while _call(base, key, "GET", f"/v1/egress/{egress_id}")["status"] not in statuses:
        if time.monotonic() > deadline:
            raise SystemExit(f"{egress_id} never reached {statuses}")
        time.sleep(0.3)


async def _shoot(page: Page, out: Path, name: str) -> None:
    await page.screenshot(path=str(out / f"{name}.png"), full_page=True)
    print(f"dashboard screenshot: {out / name}.png")


async def shots(base: str, key: str, out: Path) -> None:
    """Sign in, then each page in turn, with one recording done and one running."""
    done = _start(base, key, "weekly-sync", maxDuration=4)
    _until(base, key, done["id"], "COMPLETE", "LIMIT_REACHED")
    live = _start(base, key, "all-hands", mode="both", stream={"urls": []})
    _until(base, key, live["id"], "ACTIVE")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path(), headless=True)
        try:
            page = await browser.new_page(viewport=VIEWPORT)
            await page.goto(base + "/")
            await _shoot(page, out, "sign-in")
            await page.fill("#api-key", key)
            await page.click("#sign-in button[type=submit]")
            await page.locator("#live").wait_for()
            await page.locator(f"#egress-rows tr[data-id={live['id']}]").click()
            await expect(page.locator("#preview")).to_have_attribute("src", re.compile("^blob:"))
            await page.wait_for_timeout(1500)
            await _shoot(page, out, "egresses")
            await page.click("#nav a[data-view=start]")
            await page.fill("#start-form [name=roomName]", "design-review")
            await _shoot(page, out, "start")
            await page.click("#nav a[data-view=recordings]")
            await page.locator("#recording-rows button.download").first.wait_for()
            await _shoot(page, out, "recordings")
            await page.click("#nav a[data-view=auto-egress]")
            await expect(page.locator("#auto-form [name=roomNamePattern]")).to_have_value("*")
            await _shoot(page, out, "auto-egress")
            await page.click("#nav a[data-view=layouts]")
            # Each snapshot is rendered through the real pipeline the first time: a while.
            await expect(page.locator("#layout-cards p.hint:not(:empty)")).to_have_count(0, timeout=300_000)
            await _shoot(page, out, "layouts")
        finally:
            await browser.close()
    _call(base, key, "POST", f"/v1/egress/{live['id']}/stop")


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/dashboard")
    out.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="compositor-shots-") as data:
        proc = subprocess.Popen([sys.executable, "-m", "compositor", "serve", "--port", "0", "--data-dir", data,
                                 "--api-key", key], cwd=REPO, stdout=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            if "listening on" not in line:
                raise SystemExit(f"compositor serve did not start: {line}")
            asyncio.run(shots(line.split("listening on ")[1].split()[0], key, out))
        finally:
            proc.terminate()
            proc.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
