"""Sweeps over families of the cells beyond Eq. 57: per-position metric, conv device meter."""

import math

import pytest
import torch

from noisydeq.config import SweepSpec, build
from noisydeq.errors import NoisyDEQError
from noisydeq.sweep import run_sweep
from noisydeq.tasks import load_task
from noisydeq.tasks.base import sample_correct


@pytest.mark.slow
def test_prefix_sum_family_sweeps_on_a_device(tmp_path):
    task = load_task("prefix_sums", seed=0, n_train=256, n_test=48)
    spec = build(SweepSpec, {"task": "prefix_sums", "cell": {"name": "conv1d",
                                                             "weight_norm": False},
                             "hidden": 4, "depths": [2], "epochs": 1, "device": "rram",
                             "snr_db": "10,inf", "chips": 1})
    res = run_sweep(spec, tmp_path / "run", task=task, progress=False, plots=False, jobs=1)
    rows = {(r["kind"], r["snr_db"]): r for r in res.rows}
    assert len(rows) == 4
    for kind in ("deq", "ffw"):
        assert abs(rows[(kind, 10.0)]["measured_snr_db"] - 10.0) < 0.5  # conv layers metered
        assert math.isinf(rows[(kind, math.inf)]["measured_snr_db"])
    # the clean value is the fraction of fully correct strings of the digital model
    from noisydeq.sweep import family_models

    models = {m.kind: m for m in family_models(spec, task, progress=False)}  # cached now
    for kind, sm in models.items():
        with torch.no_grad():
            out = sm.model.eval()(task.x_test)
        want = float(sample_correct(out, task.y_test).double().mean())
        assert rows[(kind, math.inf)]["value"] == pytest.approx(want)


def test_per_position_task_needs_a_per_position_cell():
    from noisydeq.families import family_spec_for_sweep as fam
    from noisydeq.families import member_spec

    task = load_task("mazes", seed=0, n_train=4, n_test=2)
    spec = build(SweepSpec, {"task": "mazes"})
    with pytest.raises(NoisyDEQError, match="predicts a class per position"):
        member_spec(fam(spec, 0, math.inf), task, "deq", 1)
    spec = build(SweepSpec, {"task": "digits", "cell": "residual"})
    with pytest.raises(NoisyDEQError, match="one label per sample"):
        member_spec(fam(spec, 0, math.inf), load_task("digits"), "deq", 1)
    ok = build(SweepSpec, {"task": "mazes", "cell": "residual"})
    assert member_spec(fam(ok, 0, math.inf), task, "deq", 1).in_shape == [3, 9, 9]
