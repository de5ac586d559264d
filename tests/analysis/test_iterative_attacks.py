"""I-FGSM and PGD of the LyaDEQ paper (Eq. 9-10): step count, closed-form iterates on linear
models, the ε-ball and pixel box, seeded random starts, DEQ gradients, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from noisydeq.analysis.iterative_attacks import ifgsm, input_gradient, paper_steps, pgd
from noisydeq.errors import NoisyDEQError


def test_paper_step_counts():
    assert [paper_steps(k / 255) for k in (2, 4, 6, 8)] == [2, 5, 7, 10]
    assert paper_steps(16 / 255) == 20  # 255ε + 4 takes over above ε = 16/255
    assert paper_steps(32 / 255) == 36
    assert paper_steps(0.1 / 255) == 1  # never zero steps for ε > 0


def _linear(w: torch.Tensor, b: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0]).double()
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return lin


def test_ifgsm_on_a_linear_model_is_the_closed_form():
    """Two classes: ∇ₓCE = (p₁ - 1[y=1])(w₁ - w₀), so every step has the sign of
    ±(w₀ - w₁) and n·α ≥ ε walks to the ε-box corner x + ε·sign(w_other - w_y)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 30, generator=g, dtype=torch.float64)
    model = _linear(w, torch.zeros(2, dtype=torch.float64))
    x = 0.3 + 0.4 * torch.rand(8, 30, generator=g, dtype=torch.float64)  # box never binds
    y = torch.randint(0, 2, (8,), generator=g)
    eps = 8 / 255
    adv = ifgsm(model, x, y, eps=eps)  # 10 steps of 1/255
    direction = torch.where(y[:, None] == 1, w[0] - w[1], w[1] - w[0]).sign()
    assert torch.allclose(adv, x + eps * direction, atol=1e-12)
    two = ifgsm(model, x, y, eps=eps, steps=2)  # 2/255 after two steps
    assert torch.allclose(two, x + 2 / 255 * direction, atol=1e-12)


def test_iterates_stay_in_the_ball_and_the_box():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(20, 16), nn.Tanh(), nn.Linear(16, 5)).double()
    x = torch.rand(32, 20, dtype=torch.float64)
    x[:, :5] = 0.0
    x[:, 5:10] = 1.0
    y = torch.randint(0, 5, (32,))
    for attack in (ifgsm, pgd):
        adv = attack(model, x, y, eps=6 / 255, steps=12, alpha=2 / 255)
        assert (adv - x).abs().max() <= 6 / 255 + 1e-12
        assert adv.min() >= 0.0 and adv.max() <= 1.0
        loss0, _ = input_gradient(model, x, y)
        loss1, _ = input_gradient(model, adv, y)
        assert loss1.mean() > loss0.mean()
        assert torch.equal(attack(model, x, y, eps=0.0), x)


def test_pgd_random_start_is_seeded():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    x = torch.rand(16, 10, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))

    def run(seed):
        return pgd(model, x, y, eps=4 / 255, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))
    assert not torch.equal(run(3), ifgsm(model, x, y, eps=4 / 255))


def test_attacks_use_the_deq_gradient_and_hurt_a_trained_lyadeq():
    from noisydeq.config import TrainSpec
    from noisydeq.models import build_model
    from noisydeq.tasks import load_task
    from noisydeq.train import train_model

    torch.manual_seed(3)
    task = load_task("digits")
    model = build_model({"kind": "lyadeq", "in_features": 64, "out_features": 10,
                         "width": 16, "lyapunov": {"variant": "lyapunov", "icnn_hidden": [8]}})
    train_model(model, task, TrainSpec.preset("quick", "lyadeq", epochs=3, lr=1e-2))
    model.eval()
    x, y = task.x_test[:100], task.y_test[:100]
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).double().mean()
    adv = pgd(model, x, y, eps=16 / 255, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        attacked = (model(adv).argmax(1) == y).double().mean()
    assert clean > 0.5 and attacked < clean - 0.1


def test_against_torchattacks_bim():
    """Same iterates as torchattacks' BIM (I-FGSM), when that library is installed."""
    torchattacks = pytest.importorskip("torchattacks")
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 4)).eval()
    x = torch.rand(20, 12)
    y = torch.randint(0, 4, (20,))
    ref = torchattacks.BIM(model, eps=6 / 255, alpha=1 / 255, steps=0)(x, y)
    assert torch.allclose(ifgsm(model, x, y, eps=6 / 255), ref, atol=1e-6)


@pytest.mark.parametrize(("kw", "message"), [
    ({"eps": -0.1}, "eps: must be a number in"),
    ({"eps": 1.5}, "eps: must be a number in"),
    ({"eps": 0.1, "steps": 0}, "steps: must be a positive integer"),
    ({"eps": 0.1, "alpha": 0.0}, "alpha: must be > 0"),
])
def test_bad_input(kw, message):
    model = nn.Linear(4, 2)
    with pytest.raises(NoisyDEQError, match=message):
        pgd(model, torch.rand(2, 4), torch.tensor([0, 1]), **kw)
    with pytest.raises(NoisyDEQError, match="no gradient"):
        ifgsm(lambda t: torch.zeros(t.shape[0], 2), torch.rand(2, 4), torch.tensor([0, 1]),
              eps=0.1)
