"""Layouts: the built-in ones, a user's layout folder, and the parameters a layout declares.

A built-in layout is a Jinja template under `templates/` plus its script
under `static/layouts/`. `-light` / `-dark` suffixes select a theme of the
same layout rather than naming a copy of it.

A custom layout is a folder (`--layout ./my-layout/`) holding
`layout.html.j2` (which extends `_base.html.j2`), optionally `layout.js`
(a view function, as the built-in scripts), `layout.json` declaring its
parameters, and any CSS, images and fonts it uses; or a single template
file. Its files are served to the page under `/custom/`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidRequest
from .paths import STATIC_DIR, TEMPLATES_DIR

THEMES = ("dark", "light")
DEFAULT_THEME = "dark"
CUSTOM_TEMPLATE = "layout.html.j2"
MANIFEST = "layout.json"
PARAM_TYPES = ("string", "color", "boolean", "number", "url")
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


@dataclass(frozen=True)
class LayoutRef:
    name: str
    theme: str = DEFAULT_THEME
    #: a custom layout's folder and template file name (None: built in)
    folder: Path | None = None
    template: str = CUSTOM_TEMPLATE
    params: dict = field(default_factory=dict, hash=False, compare=False)


def builtin_layouts() -> list[str]:
    """Names of the layouts shipped in `templates/` (those with a script)."""
    return sorted(
        p.name.removesuffix(".html.j2")
        for p in TEMPLATES_DIR.glob("*.html.j2")
        if not p.name.startswith("_") and (STATIC_DIR / "layouts" / (p.name.removesuffix(".html.j2") + ".js")).exists()
    )


def resolve_layout(name: str, params: dict | None = None) -> LayoutRef:
    """Validate a layout (`grid`, `speaker-light`, `./my-layout/`, `card.html.j2`) and the values given to it."""
    if "/" in name or name.endswith(".j2"):
        return _custom(Path(name).expanduser(), params or {})
    if params:
        raise InvalidRequest(f"layout {name!r} takes no parameters", details={"field": "layoutParams"})
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


def _custom(path: Path, given: dict) -> LayoutRef:
    if path.is_dir():
        folder, template = path.resolve(), CUSTOM_TEMPLATE
    elif path.is_file() and path.name.endswith(".html.j2"):
        folder, template = path.resolve().parent, path.name
    else:
        raise InvalidRequest(f"layout {str(path)!r}: no such folder or .html.j2 template", details={"field": "layout"})
    if not (folder / template).is_file():
        raise InvalidRequest(f"layout folder {str(folder)!r} has no {template}", details={"field": "layout"})
    declared = _declared(folder / MANIFEST) if template == CUSTOM_TEMPLATE else {}
    return LayoutRef(name=folder.name, folder=folder, template=template, params=layout_params(declared, given))


def _declared(manifest: Path) -> dict:
    """The parameters a layout declares in its layout.json: {name: {type, default, ...}}."""
    if not manifest.exists():
        return {}
    try:
        params = json.loads(manifest.read_text()).get("params", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise InvalidRequest(f"{manifest}: not a JSON object with \"params\" ({exc})", details={"field": "layout"})
    for key, spec in params.items():
        if not isinstance(spec, dict) or spec.get("type") not in PARAM_TYPES:
            raise InvalidRequest(f"{manifest}: parameter {key!r} needs a type, one of {', '.join(PARAM_TYPES)}",
                                 details={"field": "layout"})
    return params


def layout_params(declared: dict, given: dict) -> dict:
    """Every declared parameter's value: the given one, checked against its type, or its default."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        known = ", ".join(sorted(declared)) or "none"
        raise InvalidRequest(f"unknown layout parameter(s) {', '.join(unknown)}; this layout takes: {known}",
                             details={"field": f"layoutParams.{unknown[0]}"})
    values = {}
    for key, spec in declared.items():
        value = given.get(key, spec.get("default"))
        if value is None:
            if spec.get("required"):
                raise InvalidRequest(f"layout parameter {key!r} is required", details={"field": f"layoutParams.{key}"})
            values[key] = None
            continue
        values[key] = _checked(key, spec, value)
    return values


def _checked(key: str, spec: dict, value):
    kind = spec["type"]
    bad = InvalidRequest(f"layout parameter {key!r} must be a {kind}", details={"field": f"layoutParams.{key}"})
    if kind == "boolean":
        if not isinstance(value, bool):
            raise bad
    elif kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
    else:
        if not isinstance(value, str):
            raise bad
        if len(value) > int(spec.get("max_length", 500)):
            raise InvalidRequest(f"layout parameter {key!r} is longer than {spec.get('max_length', 500)} characters",
                                 details={"field": f"layoutParams.{key}"})
        if kind == "color" and not _COLOR.match(value):
            raise InvalidRequest(f"layout parameter {key!r} must be a colour #rrggbb",
                                 details={"field": f"layoutParams.{key}"})
        if kind == "url" and not value.startswith(("https://", "http://", "/")):
            raise InvalidRequest(f"layout parameter {key!r} must be an http(s) URL",
                                 details={"field": f"layoutParams.{key}"})
    return value
