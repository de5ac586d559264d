"""The aihwkit peer script of the peer benchmark (benchmarks/peers/aihwkit_sweep.py) runs end
to end on a tiny grid, calibrates to the target SNR, and its cached knobs reproduce it.
No timing is asserted."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from torch import nn

from tests.sweep_helpers import toy_models, toy_task

pytest.importorskip("aihwkit")


def _peer():
    from benchmarks.peers import aihwkit_sweep

    return aihwkit_sweep


def test_calibrated_layer_measures_its_target_snr() -> None:
    peer = _peer()
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    x = torch.rand(256, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for target in (5.0, 28.0):  # below and above the native total SNR (~21 dB)
        sp, sr, got, n = peer.calibrate_layer(lin, x, target, seed=3, tol_db=0.05)
        # re-measured independently: a fresh layer at those knobs, programmed and read alike
        layer = peer.analog_linear(lin, sp, sr)
        peer.program(layer, 3)
        again = peer.measured_snr(layer, lin, x, 3 + 7)
        assert again == pytest.approx(got, abs=1e-9)
        assert abs(got - target) <= 0.05 and n >= 2
        if target < 21:
            assert sp == 1.0 and sr > 1  # physical mode: reads only below native
        else:
            assert sp == sr < 1


def test_peer_runs_end_to_end_and_cached_knobs_reproduce_it(tmp_path) -> None:
    peer = _peer()
    task = toy_task(n=32)
    task.x_train = task.x_test
    models = toy_models(task, depths=(1,))
    levels = [5.0, 20.0]
    rows, knobs = peer.run(levels, 2, [1], loaded=(task, models), tol_db=0.1)
    assert len(rows) == len(models) * len(levels) * 2
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    misses = [abs(v["snr_db"] - r["snr_db"]) for r in rows for v in r["layers"].values()]
    assert all(math.isfinite(m) for m in misses) and statistics.median(misses) <= 0.1
    again, none = peer.run(levels, 2, [1], knobs_in=knobs, loaded=(task, models))
    assert none == {} and [r["accuracy"] for r in again] == [r["accuracy"] for r in rows]


def test_bad_input_is_one_line(capsys) -> None:
    peer = _peer()
    assert peer.main(["--chips", "0"]) == 2
    assert peer.main(["--snr", "abc"]) == 2
    assert peer.main(["--tol-db", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("aihwkit_sweep: error:") for line in err)


def test_accuracy_comparison_uses_chip_spread() -> None:
    from benchmarks.peers.matching import compare_accuracy

    sweep = {("m", 0.0, 0): 0.5, ("m", 0.0, 1): 0.3, ("m", 10.0, 0): 0.9, ("m", 10.0, 1): 0.9}
    peer = {("m", 0.0, 0): 0.2, ("m", 0.0, 1): 0.4, ("m", 10.0, 0): 0.95, ("m", 10.0, 1): 0.95}
    low, high = compare_accuracy(sweep, peer)
    assert low["ok"] and low["tol"] == pytest.approx(0.2)  # Δ −0.1 within the chip range
    assert not high["ok"] and high["delta"] == pytest.approx(0.05)  # beyond 0.03
    assert not compare_accuracy(sweep, {})[0]["ok"]


def test_unmatched_points_are_reported_not_judged() -> None:
    from benchmarks.peers.matching import compare_accuracy, snr_gaps

    sweep = {("m", 3.0, 0): 0.70, ("m", 20.0, 0): 0.95}
    peer = {("m", 3.0, 0): 0.80, ("m", 20.0, 0): 0.94}
    s_snr = {("m", 3.0, 0, "W"): 3.1, ("m", 3.0, 0, "head"): 3.0, ("m", 20.0, 0, "W"): 20.0}
    p_snr = {("m", 3.0, 0, "W"): 3.0, ("m", 3.0, 0, "head"): 7.2, ("m", 20.0, 0, "W"): 20.3}
    gaps = snr_gaps(s_snr, p_snr)
    assert gaps[("m", 3.0)] == pytest.approx(4.2) and gaps[("m", 20.0)] == pytest.approx(0.3)
    low, high = compare_accuracy(sweep, peer, gaps)
    assert low["ok"] is None and high["ok"] is True
    assert snr_gaps({("m", 3.0, 0, "W"): 3.0}, {})[("m", 3.0)] == math.inf
