"""The built wheel is the product: it carries its data, declares torch as a range and its
optional parts as extras, and the README's quick start runs from it, outside the repository.

The wheel is built from a copy of the sources (nothing is written into the checkout),
installed with ``--no-deps`` into a fresh folder (the dependencies come from the test's own
environment, as the Makefile's recipe installs them) and run from an empty directory with only
that folder on ``PYTHONPATH``, so presets and experiment files must come from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _pip(*args: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check",
                           "--no-input", "-q", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "noisydeq", src / "noisydeq", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(tmp / "dist"),
         str(src), cwd=tmp)
    (wheel,) = (tmp / "dist").glob("noisydeq-*.whl")
    _pip("install", "--no-deps", "--target", str(tmp / "site"), str(wheel), cwd=tmp)
    return wheel, tmp / "site"


def _env(site: Path, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NOISYDEQ_CACHE")}
    return {**env, "PYTHONPATH": str(site), "NOISYDEQ_CACHE": str(tmp / "cache"),
            "NOISYDEQ_JOBS": "1", "NOISYDEQ_THREADS": "1"}


def test_wheel_metadata_and_data(installed):
    wheel, _ = installed
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "noisydeq/presets/devices/rram-wan2022.toml" in names
    assert "noisydeq/experiments/fig1-mnist.toml" in names
    requires = [ln.split(":", 1)[1].strip() for ln in meta.splitlines()
                if ln.startswith("Requires-Dist:")]
    torch = [r for r in requires if r.replace(" ", "").startswith(("torch<", "torch>"))]
    assert torch and "extra" not in torch[0] and "==" not in torch[0], requires
    assert any(r.startswith("aihwkit") and 'extra == "rram"' in r for r in requires), requires
    assert any(r.startswith("torchattacks") and 'extra == "attacks"' in r for r in requires)
    assert not any(r.startswith(("aihwkit", "torchattacks")) and "extra" not in r
                   for r in requires)
    extras = {ln.split(":", 1)[1].strip() for ln in meta.splitlines()
              if ln.startswith("Provides-Extra:")}
    assert {"rram", "attacks", "pandas", "all"} <= extras


def test_quick_start_from_the_wheel(installed, tmp_path):
    _, site = installed
    user = tmp_path / "user"
    user.mkdir()
    env = _env(site, tmp_path)
    exe = site / "bin" / "noisydeq"
    where = subprocess.run(
        [sys.executable, "-c", "import noisydeq, noisydeq.bundled as b, noisydeq.hardware.presets"
         " as p; print(noisydeq.__file__); print(b.experiments_dir()); print(p.presets_dir())"],
        cwd=user, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert Path(line).resolve().is_relative_to(site.resolve()), where.stdout
    listing = subprocess.run([str(exe), "run", "--list"], cwd=user, env=env,
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0 and "fig1-mnist" in listing.stdout, listing.stderr
    proc = subprocess.run(
        [str(exe), "sweep", "--device", "snr", "--snr", "0,inf", "--depths", "1",
         "--chips", "1", "--epochs", "1", "--out", "r", "--json"],
        cwd=user, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert (user / "r" / "results.csv").is_file(), summary
