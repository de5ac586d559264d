"""Sweep engine: batched = per-point, metric conventions, measured SNR, table and plots."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from noisydeq.errors import NoisyDEQError
from noisydeq.models.base import ModelOutput
from noisydeq.noise import stacked_chunks
from noisydeq.results import COLUMNS, read_csv
from noisydeq.summary import condensed_levels, summary_table
from noisydeq.sweep import SweepModel, level_chunks, run_sweep, sample_batches
from tests.sweep_helpers import toy_models, toy_spec, toy_task


def _run(tmp_path, name, spec, task, models, **kw):
    return run_sweep(spec, tmp_path / name, task=task, models=models, progress=False, **kw)


#: (max_rows, batched) settings that split the 53-sample toy test set differently: all levels
#: in one forward; one level per forward in test batches of 16 (+ a merged tail); max_rows
#: below the 16-row floor; per-point in 64- and 16-row batches; two levels per forward
BATCHINGS = [(1000, True), (20, True), (5, True), (64, False), (17, False), (150, True)]


@pytest.mark.parametrize("kind,site", [("classification", "signal"), ("regression", "signal"),
                                       ("classification", "state"), ("regression", "input")])
def test_rows_are_identical_whatever_the_batching(tmp_path, kind, site):
    """Counter-based noise keyed by test-sample index: batched == per-point, and every
    max_rows (test batches, level chunks) gives the same table, byte for byte."""
    task = toy_task(kind, n=53)
    models = toy_models(task)
    tables = [
        _run(tmp_path, f"{kind}{site}{i}", toy_spec(max_rows=m, batched=b, noise_site=site),
             task, models, plots=False).rows
        for i, (m, b) in enumerate(BATCHINGS)
    ]
    assert len(tables[0]) == len(models) * 2 * 4
    for rows in tables[1:]:
        assert rows == tables[0]
    assert len({r["value"] for r in tables[0]}) > 1  # the noise did something


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


def _sample_index(x: torch.Tensor, x_test: torch.Tensor) -> torch.Tensor:
    """Each row's test-sample index (a forward stacks levels and pads blocks with copies)."""
    return (x[:, None, :] == x_test[None]).all(-1).float().argmax(1)


class _HalfDiverging(nn.Module):
    """Predicts the label exactly, but returns NaN logits for odd-indexed samples."""

    kind = "ffw"

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n_classes: int) -> None:
        super().__init__()
        self.x, self.y, self.k = x, y, n_classes

    def forward(self, x, noise=None, *, return_solution=False):
        i = _sample_index(x, self.x)
        logits = nn.functional.one_hot(self.y[i], self.k).float()
        logits[i % 2 == 1] = float("nan")
        return ModelOutput(logits=logits, z=logits, solution=None)


def test_diverged_samples_count_as_wrong_and_are_reported(tmp_path):
    task = toy_task(n=40)
    model = _HalfDiverging(task.x_test, task.y_test, 4)
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
            i = _sample_index(x, task.x_test)
            out = target[i] + 0.5
            out[i % 4 == 0] = float("inf")
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
    assert all(p.stat().st_size > 1000 for p in res.figures if p.suffix in (".png", ".svg"))
    assert "metric_vs_snr.csv" in names  # the points behind the figure
    assert all(p.read_text().startswith("kind,depth,width,params,train_snr_db,snr_db,mean")
               for p in res.figures if p.suffix == ".csv")
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


def test_fmt_db_styles():
    """One SNR text for ids and keys, tables and ticks, legends and messages (cache keys hold
    the key style)."""
    from noisydeq.summary import fmt_db

    for v, key, table, legend, message in [
            (10.0, "10", "10", "10 dB", "10.00 dB"), (2.5, "2.5", "2.5", "2.5 dB", "2.50 dB"),
            (-3.25, "-3.25", "-3.25", "-3.25 dB", "-3.25 dB"),
            (1e-5, "1e-05", "1e-05", "1e-05 dB", "0.00 dB"),
            (math.inf, "inf", "∞", "∞", "inf dB"), (-math.inf, "inf", "∞", "∞", "-inf dB"),
            (math.nan, "nan", "nan", "nan dB", "undefined")]:
        assert (fmt_db(v), fmt_db(v, "table"), fmt_db(v, "legend"),
                fmt_db(v, "message")) == (key, table, legend, message)


def test_level_chunks_bound_rows():
    rows, chunks = level_chunks(list(range(31)), 360, 1000)
    assert rows == 360 and all(len(c) * 368 <= 1000 for c in chunks)  # blocks of 16k rows
    assert sum(chunks, []) == list(range(31))
    rows, chunks = level_chunks([0, 1], 5000, 1000)
    assert rows == 992 and chunks == [[0], [1]]  # test batches start at multiples of 16
    assert level_chunks([0, 1], 5000, 3)[0] == 16  # at least 16 samples per forward
    assert sample_batches(53, 16) == [(0, 16), (16, 32), (32, 53)]  # a tail < 16 is merged
    # the cut the in-network calibration's stacked forwards share (blocks not padded there)
    assert stacked_chunks(range(5), 360, 1000) == [[0, 1], [2, 3], [4]]
    assert stacked_chunks([0, 1], 5000, 1000) == [[0], [1]]  # at least one level each
    assert stacked_chunks([0, 1], 0, 3) == [[0, 1]]  # blocks of no rows: all in one


def test_other_config_in_run_dir_is_refused(tmp_path):
    task = toy_task()
    models = toy_models(task)
    _run(tmp_path, "x", toy_spec(chips=1), task, models, plots=False)
    with pytest.raises(NoisyDEQError, match="different config.*noise_site"):
        _run(tmp_path, "x", toy_spec(chips=1, noise_site="state"), task, models, plots=False)
    # batched is not part of the identity: same results, so resuming is allowed
    res = _run(tmp_path, "x", toy_spec(chips=1, batched=False), task, models, plots=False)
    assert res.computed_cells == 0
    # neither is max_rows (other chunks: served from the cells held, the table the same)
    again = _run(tmp_path, "x", toy_spec(chips=1, max_rows=200), task, models, plots=False)
    assert again.computed_cells == 0 and again.rows == res.rows


@pytest.mark.parametrize("device", ["snr", "rram", "photonic"])
def test_device_noise_is_identical_whatever_the_batching(tmp_path, device):
    """Device path (per-layer block streams, per-sample controls, DEQ solves that skip
    their stopped rows, the per-sample SNR meter): batched == per-point and every
    max_rows give the same table, byte for byte."""
    task = toy_task(n=40)
    models = toy_models(task)
    kw = dict(device=device, noise_site="device", snr_db="0,10,20,inf", chips=1)
    a = _run(tmp_path, "b", toy_spec(max_rows=400, **kw), task, models, plots=False).rows
    for i, (m, batched) in enumerate([(400, False), (20, True), (17, False)]):
        other = _run(tmp_path, f"p{i}", toy_spec(max_rows=m, batched=batched, **kw), task,
                     models, plots=False).rows
        assert other == a
    deq_steps = [r["mean_steps"] for r in a if r["kind"] == "deq" and r["snr_db"] > 0]
    assert min(deq_steps) < 30  # some levels stop early: the skipping path ran
    for ra in a:
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
    # one chip of one seed: the mean alone, not a spread of "± 0.000" that was never measured
    text = paired_table([r for r in rows if r["chip"] == 0], 0.0)
    assert "| ∞ dB | 5 | 287 | 0.600 | 0.500 | +0.1 |" in text, text
