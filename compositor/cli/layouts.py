"""`compositor layouts …`: list, check, snapshot and preview layouts."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from pydantic import ValidationError

from ..errors import CompositorError, InvalidRequest
from ..layouts import builtin_layouts, describe, resolve_layout
from ..plan import EgressConfig, resolve
from ..presets import DEFAULT_PRESET, preset_names
from ..request import RecordRequest, first_error, parse_participant, synthetic_participants
from .args import add_page_flags, fold_page_flags, outbound_policy

PREVIEW_PORT = 8090


def layouts_parser(sub) -> None:
    """The `layouts` command and its subcommands."""
    p = sub.add_parser("layouts", help="list, check, snapshot and preview layouts",
                       description="Tools for writing layouts: a layout is a folder (or one .html.j2 file) "
                                   "extending the base page; built-in layouts are named as in requests.")
    tools = p.add_subparsers(dest="tool", required=True)
    tools.add_parser("list", help="the built-in layouts")
    check = tools.add_parser("check", help="render a layout and report what would spoil a recording",
                             description="Renders the layout with a synthetic room and reports Jinja errors (file "
                                         "and line), JavaScript errors, failed or refused requests, a missing "
                                         "START_RECORDING and elements outside the frame. Exit status 1 if any.")
    _page_args(check)
    check.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for START_RECORDING")
    shot = tools.add_parser("snapshot", help="record a moment of a layout through the real pipeline to a PNG")
    _page_args(shot)
    shot.add_argument("-o", "--output", required=True, type=Path, help="PNG file")
    shot.add_argument("--at", type=float, default=2.0, help="room time of the frame, seconds (default 2)")
    preview = tools.add_parser("preview", help="serve a layout with a synthetic room; reloads on change",
                               description="Serves the layout in a frame of the exact output size with a scripted "
                                           "synthetic room, and reloads it whenever a file of the layout changes.")
    _page_args(preview)
    preview.add_argument("--port", type=int, default=PREVIEW_PORT, help=f"0 picks a free one (default {PREVIEW_PORT})")


def _page_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("layout", metavar="PATH", help="a layout folder, a .html.j2 file, or a built-in name")
    people = p.add_mutually_exclusive_group()
    people.add_argument("--participants", type=int, metavar="N", help="N synthetic people (the first one talks)")
    people.add_argument("--participant", action="append", metavar="SPEC",
                        help="a synthetic participant, as for `record` (repeatable); default: the demo room")
    p.add_argument("--preset", default=DEFAULT_PRESET, help=f"frame size: {', '.join(preset_names())}")
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    add_page_flags(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug log on stderr")


def _request(args: argparse.Namespace) -> RecordRequest:
    """The page the tool shows, as a recording's request (its file is set by whoever records it)."""
    data: dict = {"layout": args.layout, "preset": args.preset, "file": {"filepath": "layout.mp4"}}
    if args.participants is not None:
        data["room"] = {"participants": [p.model_dump() for p in synthetic_participants(args.participants)]}
    elif args.participant:
        data["room"] = {"participants": [parse_participant(s, i).model_dump() for i, s in enumerate(args.participant)]}
    advanced = {k: getattr(args, k) for k in ("width", "height") if getattr(args, k)}
    if advanced:
        data["advanced"] = advanced
    fold_page_flags(args, data)
    try:
        return RecordRequest.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(first_error(exc)) from None


def run_layouts(args: argparse.Namespace) -> int:
    """Run a `layouts` tool; the exit status says whether it found the layout fine."""
    try:
        if args.tool == "list":
            for name in builtin_layouts():
                print(f"{name:16} {describe(resolve_layout(name))}")
            return 0
        request = _request(args)
        config = resolve(request)
        return asyncio.run({"check": _check, "snapshot": _snapshot, "preview": _preview}[args.tool](
            args, request, config))
    except CompositorError as exc:
        print(f"compositor layouts {args.tool}: [{exc.code}] {exc.message}", file=sys.stderr)
        return exc.exit_status


async def _check(args: argparse.Namespace, request: RecordRequest, config: EgressConfig) -> int:
    from ..authoring.tools import check_layout

    report = await check_layout(config.layout, config.participants, config.overlays, width=config.width,
                                height=config.height, timeout=args.timeout, policy=outbound_policy(args))
    where = f"{config.layout.folder / config.layout.template}"
    if report.ok:
        print(f"ok: {where} at {report.width}x{report.height}: START_RECORDING after {report.started_after_s} s, "
              f"{report.tiles} tiles, no errors")
        return 0
    print(f"{where}: {len(report.problems)} problem(s) at {report.width}x{report.height}")
    for problem in report.problems:
        print(f"  {problem}")
    return 1


async def _snapshot(args: argparse.Namespace, request: RecordRequest, config: EgressConfig) -> int:
    from ..authoring.tools import snapshot

    out = await snapshot(request, args.output, at=args.at, policy=outbound_policy(args))
    print(f"{out}: {config.layout.name} at {config.width}x{config.height}, room time {args.at:g} s")
    return 0


async def _preview(args: argparse.Namespace, request: RecordRequest, config: EgressConfig) -> int:
    from ..authoring.preview import Preview
    from ..pipeline.page_server import PageSpec

    spec = PageSpec(config.layout, config.overlays, config.participants, "preview")
    preview = Preview(spec, lambda: resolve_layout(request.layout, request.layout_params),
                      frame=(config.width, config.height), port=args.port)
    await preview.start()
    print(f"compositor layouts preview: {preview.url} ({config.width}x{config.height}; watching "
          f"{config.layout.folder}; Ctrl-C stops)", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await preview.stop()
    return 0
