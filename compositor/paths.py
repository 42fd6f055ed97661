"""Where the page assets live: `assets/` in the package (templates, static, layouts, the dashboard, and vendored
npm code).

They are package data, so an installed compositor has them; `COMPOSITOR_ASSETS` points elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

ASSETS_DIR = Path(os.environ.get("COMPOSITOR_ASSETS") or Path(__file__).resolve().parent / "assets")
TEMPLATES_DIR = ASSETS_DIR / "templates"
STATIC_DIR = ASSETS_DIR / "static"
LAYOUTS_DIR = ASSETS_DIR / "layouts"
#: the dashboard `compositor serve` shows at `/`: its page, script and style (no build step)
DASHBOARD_DIR = ASSETS_DIR / "dashboard"
#: A worker's temp dirs start with this, then its pid: the next worker removes those of dead ones.
WORKDIR_PREFIX = "compositor-"
#: livekit-client's ESM bundle, copied from npm (node_modules, pinned in package-lock.json) by `make setup`.
LIVEKIT_CLIENT = ASSETS_DIR / "vendor" / "livekit-client.esm.mjs"
