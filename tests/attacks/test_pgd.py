"""Our PGD against closed forms (linear softmax), against torchattacks, and its edge cases."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from noisydeq.attacks import EstimatorSpec, ifgsm, make_estimator, pgd
from noisydeq.attacks.estimators import AttackModule
from noisydeq.errors import NoisyDEQError
from tests.attacks.helpers import frozen, small_deq, small_ffw


def _linear_two_class(d: int = 20):
    torch.manual_seed(3)
    lin = frozen(nn.Linear(d, 2).double())
    x = 0.3 + 0.4 * torch.rand(8, d, dtype=torch.float64)  # away from the box edges
    y = torch.randint(0, 2, (8,))
    return lin, x, y


def _margin(lin: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = lin(x)
    return logits.gather(1, y[:, None])[:, 0] - logits.gather(1, (1 - y)[:, None])[:, 0]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_reaches_closed_form_worst_case_margin_of_linear_softmax(norm: str) -> None:
    # two classes: CE is monotone in the margin m = (w_y − w_other)·x + b_y − b_other, whose
    # minimum over the ε-ball is m − ε‖w_y − w_other‖_* (dual norm: ℓ1 for ℓ∞, ℓ2 for ℓ2)
    lin, x, y = _linear_two_class()
    # the gradient direction is constant, so ℓ∞ steps reach the optimal corner from any
    # start; ℓ2 steps from x₀ reach the optimal boundary point (from a random start the
    # orthogonal component only decays geometrically). No input box: the closed form has none.
    eps = 0.1 if norm == "linf" else 0.5
    adv = pgd(lin, x, y, eps=eps, steps=20, norm=norm, random_init=norm == "linf", box=None,
              generator=torch.Generator().manual_seed(0))
    w = lin.weight[y] - lin.weight[1 - y]
    dual = w.abs().sum(1) if norm == "linf" else w.norm(dim=1)
    expected = _margin(lin, x, y) - eps * dual
    assert torch.allclose(_margin(lin, adv, y), expected, atol=1e-4, rtol=0)
    # the perturbation stays in the ball
    d = adv - x
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert float(size.max()) <= eps + 1e-9


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_equals_torchattacks_for_the_same_start(norm: str) -> None:
    ta = pytest.importorskip("torchattacks")
    m = small_ffw()
    x, y = torch.rand(20, 64), torch.randint(0, 10, (20,))
    est = make_estimator(m, EstimatorSpec(name="backprop"))
    eps = 0.1 if norm == "linf" else 1.0
    cls = ta.PGD if norm == "linf" else ta.PGDL2
    torch.manual_seed(5)
    adv_ta = cls(AttackModule(est, m), eps=eps, alpha=eps / 4, steps=10)(x.reshape(20, 1, 8, 8), y)
    torch.manual_seed(5)  # the same random start torchattacks drew
    if norm == "linf":
        start = torch.empty(20, 1, 8, 8).uniform_(-eps, eps)
    else:
        d = torch.empty(20, 1, 8, 8).normal_()
        n = d.view(20, -1).norm(dim=1).view(20, 1, 1, 1)
        start = d * torch.zeros_like(n).uniform_(0, 1) / n * eps
    adv = pgd(est, x, y, eps=eps, alpha=eps / 4, steps=10, norm=norm, start=start.reshape(20, 64))
    if norm == "linf":  # the same arithmetic: identical iterates
        assert torch.equal(adv, adv_ta.reshape(20, 64))
    else:
        assert torch.allclose(adv, adv_ta.reshape(20, 64), atol=1e-6, rtol=0)
    acc = float((m(adv).argmax(1) == y).double().mean())
    assert acc < float((m(x).argmax(1) == y).double().mean())


@pytest.mark.parametrize("kind", ["ffw", "deq"])
def test_eps_zero_leaves_inputs_and_accuracy_unchanged(kind: str) -> None:
    m = small_ffw() if kind == "ffw" else small_deq(in_features=64, classes=10, dtype=torch.float32)
    x, y = torch.rand(16, 64), torch.randint(0, 10, (16,))
    est = make_estimator(m, EstimatorSpec(name="backprop" if kind == "ffw" else "exact"))
    adv = pgd(est, x, y, eps=0.0, steps=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(adv, x)
    with torch.no_grad():
        assert torch.equal(m(adv).argmax(1), m(x).argmax(1))


def test_restarts_keep_a_fooling_iterate_and_ifgsm_has_no_random_start() -> None:
    m = small_ffw()
    x, y = torch.rand(32, 64), torch.randint(0, 10, (32,))
    one = pgd(m, x, y, eps=0.03, steps=3, generator=torch.Generator().manual_seed(0))
    many = pgd(m, x, y, eps=0.03, steps=3, restarts=4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        wrong_one = m(one).argmax(1) != y
        wrong_many = m(many).argmax(1) != y
    assert int(wrong_many.sum()) >= int(wrong_one.sum())
    a = ifgsm(m, x, y, eps=0.05, steps=5)
    b = ifgsm(m, x, y, eps=0.05, steps=5)
    assert torch.equal(a, b)  # deterministic: no random start
    assert float((a - x).abs().max()) <= 0.05 + 1e-7


def test_bad_arguments_and_a_model_without_gradient_are_one_line_errors() -> None:
    m = small_ffw()
    x, y = torch.rand(4, 64), torch.randint(0, 10, (4,))
    with pytest.raises(NoisyDEQError, match="eps"):
        pgd(m, x, y, eps=-0.1)
    with pytest.raises(NoisyDEQError, match="steps"):
        pgd(m, x, y, eps=0.1, steps=0)

    def detached(z):
        return m(z).detach()

    with pytest.raises(NoisyDEQError, match="no gradient"):
        pgd(detached, x, y, eps=0.1, steps=2)


@pytest.mark.parametrize("soft", [False, True])
def test_input_grad_is_loss_and_grads_gradient_bit_for_bit(soft: bool) -> None:
    """PGD's step gradient (``reduction="sum"``) == ∇ of the summed per-sample loss, the
    arithmetic PGD used before, to the bit: hard labels and TRADES' soft targets, an FFW
    and a DEQ through the phantom estimator, one draw and an EOT of a noisy model."""
    from noisydeq.attacks.pgd import input_grad, loss_and_grad
    from noisydeq.config import NoiseSpec
    from noisydeq.noise import Noise, NoiseStream

    torch.manual_seed(0)
    x = torch.rand(13, 6)
    y = torch.randint(0, 3, (13,))
    if soft:
        y = torch.softmax(torch.randn(13, 3), dim=-1)
    ffw, deq = small_ffw(in_features=6, classes=3), small_deq(in_features=6).float()
    for model, eot in ((ffw, 1), (make_estimator(deq, EstimatorSpec(name="phantom")), 1)):
        assert torch.equal(input_grad(model, x, y, eot), loss_and_grad(model, x, y, eot)[1])

    def noisy() -> object:  # the same draws for both: a fresh stream per call
        noise = Noise(NoiseSpec(site="signal", snr_db=10.0), NoiseStream.from_seed(4))
        return lambda v: ffw(v, noise)

    assert torch.equal(input_grad(noisy(), x, y, 3), loss_and_grad(noisy(), x, y, 3)[1])
