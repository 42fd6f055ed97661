"""Layouts: the built-in ones, a user's layout folder, and the parameters a layout declares.

Every layout is a folder holding `layout.html.j2` (which extends our
`_base.html.j2`), optionally `layout.js` (a view function: the room's view in,
positioned tiles out), `layout.json` declaring its parameters, and any CSS,
images and fonts it uses. The built-in ones live in `layouts/` and are
written exactly as a user's would be. A user's layout may also be a single
`.html.j2` file. `-light` / `-dark` suffixes select a theme of a layout
rather than naming a copy of it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidRequest
from .paths import LAYOUTS_DIR

THEMES = ("dark", "light")
DEFAULT_THEME = "dark"
DEFAULT_LAYOUT = "default"  # what a request without a layout gets
TEMPLATE = "layout.html.j2"
SCRIPT = "layout.js"
MANIFEST = "layout.json"
CUSTOM_PREFIX = "custom/"  # how API requests name a layout of the service's layouts_dir
PARAM_TYPES = ("string", "color", "boolean", "number", "url")
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class LayoutRef:
    name: str
    folder: Path
    theme: str = DEFAULT_THEME
    template: str = TEMPLATE
    builtin: bool = False
    params: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def assets(self) -> str:
        """Where the page finds the layout's own files (its script, CSS, images)."""
        return f"/layouts/{self.name}" if self.builtin else "/custom"

    @property
    def script(self) -> str | None:
        """The layout's view script as the page imports it, if it has one."""
        return f"{self.assets}/{SCRIPT}" if (self.folder / SCRIPT).is_file() else None


def builtin_layouts() -> list[str]:
    """Names of the layouts shipped in `layouts/`."""
    return sorted(p.parent.name for p in LAYOUTS_DIR.glob(f"*/{TEMPLATE}") if not p.parent.name.startswith("_"))


def resolve_layout(name: str, params: dict | None = None, layouts_dir: Path | None = None) -> LayoutRef:
    """Validate a layout and the values given to it.

    `name` is a built-in (`grid`, `speaker-light`), a path (`./my-layout/`,
    `card.html.j2`), or `custom/NAME` for a layout of the service's `layouts_dir`.
    """
    given = params or {}
    if name.startswith(CUSTOM_PREFIX):
        return _from_layouts_dir(name.removeprefix(CUSTOM_PREFIX), given, layouts_dir)
    if "/" in name or name.endswith(".j2"):
        return _custom(Path(name).expanduser(), given)
    base, theme = name.strip().lower(), DEFAULT_THEME
    for candidate in THEMES:
        if base.endswith("-" + candidate):
            base, theme = base.removesuffix("-" + candidate), candidate
            break
    known = builtin_layouts()
    if base not in known:
        raise InvalidRequest(f"unknown layout {name!r}; built-in layouts: {', '.join(known)} "
                             f"(each also as -light or -dark)", details={"field": "layout"})
    folder = LAYOUTS_DIR / base
    return LayoutRef(base, folder, theme=theme, builtin=True, params=layout_params(_declared(folder / MANIFEST), given))


def _from_layouts_dir(name: str, given: dict, layouts_dir: Path | None) -> LayoutRef:
    if layouts_dir is None:
        raise InvalidRequest("this server has no layouts_dir; custom/NAME layouts are off", details={"field": "layout"})
    if not _NAME.match(name) or ".." in name:
        raise InvalidRequest(f"custom layout name {name!r}: letters, digits, '.', '_' and '-' only",
                             details={"field": "layout"})
    for candidate in (layouts_dir / name, layouts_dir / f"{name}.html.j2"):
        if candidate.exists():
            return _custom(candidate, given)
    available = sorted(p.name.removesuffix(".html.j2") for p in layouts_dir.iterdir()
                       if p.is_dir() or p.name.endswith(".html.j2")) if layouts_dir.is_dir() else []
    raise InvalidRequest(f"no custom layout {name!r}; available: {', '.join(available) or 'none'}",
                         details={"field": "layout"})


def _custom(path: Path, given: dict) -> LayoutRef:
    if path.is_dir():
        folder, template = path.resolve(), TEMPLATE
    elif path.is_file() and path.name.endswith(".html.j2"):
        folder, template = path.resolve().parent, path.name
    else:
        raise InvalidRequest(f"layout {str(path)!r}: no such folder or .html.j2 template", details={"field": "layout"})
    if not (folder / template).is_file():
        raise InvalidRequest(f"layout folder {str(folder)!r} has no {template}", details={"field": "layout"})
    declared = _declared(folder / MANIFEST) if template == TEMPLATE else {}
    return LayoutRef(name=folder.name, folder=folder, template=template, params=layout_params(declared, given))


def describe(layout: LayoutRef) -> str:
    """The layout's one-line description from its layout.json ('' when it has none)."""
    try:
        return str(json.loads((layout.folder / MANIFEST).read_text()).get("description", ""))
    except (OSError, ValueError, AttributeError):
        return ""


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
