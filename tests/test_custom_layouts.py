"""Custom layouts: a user's folder (or one template) with its own CSS, script and declared parameters."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from compositor import analysis
from compositor.errors import InvalidRequest
from compositor.layouts import resolve_layout
from compositor.pipeline.page_server import PageServer, PageSpec, render_page
from compositor.request import Overlays

from .conftest import REPO, SMALL, assert_color

EXAMPLE = REPO / "examples" / "layouts" / "branded"
RED = "#e6194b"
LEFT, TITLE, RIGHT = (0.05, 0.5, 0.3, 0.3), (0.3, 0.03, 0.4, 0.08), (0.6, 0.45, 0.3, 0.3)


@pytest.fixture
def layout_dir(tmp_path):
    """The example layout, copied where a user would keep their own."""
    return shutil.copytree(EXAMPLE, tmp_path / "my-layout")


def test_a_custom_layout_records_with_its_own_look_and_parameters(record, layout_dir):
    run = record(*SMALL, "--duration", "3", "--layout", f"{layout_dir}/", "--participant", f"name=A,color={RED}",
                 "--layout-param", "brand=#2e8b57", "--layout-param", "title=Quarterly review")
    assert run.code == 0, run.stderr[-2000:]
    frame = analysis.frame_at(run.output, 2.0)
    assert_color(frame, LEFT, "#2e8b57")   # its own background, from a parameter
    assert_color(frame, TITLE, "#ffd700")  # its own CSS file
    assert_color(frame, RIGHT, RED)        # its own script put the person on the right


def test_defaults_apply_and_a_boolean_turns_the_title_off(record, layout_dir):
    run = record(*SMALL, "--duration", "2", "--layout", str(layout_dir), "--participant", f"name=A,color={RED}",
                 "--layout-param", "show_title=false")
    assert run.code == 0, run.stderr[-2000:]
    frame = analysis.frame_at(run.output, 1.5)
    assert_color(frame, LEFT, "#0b5394")   # the declared default brand
    assert_color(frame, TITLE, "#0b5394")  # no title bar


def test_a_single_template_file_is_a_layout(record, tmp_path):
    page = tmp_path / "plain.html.j2"
    page.write_text('{% extends "_base.html.j2" %}{% set layout_script = "grid" %}'
                    '{% block head %}<style>body.theme-dark { background: #808000; }</style>{% endblock %}')
    run = record(*SMALL, "--duration", "2", "--layout", str(page), "--participant", f"name=A,color={RED}")
    assert run.code == 0, run.stderr[-2000:]
    assert_color(analysis.frame_at(run.output, 1.5), (0.45, 0.45, 0.1, 0.1), RED)


def test_parameter_values_are_escaped(layout_dir):
    hostile = '</header><script>console.error("pwned")</script><header>'
    html = render_page(resolve_layout(str(layout_dir), {"title": hostile}), Overlays(title=hostile).model_dump())
    assert "<script>console.error" not in html
    assert html.count("&lt;/header&gt;&lt;script&gt;") == 2  # the layout's title and the title overlay


def test_the_page_asks_for_its_own_modules_at_once(layout_dir):
    """modulepreload for what the page imports before it can start: the SDK's modules and the layout's script,
    followed through their imports. Never a file outside the layout's folder, another server's, or one that is
    not there: a preload that fails would fail the page."""
    (layout_dir / "layout.js").write_text("import { x } from './parts/a.js';\nimport '../outside.js';\n"
                                          "import 'https://cdn.example/x.js';\nexport default function view() {}\n")
    (layout_dir / "parts").mkdir()
    (layout_dir / "parts" / "a.js").write_text("import {\n  y,\n} from './b.js';\nexport const x = 1;\n")
    (layout_dir.parent / "outside.js").write_text("export {};\n")
    html = render_page(resolve_layout(str(layout_dir)), Overlays().model_dump())
    preloads = re.findall(r'<link rel="modulepreload" href="([^"]+)">', html)
    assert preloads[:2] == ["/static/sdk/boot.js", "/custom/layout.js"], preloads
    assert {"/custom/parts/a.js", "/static/sdk/room.js", "/static/sdk/synthetic.js"} <= set(preloads), preloads
    assert not [p for p in preloads if "outside" in p or "cdn" in p or p.endswith("/b.js")], preloads


@pytest.mark.parametrize("params, message", [
    ({"colour": "#000000"}, "unknown layout parameter(s) colour; this layout takes: brand, show_title, title"),
    ({"brand": "red"}, "must be a colour #rrggbb"),
    ({"show_title": "yes"}, "must be a boolean"),
    ({"title": "x" * 81}, "longer than 80"),
])
def test_bad_parameters_name_the_parameter(layout_dir, params, message):
    with pytest.raises(InvalidRequest) as err:
        resolve_layout(str(layout_dir), params)
    assert message in err.value.message and err.value.details["field"].startswith("layoutParams")


def test_bad_layouts_fail_before_anything_starts(record, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    run = record("--duration", "1", "--layout", f"{empty}/", timeout=30)
    assert run.code == 2 and "has no layout.html.j2" in run.error["message"]
    run = record("--duration", "1", "--layout", "grid", "--layout-param", "title=x", timeout=30)
    assert run.code == 2 and "this layout takes: none" in run.error["message"]
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "layout.html.j2").write_text('{% extends "_base.html.j2" %}')
    (tmp_path / "badjson" / "layout.json").write_text(json.dumps({"params": {"x": {"type": "colour"}}}))
    run = record("--duration", "1", "--layout", str(tmp_path / "badjson"), timeout=30)
    assert run.code == 2 and "needs a type" in run.error["message"]


def test_the_page_gets_only_the_layouts_own_files(layout_dir, tmp_path):
    import asyncio

    import aiohttp

    (tmp_path / "secret.txt").write_text("not for the page")

    async def fetch_all() -> dict[str, int]:
        server = PageServer()
        await server.start()
        try:
            server.show(PageSpec(resolve_layout(str(layout_dir)), Overlays(), (), "r"))
            async with aiohttp.ClientSession() as session:
                out = {}
                for path in ("/custom/style.css", "/custom/layout.js", "/custom/../secret.txt",
                             "/custom/%2e%2e/secret.txt", "/page",
                             "/layouts/grid/layout.js", "/layouts/grid/../../README.md"):
                    async with session.get(server.base_url + path) as resp:
                        out[path] = resp.status
                return out
        finally:
            await server.stop()

    statuses = asyncio.run(fetch_all())
    assert statuses["/custom/style.css"] == 200 and statuses["/custom/layout.js"] == 200
    assert statuses["/page"] == 200 and statuses["/layouts/grid/layout.js"] == 200
    assert statuses["/layouts/grid/../../README.md"] == 404
    assert statuses["/custom/../secret.txt"] == 404 and statuses["/custom/%2e%2e/secret.txt"] == 404
