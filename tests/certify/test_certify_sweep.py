"""The certified-robustness kinds in the sweep engine: a family of mondeq / ffw_relu models
is trained and swept on a device like the DEQ / FFW families; the checkpoints feed
``noisydeq certify`` through the sweep's run directory."""

from __future__ import annotations

import pytest

from noisydeq.config import SweepSpec, build
from noisydeq.sweep import run_sweep


@pytest.mark.slow
def test_mondeq_family_sweeps_on_rram(tmp_path, monkeypatch):
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    spec = build(SweepSpec, {
        "task": "digits", "depths": [1], "kinds": ["mondeq", "ffw_relu"], "hidden": 16,
        "epochs": 1, "device": "rram", "snr_db": [10.0, "inf"], "chips": 1,
        "max_test_samples": 64, "monotone": {"param": "lben", "m": 0.2}})
    res = run_sweep(spec, tmp_path / "run", progress=False, jobs=1)
    kinds = {r["kind"] for r in res.rows}
    assert kinds == {"mondeq", "ffw_relu"}
    by = {(r["kind"], r["snr_db"]): r for r in res.rows}
    assert by[("mondeq", float("inf"))]["value"] > 0.3
    # under dynamic device noise the tight default stop rule is not met: the solver runs
    # to its cap and the last iterate is scored (a noisy sweep wants a mean_rel test solver)
    assert by[("mondeq", 10.0)]["value"] > 0.3
    assert by[("mondeq", 10.0)]["mean_steps"] <= 100
    assert by[("ffw_relu", 10.0)]["measured_snr_db"] == pytest.approx(10.0, abs=1.5)

    from noisydeq.analysis.family import load_family
    from noisydeq.certify.checks import check_certifiable

    members = load_family(tmp_path / "run", check=check_certifiable)
    assert sorted(m.kind for m in members) == ["ffw_relu", "mondeq"]
    assert next(m for m in members if m.kind == "mondeq").model.cell.param == "lben"
