"""The package as a user installs it: `pip install` into a fresh venv in another folder, then `record` and `serve`
with every built-in layout, from its own page assets (package data), not the checkout's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from compositor import analysis
from compositor.layouts import builtin_layouts

from .conftest import REPO, free_port
from .support.client import caller, until_ended

ADA = 350  # the demo room's first speaker's tone (Hz), speaking from 0 s


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv elsewhere with the compositor installed from a wheel of this checkout; its dependencies are the
    suite's own (a .pth line), so nothing but the package itself comes from the build."""
    root = tmp_path_factory.mktemp("installed")
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python*/site-packages"))
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "suite-dependencies.pth").write_text("\n".join(deps) + "\n")
    wheel = next(wheels.glob("compositor-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return venv


def run_installed(venv: Path, cwd: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COMPOSITOR_ASSETS")}
    return subprocess.run([str(venv / "bin" / "python"), "-m", "compositor", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, **kw)


def test_it_imports_from_the_venv_not_the_checkout(installed, tmp_path):
    where = subprocess.run([str(installed / "bin" / "python"), "-c",
                            "import compositor, compositor.paths as p; print(compositor.__file__); "
                            "print(p.LIVEKIT_CLIENT.is_file()); "
                            "print(all((p.DASHBOARD_DIR / f).is_file() for f in ('index.html', 'app.js', 'app.css')))"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split()
    assert str(installed) in where[0] and str(REPO) not in where[0], where
    assert where[1] == "True"  # livekit-client came along as package data
    assert where[2] == "True"  # and the dashboard


@pytest.mark.parametrize("layout", builtin_layouts())
def test_record_with_each_built_in_layout(installed, tmp_path, layout):
    run = run_installed(installed, tmp_path, "record", "--layout", layout, "--width", "320", "--height", "180",
                        "--duration", "2", "--events", "json", "-o", "out.mp4", timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    out = tmp_path / "out.mp4"
    facts = analysis.facts(out)
    assert (facts.width, facts.height, facts.video_codec) == (320, 180, "h264")
    assert analysis.tone_level(analysis.audio_samples(out), ADA, 0.3, 1.7) > 0.02


def test_serve_records_from_the_installed_package(installed, tmp_path):
    port = free_port()
    proc = subprocess.Popen([str(installed / "bin" / "python"), "-m", "compositor", "serve", "--port", str(port),
                             "--data-dir", str(tmp_path / "data"), "--api-key", "k"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening on" in proc.stdout.readline()

        call = caller(f"http://127.0.0.1:{port}", "k")
        info = until_ended(call, call("POST", "/v1/egress/start", {"roomName": "installed", "layout": "grid",
                                                                    "maxDuration": 2,
                                                                    "advanced": {"width": 320, "height": 180}}))
        assert info["status"] == "LIMIT_REACHED", info
        assert analysis.tone_level(analysis.audio_samples(info["file"]["location"]), ADA, 0.3, 1.7) > 0.02
    finally:
        proc.terminate()
        proc.wait(60)
