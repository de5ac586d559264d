"""Experiment specs (noisydeq/experiments/*.toml with a [sweep] table): valid, paper settings, and
every quick variant runs end to end through `noisydeq run` (scaled down for CI)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from noisydeq.config import ExperimentSpec, load_toml, tomllib

ROOT = Path(__file__).resolve().parents[1]
MNIST = Path(os.environ.get("NOISYDEQ_TEST_MNIST", ROOT.parent / "shared" / "data" / "mnist"))


def sweep_experiments() -> list[Path]:
    """Experiment files of the sweep runner (other tools keep their own specs there)."""
    files = sorted((ROOT / "noisydeq" / "experiments").glob("*.toml"))
    return [f for f in files if "sweep" in tomllib.loads(f.read_text(encoding="utf-8"))]


FILES = sweep_experiments()


def test_paper_figures_are_covered():
    figs = {f for p in FILES for f in load_toml(ExperimentSpec, p).figures}
    assert {"1a", "1b", "1c", "1d", "7", "8", "9", "10", "11", "12"} <= figs


REPRO = [p for p in FILES if p.stem.startswith("repro-")]
PAPER = [p for p in FILES if p not in REPRO]


@pytest.mark.parametrize("path", REPRO, ids=[p.stem for p in REPRO])
def test_full_size_reproduction_specs(path):
    """The full-size studies: quick training on all training data, 3 seeds, the paper test
    solver (window 40, threshold 60), both FFW forms reachable with --set ffw_form=eq57."""
    exp = load_toml(ExperimentSpec, path)
    full = exp.resolve("full")
    assert full.train_preset == "quick" and full.seeds == [0, 1, 2]
    assert full.max_train_samples is None and full.max_test_samples is None
    assert full.noise_site == "signal" and full.ffw_form is None  # default form eq57x
    ts = full.test_solver
    assert (ts.name, ts.max_iter, ts.tol, ts.stop, ts.window) == ("unroll", 60, 0.05,
                                                                  "mean_rel", 40)
    if full.task == "mnist":
        assert full.depths == [1, 3, 5, 7, 9]
        assert set(full.train_snr_db) == {math.inf, 10.0, 0.0}
    else:
        assert full.depths == [1, 3, 5, 7, 9, 11] and full.train_snr_db == [math.inf]
    old = exp.model_copy(update={"full": {**exp.full, "ffw_form": "eq57"}})
    assert old.resolve("full").ffw_form == "eq57"


@pytest.mark.parametrize("path", PAPER, ids=[p.stem for p in PAPER])
def test_spec_variants(path):
    exp = load_toml(ExperimentSpec, path)
    quick, full = exp.resolve("quick"), exp.resolve("full")
    assert quick.train_preset == "quick" and full.train_preset == "paper"  # Tables 1-2
    if not exp.figures:  # the main job on a device (devices-*.toml), not a paper figure
        assert quick.noise_site == "device" and quick.chips == 3 and quick.task == "digits"
        assert quick.depths == [1, 3, 5, 7] and quick.snr_db == list(range(31))
        return
    assert quick.noise_site == full.noise_site == "signal"  # the paper's signal noise
    assert set(quick.depths) <= set(full.depths) and max(full.depths) >= 11
    assert math.inf in full.snr_db and 0.0 in full.snr_db
    if quick.task == "mnist":
        assert full.depths == [1, 3, 5, 7, 9, 11, 13]
        assert set(full.train_snr_db) == {math.inf, 10.0, 0.0} and len(full.seeds) == 3


# CI scale-down of the quick variants (the real quick specs run with `noisydeq run X.toml`).
SCALE = ["--set", "epochs=1", "--set", "max_train_samples=256", "--set", "max_test_samples=128",
         "--set", "hidden=16", "--set", "seeds=[0]", "--set", "depths=[1, 3]"]


@pytest.mark.slow
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_quick_variant_runs(tmp_path, path):
    exp = load_toml(ExperimentSpec, path)
    args = [sys.executable, "-m", "noisydeq.cli", "run", str(path), "--quick", "--json",
            "--out", str(tmp_path / "run"), *SCALE]
    if exp.resolve("quick").task == "mnist":
        if not MNIST.is_dir():
            pytest.skip(f"MNIST test set not found at {MNIST}")
        args += ["--data-dir", str(MNIST)]
    env = {**os.environ, "NOISYDEQ_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads(proc.stdout)
    quick = exp.resolve("quick")
    n_levels = len(quick.snr_db)
    n_models = 2 * 2 * len(quick.train_snr_db) * len(quick.training_devices())
    assert len(rep["summary"]) == n_models * n_levels
    names = {Path(f).name for f in rep["figures"]}
    if quick.train_device:  # one family per way of training, then side by side
        assert {"metric_vs_snr-1.png", "metric_vs_depth-1.png", "training_effect.png"} <= names
    else:
        assert {"metric_vs_snr.png", "metric_vs_depth.png"} <= names
    if len(quick.train_snr_db) > 1 and not quick.train_device:
        assert "train_snr_effect.png" in names
    metric_ok = [0 <= r["mean"] <= 1 if quick.task != "regression1d" else r["mean"] >= 0
                 for r in rep["summary"]]
    assert all(metric_ok)
