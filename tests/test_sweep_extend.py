"""Extending a finished run directory: more SNR levels, chips, depths — only the new cells
are computed, the table equals a fresh run of the union, other changes are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from noisydeq import store
from noisydeq.errors import NoisyDEQError
from noisydeq.extension import level_groups
from noisydeq.results import RunDir
from noisydeq.sweep import run_sweep
from tests.sweep_helpers import toy_models, toy_spec, toy_task

ROOT = Path(__file__).resolve().parents[1]
# the SNR device; 40 test samples -> 48-row blocks: up to 8 levels share one cell, so the
# chunks of 0:30:10 and 0:30:5 differ and the old cells are found only by their own chunks
KW = dict(device="snr", noise_site="device", chips=1, max_rows=400)


def _run(out, spec, depths=(1, 3)):
    task = toy_task(n=40)
    return run_sweep(spec, out, task=task, models=toy_models(task, depths=depths),
                     progress=False, plots=False, jobs=1)


def _levels_evaluated(monkeypatch) -> list[float]:
    """Record every SNR level a cell evaluation computes."""
    import noisydeq.sweep.plan as plan

    seen: list[float] = []
    real = plan.evaluate_cell

    def spy(sm, deployed, x, y, levels, *args, **kw):
        seen.extend(levels)
        return real(sm, deployed, x, y, levels, *args, **kw)

    monkeypatch.setattr(plan, "evaluate_cell", spy)
    return seen


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_more_snr_levels_compute_only_the_new_ones(tmp_path, monkeypatch):
    fresh = _run(tmp_path / "fresh", toy_spec(snr_db="0:30:5", **KW))
    out = tmp_path / "run"
    first = _run(out, toy_spec(snr_db="0:30:10", **KW))
    assert first.computed_cells == 4 and first.extended == {}  # 4 models x 1 chip, 1 chunk
    seen = _levels_evaluated(monkeypatch)
    ext = _run(out, toy_spec(snr_db="0:30:5", **KW))
    assert sorted(set(seen)) == [5.0, 15.0, 25.0] and len(seen) == 4 * 3  # new levels only
    assert (ext.computed_cells, ext.skipped_cells) == (4, 4)
    assert ext.extended == {"snr_db": ["5.0", "15.0", "25.0"]}
    assert ext.rows == fresh.rows
    for name in ("results.csv", "layers.csv", "results.parquet"):
        assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name
    run = RunDir(out)
    assert run.read_config() == toy_spec(snr_db="0:30:5", **KW)  # the union is recorded
    history = run.extensions()
    assert [h["added"] for h in history] == [{"snr_db": ["5.0", "15.0", "25.0"]}]
    assert level_groups(toy_spec(snr_db="0:30:5").snr_db, history) == [
        [0.0, 10.0, 20.0, 30.0], [5.0, 15.0, 25.0]]
    assert "config.toml" in store.verify_manifest(out)  # digests hold over the new files
    proc = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    seen.clear()  # resuming the union, or asking for the old grid, computes nothing
    for grid in ("0:30:5", "0:30:10"):
        again = _run(out, toy_spec(snr_db=grid, **KW))
        assert again.computed_cells == 0 and again.extended == {} and again.rows == fresh.rows
    assert seen == [] and len(RunDir(out).extensions()) == 1


def test_more_chips_and_depths_compute_only_their_cells(tmp_path, monkeypatch):
    union = dict(KW, snr_db="0,10,inf", chips=2)
    fresh = _run(tmp_path / "fresh", toy_spec(depths=[1, 3], **union))
    out = tmp_path / "run"
    _run(out, toy_spec(depths=[1], **dict(union, chips=1)), depths=(1,))
    ext = _run(out, toy_spec(depths=[3], **union))  # depth 1 is kept: the union grows
    # new: both chips of the two depth-3 models, chip 1 of the two depth-1 models
    assert (ext.computed_cells, ext.skipped_cells) == (2 * 2 + 2 * 1, 2)
    assert ext.extended == {"depths": [3], "chips": [1, 2]}
    assert ext.rows == fresh.rows
    assert (out / "results.csv").read_bytes() == (tmp_path / "fresh" / "results.csv").read_bytes()
    store.verify_manifest(out)


@pytest.mark.parametrize("change, field", [
    (dict(noise_mode="dynamic"), "noise_mode"),
    (dict(train_snr_db="inf,10"), "train_snr_db"),
    (dict(epochs=3, snr_db="0:30:5"), "epochs"),  # a grid that grows does not slip it in
])
def test_a_change_of_existing_cells_is_refused_writing_nothing(tmp_path, change, field):
    out = tmp_path / "run"
    _run(out, toy_spec(snr_db="0:30:10", **KW))
    before = _snapshot(out)
    with pytest.raises(NoisyDEQError) as err:
        _run(out, toy_spec(**{"snr_db": "0:30:10", **KW, **change}))
    msg = str(err.value)
    assert f"differs in: {field})" in msg and "\n" not in msg
    assert "grows only in snr_db, chips, seeds, depths, kinds" in msg
    assert _snapshot(out) == before


def test_cli_extends_a_run_and_reports_it(tmp_path):
    out = tmp_path / "r"
    common = ["sweep", "--device", "snr", "--depths", "1", "--epochs", "0", "--kinds", "deq",
              "--quiet", "--out", str(out), "--set", "max_test_samples=20",
              "--set", "hidden=8", "--jobs", "1", "--chips", "1"]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "noisydeq.cli", *common, *args],
                              cwd=tmp_path, capture_output=True, text=True,
                              env={**__import__("os").environ,
                                   "NOISYDEQ_CACHE": str(tmp_path / "cache")})

    first = cli("--snr", "0,inf")
    assert first.returncode == 0, first.stderr
    second = cli("--snr", "0,10,inf", "--json")
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["extended"] == {"snr_db": ["10.0"]}
    assert (report["cells_computed"], report["cells_resumed"]) == (1, 1)
    third = cli("--snr", "0,10,inf", "--chips", "2")
    assert third.returncode == 0, third.stderr
    assert "chips 1 → 2" in third.stdout and "cells: 2 computed, 2 resumed" in third.stdout
    refused = cli("--snr", "0,10,inf", "--noise-mode", "dynamic")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "differs in: noise_mode" in refused.stderr


def test_calibrated_levels_equal_the_runs_of_their_groups(tmp_path):
    """In-network calibration searches a grid's levels in ascending order, each from the one
    before: an extension's levels are calibrated among themselves, so every cell of the
    extended run equals the cell of a fresh run of the grid it came with."""
    def run(out, snr, chips):
        task = toy_task(n=40)
        task.x_train = toy_task(n=64, seed=1).x_test  # calibration inputs: in-network
        return run_sweep(toy_spec(**dict(KW, snr_db=snr, chips=chips)), out, task=task,
                         models=toy_models(task), progress=False, plots=False, jobs=1)

    run(tmp_path / "r", "0:30:10", 1)
    ext = run(tmp_path / "r", "0:30:5", 2)
    assert (ext.computed_cells, ext.skipped_cells) == (4 + 2 * 4, 4)
    parts = run(tmp_path / "g0", "0:30:10", 2).rows + run(tmp_path / "a1", "5,15,25", 2).rows
    by_key = {(r["model_id"], r["chip"], r["snr_db"]): r for r in parts}
    assert len(ext.rows) == len(parts)
    assert all(r == by_key[(r["model_id"], r["chip"], r["snr_db"])] for r in ext.rows)
