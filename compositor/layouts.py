"""Layout names: which built-in layouts exist and how a name maps to one.

A layout is a Jinja template under `templates/` plus its script under
`static/layouts/`. `-light` / `-dark` suffixes select a theme of the same
layout rather than naming a copy of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidRequest
from .paths import STATIC_DIR, TEMPLATES_DIR

THEMES = ("dark", "light")
DEFAULT_THEME = "dark"


@dataclass(frozen=True)
class LayoutRef:
    name: str
    theme: str = DEFAULT_THEME


def builtin_layouts() -> list[str]:
    """Names of the layouts shipped in `templates/` (those with a script)."""
    return sorted(
        p.name.removesuffix(".html.j2")
        for p in TEMPLATES_DIR.glob("*.html.j2")
        if not p.name.startswith("_") and (STATIC_DIR / "layouts" / (p.name.removesuffix(".html.j2") + ".js")).exists()
    )


def resolve_layout(name: str) -> LayoutRef:
    """Validate a layout name such as `grid` or `speaker-light`."""
    base, theme = name.strip().lower(), DEFAULT_THEME
    for candidate in THEMES:
        if base.endswith("-" + candidate):
            base, theme = base.removesuffix("-" + candidate), candidate
            break
    known = builtin_layouts()
    if base not in known:
        raise InvalidRequest(f"unknown layout {name!r}; built-in layouts: {', '.join(known)} "
                             f"(each also as -light or -dark)", details={"field": "layout"})
    return LayoutRef(base, theme)
