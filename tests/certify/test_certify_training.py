"""IBP training: the ε ramp (Xu et al. 2020), κ and m warm-up schedules, and that IBP
training certifies what plain training does not."""

from __future__ import annotations

import math

import pytest
import torch

from noisydeq.certify.propagate import bounds
from noisydeq.certify.training import IBPObjective, eps_at, kappa_at, m_at
from noisydeq.config import IBPTrainSpec, TrainSpec, build
from noisydeq.errors import NoisyDEQError


def test_eps_ramp_is_zero_then_smooth_then_flat():
    spec = IBPTrainSpec(eps=0.3, warmup_epochs=2, ramp_epochs=8)
    steps = 50
    vals = [eps_at(spec, s, steps) for s in range(14 * steps)]
    assert all(v == 0.0 for v in vals[: 2 * steps])
    ramp = vals[2 * steps: 10 * steps + 1]
    assert all(b >= a for a, b in zip(ramp, ramp[1:], strict=False))  # non-decreasing
    assert vals[10 * steps] == pytest.approx(0.3) and all(v == 0.3 for v in vals[10 * steps:])
    mid = 2 * steps + int(0.25 * 8 * steps)
    # degree-4 monomial before the switch, linear after, continuous slope at the switch
    t = mid - 2 * steps
    assert vals[mid - 1] / vals[mid - 2] == pytest.approx(((t - 1) / (t - 2)) ** 4, rel=1e-9)
    left = vals[mid] - vals[mid - 1]
    right = vals[mid + 1] - vals[mid]
    assert right == pytest.approx(vals[mid + 2] - vals[mid + 1], rel=1e-9)
    assert left == pytest.approx(right, rel=0.02)


def test_kappa_and_m_follow_eps():
    spec = IBPTrainSpec(eps=0.4, kappa=0.5, m_start=0.99)
    assert kappa_at(spec, 0.0) == 1.0 and kappa_at(spec, 0.4) == 0.5
    assert kappa_at(spec, 0.2) == pytest.approx(0.75)
    assert m_at(spec, 0.1, 0.0) == pytest.approx(0.99) and m_at(spec, 0.1, 0.4) == 0.1


def test_m_warmup_sets_the_margin_buffer():
    from tests.certify.helpers import small_model

    model = small_model(warm=False).train()
    obj = IBPObjective(IBPTrainSpec(eps=0.2, warmup_epochs=0, ramp_epochs=2, m_warmup=True), 10)
    x = torch.rand(8, 16, dtype=torch.float64)
    y = torch.randint(0, 5, (8,))
    obj(model, x, y, 0, 0)
    assert float(model.cell.m_active) == pytest.approx(0.99)
    obj(model, x, y, 5, 0)
    assert float(model.cell.m_active) == pytest.approx(0.1, abs=1e-7)
    assert "cell.m_active" in model.state_dict()  # D depends on it: saved with the weights


def test_ibp_training_refuses_training_noise():
    with pytest.raises(NoisyDEQError, match="ibp"):
        build(TrainSpec, {"ibp": {"eps": 0.1}, "noise": {"site": "signal", "snr_db": 10}})


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mondeq", "ffw_relu"])
def test_ibp_training_certifies_more_than_plain_training(kind):
    """digits, width 32, 8 epochs: the IBP-trained model certifies far more at ε = 0.05
    than the same model trained on the clean loss (seeded; both runs identical otherwise)."""
    from noisydeq.models import build_model
    from noisydeq.tasks import load_task
    from noisydeq.train import train_model

    task = load_task("digits")
    cert = {}
    for ibp in (None, {"eps": 0.1, "warmup_epochs": 1, "ramp_epochs": 4}):
        torch.manual_seed(0)
        model = build_model({"kind": kind, "in_features": 64, "out_features": 10,
                             "width": 32, "depth": 1})
        res = train_model(model, task, TrainSpec(epochs=8, batch_size=64, lr=2e-3, ibp=ibp))
        assert res.test_metric > 0.8
        if ibp is not None:
            assert not math.isnan(res.history[-1]["ibp_certified"])
            assert res.history[-1]["ibp_eps"] == pytest.approx(0.1)
        m = model.double().eval()
        with torch.no_grad():
            b = bounds(m, task.x_test.double(), task.y_test, 0.05)
        cert[ibp is not None] = float(b.certified.double().mean())
    assert cert[True] > cert[False] + 0.3


def test_default_ramp_is_half_the_epochs_after_warmup():
    spec = IBPTrainSpec(eps=0.2, warmup_epochs=1)
    steps = 10
    vals = [eps_at(spec, s, steps, epochs=9) for s in range(9 * steps)]
    assert vals[steps - 1] == 0.0 and 0.0 < vals[steps + 1] < 0.2
    assert vals[5 * steps - 1] < 0.2 and vals[5 * steps] == pytest.approx(0.2)
