"""Sweep engine: batched = per-point, metric conventions, measured SNR, table and plots."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from noisydeq.errors import NoisyDEQError
from noisydeq.models.base import ModelOutput
from noisydeq.results import COLUMNS, read_csv
from noisydeq.summary import condensed_levels, summary_table
from noisydeq.sweep import SweepModel, level_chunks, run_sweep
from tests.sweep_helpers import toy_models, toy_spec, toy_task


def _run(tmp_path, name, spec, task, models, **kw):
    return run_sweep(spec, tmp_path / name, task=task, models=models, progress=False, **kw)


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_batched_equals_per_point(tmp_path, kind):
    task = toy_task(kind)
    models = toy_models(task)
    # max_rows=64 with 48 samples: one level per forward would be per-point; use 200 rows
    # so 4 levels go through one forward, and 20 rows so the test set is split in batches.
    for max_rows in (200, 20):
        spec_b = toy_spec(max_rows=max_rows, batched=True)
        spec_p = toy_spec(max_rows=max_rows, batched=False)
        a = _run(tmp_path, f"b{max_rows}{kind}", spec_b, task, models, plots=False).rows
        b = _run(tmp_path, f"p{max_rows}{kind}", spec_p, task, models, plots=False).rows
        assert len(a) == len(b) == len(models) * 2 * 4
        for ra, rb in zip(a, b, strict=False):
            assert ra["model_id"] == rb["model_id"] and ra["snr_db"] == rb["snr_db"]
            assert ra["value"] == pytest.approx(rb["value"], rel=1e-6, abs=1e-9)
            assert ra["mean_steps"] == pytest.approx(rb["mean_steps"], abs=1e-9)
            assert ra["measured_snr_db"] == pytest.approx(rb["measured_snr_db"], abs=1e-6)
        if kind == "classification":
            assert [r["value"] for r in a] == [r["value"] for r in b]


def test_noise_free_metric_matches_direct_forward(tmp_path):
    task = toy_task()
    models = toy_models(task)
    res = _run(tmp_path, "r", toy_spec(snr_db="inf", chips=1), task, models, plots=False)
    for sm, row in zip(models, res.rows, strict=False):
        with torch.no_grad():
            logits = sm.model(task.x_test)
        acc = float((logits.argmax(1) == task.y_test).double().mean())
        assert row["value"] == acc
        assert row["measured_snr_db"] == math.inf
        expected_steps = sm.depth if sm.kind == "ffw" else None
        if expected_steps is not None:
            assert row["mean_steps"] == expected_steps
        assert 0 < row["mean_steps"] <= 30


def test_noise_changes_results_and_measured_snr_tracks_nominal(tmp_path):
    task = toy_task(n=400, d=8)
    models = toy_models(task)
    spec = toy_spec(snr_db="-5,0,10,20", max_rows=2000)
    res = _run(tmp_path, "r", spec, task, models, plots=False)
    for r in res.rows:
        # realised Σ‖y‖²/Σ‖ε‖² at the signal site ≈ nominal (width-fixed Eq. 4 convention)
        assert abs(r["measured_snr_db"] - r["snr_db"]) < 0.5, r
    # chips draw different noise: chip 0 and chip 1 differ somewhere at -5 dB
    low = [r for r in res.rows if r["snr_db"] == -5 and r["kind"] == "deq"]
    assert len({(r["value"], r["mean_steps"]) for r in low}) > 1


class _HalfDiverging(nn.Module):
    """Predicts the label exactly, but returns NaN logits for odd-indexed rows."""

    kind = "ffw"

    def __init__(self, y: torch.Tensor, n_classes: int) -> None:
        super().__init__()
        self.y, self.k = y, n_classes

    def forward(self, x, noise=None, *, return_solution=False):
        n = self.y.shape[0]
        reps = x.shape[0] // n
        logits = nn.functional.one_hot(self.y.repeat(reps), self.k).float()
        bad = (torch.arange(x.shape[0]) % 2) == 1
        logits[bad] = float("nan")
        return ModelOutput(logits=logits, z=logits, solution=None)


def test_diverged_samples_count_as_wrong_and_are_reported(tmp_path):
    task = toy_task(n=40)
    model = _HalfDiverging(task.y_test, 4)
    sm = SweepModel(model, "ffw", 1, 4, 0)
    res = _run(tmp_path, "d", toy_spec(snr_db="0,inf", chips=1, max_rows=1000), task, [sm],
               plots=False)
    for r in res.rows:
        assert r["value"] == 0.5  # every finite row is right, every NaN row counts wrong
        assert r["diverged_frac"] == 0.5
        assert r["converged_frac"] == 0.5


def test_regression_mse_excludes_diverged(tmp_path):
    task = toy_task("regression", n=40)
    target = task.y_test

    class Half(nn.Module):
        def forward(self, x, noise=None, *, return_solution=False):
            reps = x.shape[0] // target.shape[0]
            out = target.repeat(reps, 1) + 0.5
            out[::4] = float("inf")
            return ModelOutput(logits=out, z=out)

    res = _run(tmp_path, "m", toy_spec(snr_db="inf", chips=1, max_rows=1000), task,
               [SweepModel(Half(), "ffw", 1, 1, 0)], plots=False)
    (r,) = res.rows
    assert r["value"] == pytest.approx(0.25)
    assert r["diverged_frac"] == 0.25


def test_table_files_schema_and_plots(tmp_path):
    task = toy_task()
    models = toy_models(task)
    spec = toy_spec(snr_db="0:10:2,inf", train_snr_db="inf")
    res = _run(tmp_path, "t", spec, task, models)
    back = read_csv(res.run_dir.csv_path)
    assert len(back) == len(res.rows)
    for a, b in zip(back, res.rows, strict=False):
        assert a == b
    import pyarrow.parquet as pq

    table = pq.read_table(res.run_dir.parquet_path)
    assert table.column_names == list(COLUMNS)
    assert table.num_rows == len(res.rows)
    assert str(table.schema.field("snr_db").type) == "double"
    names = sorted(p.name for p in res.figures)
    assert "metric_vs_snr.png" in names and "metric_vs_depth.svg" in names
    assert all(p.stat().st_size > 1000 for p in res.figures)
    assert (res.run_dir.path / "config.toml").is_file()
    meta = (res.run_dir.path / "meta.json").read_text()
    assert "torch" in meta and "aihwkit" in meta and "numpy" in meta


def test_summary_condenses_long_grids():
    levels = [float(s) for s in range(31)] + [math.inf]
    assert condensed_levels(levels) == [0, 5, 10, 15, 20, 25, 30, math.inf]
    assert condensed_levels([0.0, 10.0, math.inf]) == [0.0, 10.0, math.inf]


def test_summary_table_lists_every_model(tmp_path):
    task = toy_task()
    models = toy_models(task)
    res = _run(tmp_path, "s", toy_spec(), task, models, plots=False)
    text = summary_table(res.rows)
    assert text.count("DEQ") == 2 and text.count("FFW") == 2
    assert "0 dB" in text and "∞ dB" in text


def test_level_chunks_bound_rows():
    rows, chunks = level_chunks(list(range(31)), 360, 1000)
    assert rows == 360 and all(len(c) * rows <= 1000 for c in chunks)
    assert sum(chunks, []) == list(range(31))
    rows, chunks = level_chunks([0, 1], 5000, 1000)
    assert rows == 1000 and chunks == [[0], [1]]


def test_other_config_in_run_dir_is_refused(tmp_path):
    task = toy_task()
    models = toy_models(task)
    _run(tmp_path, "x", toy_spec(chips=1), task, models, plots=False)
    with pytest.raises(NoisyDEQError, match="different config.*chips"):
        _run(tmp_path, "x", toy_spec(chips=2), task, models, plots=False)
    # batched is not part of the identity: same results, so resuming is allowed
    res = _run(tmp_path, "x", toy_spec(chips=1, batched=False), task, models, plots=False)
    assert res.computed_cells == 0


@pytest.mark.parametrize("device", ["snr", "rram", "photonic"])
def test_device_noise_batched_equals_per_point(tmp_path, device):
    """Device path (per-layer block streams, per-sample controls, DEQ solves that skip
    their stopped rows): batched == per-point, bit for bit."""
    task = toy_task(n=40)
    models = toy_models(task)
    kw = dict(device=device, noise_site="device", snr_db="0,10,20,inf", chips=1, max_rows=400)
    a = _run(tmp_path, "b", toy_spec(**kw), task, models, plots=False).rows
    b = _run(tmp_path, "p", toy_spec(batched=False, **kw), task, models, plots=False).rows
    deq_steps = [r["mean_steps"] for r in a if r["kind"] == "deq" and r["snr_db"] > 0]
    assert min(deq_steps) < 30  # some levels stop early: the skipping path ran
    for ra, rb in zip(a, b, strict=True):
        assert ra["value"] == rb["value"]
        assert ra["mean_steps"] == rb["mean_steps"]
        assert ra["measured_snr_db"] == pytest.approx(rb["measured_snr_db"], abs=1e-9)
        if math.isfinite(ra["snr_db"]) and device == "snr":
            # measured MVM-output SNR near the target (rram/photonic are calibrated on
            # uniform inputs here: the toy task has no training inputs to calibrate on)
            assert abs(ra["measured_snr_db"] - ra["snr_db"]) < 1.5
        elif math.isfinite(ra["snr_db"]):
            assert math.isfinite(ra["measured_snr_db"])
        else:
            assert ra["measured_snr_db"] == math.inf


def test_paired_table_differences():
    from noisydeq.summary import paired_table

    def row(kind, depth, width, chip, value):
        return {"kind": kind, "depth": depth, "width": width, "params": 1, "train_snr_db": math.inf,
                "snr_db": 0.0, "chip": chip, "value": value, "diverged_frac": 0.0,
                "metric": "accuracy", "seed": 0}

    rows = [row("deq", 5, 287, 0, 0.6), row("deq", 5, 287, 1, 0.8), row("ffw", 5, 128, 0, 0.5),
            row("ffw", 5, 128, 1, 0.5)]
    text = paired_table(rows, 0.0)
    assert "| ∞ dB | 5 | 287 | 0.700 ± 0.100 | 0.500 ± 0.000 | +0.2 |" in text
