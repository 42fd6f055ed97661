"""The LiveKit room tests' servers: a real livekit-server (tools/peers/livekit.py) per test module, and the
service recording its rooms. Without the tools (`make livekit-tools`) the tests skip, saying why."""

from __future__ import annotations

import shutil

import pytest

from tools.peers.livekit import API_KEY, API_SECRET, BIN, WHY_MISSING, LiveKitServer


def tools_or_skip() -> None:
    """Skip (with the reason and the fix) when livekit-server or lkpub is not built."""
    if not ((BIN / "livekit-server").exists() and (BIN / "lkpub").exists()):
        pytest.skip(WHY_MISSING if not shutil.which("go") else WHY_MISSING.split(": ", 1)[1])


@pytest.fixture(scope="module")
def livekit(tmp_path_factory):
    """A livekit-server on 127.0.0.1 for the test module (skipped, saying why, without the tools)."""
    tools_or_skip()
    server = LiveKitServer(tmp_path_factory.mktemp("livekit"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def livekit_service(livekit, tmp_path_factory):
    """`compositor serve` recording the rooms of the module's livekit-server."""
    from ..test_service import Server  # here: test_service imports conftest, which imports this module

    env = {"COMPOSITOR_LIVEKIT_URL": livekit.http_url, "COMPOSITOR_LIVEKIT_API_KEY": API_KEY,
           "COMPOSITOR_LIVEKIT_API_SECRET": API_SECRET}
    server = Server(tmp_path_factory.mktemp("service") / "data", env=env)
    yield server
    server.stop_server()
