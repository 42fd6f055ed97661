"""Calling a running service as a client does: JSON over HTTP with an API key."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable

Call = Callable[..., dict]


def caller(base: str, key: str) -> Call:
    """call(method, path, body=None) -> the JSON answer of the service at `base`, authorised with `key`."""

    def call(method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    return call


def until_ended(call: Call, info: dict, timeout: float = 60) -> dict:
    """The egress (as started: `info`) once it has ended, LIMIT_REACHED, COMPLETE or FAILED."""
    deadline = time.monotonic() + timeout
    while info["status"] not in ("LIMIT_REACHED", "COMPLETE", "FAILED"):
        assert time.monotonic() < deadline, info
        time.sleep(0.3)
        info = call("GET", f"/v1/egress/{info['id']}")
    return info
