"""Command-line flags `record` and `layouts` share: how the page looks and what it may reach."""

from __future__ import annotations

import argparse
import json

from ..errors import InvalidRequest
from ..outbound import OutboundPolicy, worker_policy
from ..request import LOGO_POSITIONS

OVERLAY_FLAGS = ("names", "title", "logo", "logo_position", "clock", "clock_timezone")


def add_page_flags(p: argparse.ArgumentParser) -> None:
    """--layout-param, the overlay flags and --allow-host."""
    p.add_argument("--layout-param", action="append", metavar="KEY=VALUE",
                   help="a value for the layout's declared parameters (repeatable; JSON values such as true or 3 "
                        "are read as such)")
    group = p.add_argument_group("overlays (drawn over any layout)")
    group.add_argument("--names", action=argparse.BooleanOptionalAction, default=None,
                       help="a name label on every video tile (default on; --no-names hides them)")
    group.add_argument("--title", help="a title bar across the top")
    group.add_argument("--logo", metavar="FILE|URL", help="a logo / watermark image")
    group.add_argument("--logo-position", choices=LOGO_POSITIONS)
    group.add_argument("--clock", action="store_true", default=None, help="a clock in the top-right corner")
    group.add_argument("--clock-timezone", metavar="ZONE", help="IANA zone of the clock (default UTC)")
    p.add_argument("--allow-host", action="append", metavar="HOST",
                   help="a host the layout page may reach besides its own server (and, with --untrusted, any URL "
                        "of the request even if private): host, host:port, *.domain or * (repeatable; default none)")


def fold_page_flags(args: argparse.Namespace, data: dict) -> None:
    """Put --layout-param and the overlay flags into a request dict (over what it had)."""
    if args.layout_param:
        data["layout_params"] = {**data.get("layout_params", {}), **_layout_params(args.layout_param)}
    overlays = {k: getattr(args, k) for k in OVERLAY_FLAGS if getattr(args, k) is not None}
    if overlays:
        data["overlays"] = {**data.get("overlays", {}), **overlays}


def outbound_policy(args: argparse.Namespace) -> OutboundPolicy:
    """Where this run's request may make it connect: anywhere (an operator's own command), or with --untrusted
    (a request from the HTTP APIs) public addresses and the --allow-host hosts only, and no local files."""
    return worker_policy(args.allow_host, trusted=not getattr(args, "untrusted", False))


def _layout_params(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidRequest(f"--layout-param {pair!r} is not KEY=VALUE", details={"field": "layoutParams"})
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out
