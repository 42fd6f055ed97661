"""Where the page assets live: `templates/`, `static/` and `layouts/` beside the package.

`COMPOSITOR_ASSETS` points elsewhere (an installed copy, a container).
"""

from __future__ import annotations

import os
from pathlib import Path

ASSETS_DIR = Path(os.environ.get("COMPOSITOR_ASSETS") or Path(__file__).resolve().parent.parent)
TEMPLATES_DIR = ASSETS_DIR / "templates"
STATIC_DIR = ASSETS_DIR / "static"
LAYOUTS_DIR = ASSETS_DIR / "layouts"
#: A worker's temp dirs start with this, then its pid: the next worker removes those of dead ones.
WORKDIR_PREFIX = "compositor-"
LIVEKIT_CLIENT = ASSETS_DIR / "node_modules" / "livekit-client" / "dist" / "livekit-client.esm.mjs"
