"""Sweep figures name task, device, noise mode and band; DEQ and FFW keep one colour family
and line style each across figures; every figure has the CSV of its points beside it."""

from __future__ import annotations

import csv
import math

import pytest

from noisydeq import plots
from noisydeq.config import SweepSpec
from noisydeq.summary import aggregate


def _rows(depths=(1, 3, 5, 7, 9, 11, 13), chips=3, seeds=(0, 1)):
    rows = []
    for kind in ("deq", "ffw"):
        for d in depths:
            for seed in seeds:
                for chip in range(chips):
                    for snr in (0.0, 10.0, math.inf):
                        value = 0.5 + 0.03 * d * (kind == "deq") + 0.01 * chip + 0.001 * seed
                        rows.append({
                            "kind": kind, "depth": d, "width": 100 + 10 * d,
                            "params": 1000 * d + 3, "train_snr_db": math.inf,
                            "snr_db": snr, "value": value + snr / 1000 if snr < 99 else 0.9,
                            "metric": "accuracy", "diverged_frac": 0.0,
                            "converged_frac": 1.0, "chip": chip, "seed": seed,
                            "noise_site": "device",
                        })
    return rows


def test_band_note_counts_chips_and_seeds():
    assert plots.band_note(_rows(chips=3, seeds=(0, 1))) == "band: min-max over 3 chips × 2 seeds"
    assert plots.band_note(_rows(chips=3, seeds=(0,))) == "band: min-max over 3 chips"
    assert plots.band_note(_rows(chips=1, seeds=(0,))) == "one chip, one seed (no band)"


def test_member_colours_keep_a_family_per_kind():
    keys = [(k, d) for k in ("deq", "ffw") for d in (1, 3, 5)]
    colours = plots.member_colours(keys)
    for d in (1, 3, 5):
        r, _g, b, _a = colours[("deq", d)]
        assert b > r  # blues
        r, _g, b, _a = colours[("ffw", d)]
        assert r > b  # oranges
    # a darker shade for a larger member
    assert sum(colours[("deq", 5)][:3]) < sum(colours[("deq", 1)][:3])


def test_sweep_figures_have_their_points_as_csv(tmp_path):
    rows = _rows()
    spec = SweepSpec(task="digits", device="snr", snr_db=[0.0, 10.0, math.inf])
    paths = plots.plot_sweep(rows, tmp_path, spec, native_snr_db=20.0)
    names = {p.name for p in paths}
    for fig in ("metric_vs_snr", "metric_vs_depth"):
        assert {f"{fig}.png", f"{fig}.svg", f"{fig}.csv"} <= names
    agg = aggregate(rows)
    with open(tmp_path / "metric_vs_snr.csv") as fh:
        back = list(csv.DictReader(fh))
    assert len(back) == sum(len(v) for v in agg.values())
    for r in back:
        a = agg[(r["kind"], int(r["depth"]), int(r["width"]), int(r["params"]),
                 float(r["train_snr_db"]))][float(r["snr_db"])]
        assert float(r["mean"]) == pytest.approx(a.mean)
        assert float(r["band_lo"]) == pytest.approx(a.lo)
        assert float(r["band_hi"]) == pytest.approx(a.hi)
    with open(tmp_path / "metric_vs_depth.csv") as fh:
        depth_rows = list(csv.DictReader(fh))
    # one row per kind, depth and fixed SNR panel
    assert {int(r["depth"]) for r in depth_rows} == {1, 3, 5, 7, 9, 11, 13}


def test_the_title_names_task_device_and_noise_mode():
    spec = SweepSpec(task="digits", device="rram", noise_mode="dynamic")
    assert plots._mode_title(spec, "") == "digits · rram, noise mode dynamic · ReLU input"
    spec = SweepSpec(task="digits", noise_site="signal")
    assert plots._mode_title(spec, "my run") == "my run — digits · signal noise · ReLU input"
