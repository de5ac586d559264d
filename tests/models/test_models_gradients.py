"""DEQ gradients against central finite differences of the loss (IFT, paper App. C).

Float64, width 8, W scaled to spectral norm 0.5 (contractive: tanh is 1-Lipschitz), solved
to 1e-13 so that the finite differences see the exact fixed point.
"""

import pytest
import torch
from torch import nn

from noisydeq.config import GradientSpec, SolverSpec
from noisydeq.models import DEQ

TIGHT = SolverSpec(name="unroll", max_iter=300, tol=1e-13, stop="abs", window=1)
TIGHT_BACK = SolverSpec(name="unroll", max_iter=300, tol=1e-14, stop="abs", window=1)


def make_deq(gradient: GradientSpec, seed: int = 0) -> DEQ:
    torch.manual_seed(seed)
    model = DEQ(5, 8, 3, input_act="silu", solver=TIGHT, gradient=gradient).double()
    with torch.no_grad():
        w = model.cell.W.weight
        w.mul_(0.5 / torch.linalg.matrix_norm(w, ord=2))
        model.cell.W.bias.normal_(0.0, 0.3)
        model.cell.proj.U.weight.mul_(2.0)
    return model


def data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])
    return x, y


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def finite_difference(model: nn.Module, tensor: torch.Tensor, x, y, h: float = 1e-6):
    grad = torch.zeros_like(tensor)
    flat = tensor.view(-1)
    with torch.no_grad():
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + h
            up = loss_of(model, x, y).item()
            flat[i] = old - h
            down = loss_of(model, x, y).item()
            flat[i] = old
            grad.view(-1)[i] = (up - down) / (2 * h)
    return grad


def autograd_grads(model: nn.Module, x, y):
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    loss_of(model, x, y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    grads["x"] = x.grad.clone()
    return grads


def fd_grads(model: nn.Module, x, y):
    out = {n: finite_difference(model, p.data, x, y) for n, p in model.named_parameters()}
    xx = x.clone()
    out["x"] = finite_difference(model, xx, xx, y)
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def test_ift_gradients_match_central_finite_differences():
    model = make_deq(GradientSpec(name="ift", backward_solver=TIGHT_BACK))
    x, y = data()
    got = autograd_grads(model, x, y)
    want = fd_grads(model, x, y)
    assert set(got) == {"cell.W.weight", "cell.W.bias", "cell.proj.U.weight", "head.weight",
                        "head.bias", "x"}
    for name in got:
        assert rel_err(got[name], want[name]) < 1e-6, name  # measured ~3e-9
        assert want[name].norm() > 1e-3, name  # the check is not vacuous


def test_ift_differs_from_jfb_so_the_check_can_fail():
    """JFB (one step) is a different gradient: the FD comparison above discriminates."""
    model = make_deq(GradientSpec(name="jfb"))
    x, y = data()
    got = autograd_grads(model, x, y)
    want = fd_grads(model, x, y)
    assert rel_err(got["cell.W.weight"], want["cell.W.weight"]) > 1e-2


def test_bptt_through_a_long_unroll_matches_ift():
    x, y = data()
    ift = autograd_grads(make_deq(GradientSpec(name="ift", backward_solver=TIGHT_BACK)), x, y)
    bptt = autograd_grads(make_deq(GradientSpec(name="bptt")), x, y)
    for name in ift:
        assert rel_err(bptt[name], ift[name]) < 1e-8, name


def test_phantom_gradients_approach_ift_as_steps_grow():
    x, y = data()
    ift = autograd_grads(make_deq(GradientSpec(name="ift", backward_solver=TIGHT_BACK)), x, y)
    errors = []
    for k in (1, 5, 20, 60):
        model = make_deq(GradientSpec(name="phantom", phantom_steps=k, phantom_lambda=0.5))
        g = autograd_grads(model, x, y)
        errors.append(max(rel_err(g[n], ift[n]) for n in ("cell.W.weight", "cell.proj.U.weight",
                                                           "cell.W.bias", "x")))
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[0] > 1e-2  # one damped step is a poor approximation
    assert errors[-1] < 1e-6, errors


def test_eval_mode_still_gives_input_gradients():
    """Attacks need ∂L/∂x in eval mode (torchdeq's no_grad eval breaks them)."""
    model = make_deq(GradientSpec(name="ift", backward_solver=TIGHT_BACK)).eval()
    x, y = data()
    x = x.requires_grad_(True)
    loss_of(model, x, y).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_no_grad_forward_builds_no_graph():
    model = make_deq(GradientSpec(name="ift"))
    x, _ = data()
    with torch.no_grad():
        logits = model(x)
    assert not logits.requires_grad


@pytest.mark.parametrize("name", ["ift", "phantom", "jfb", "bptt"])
def test_every_gradient_method_trains_the_cell(name):
    model = make_deq(GradientSpec(name=name))
    x, y = data()
    g = autograd_grads(model, x, y)
    assert torch.isfinite(g["cell.W.weight"]).all() and g["cell.W.weight"].abs().sum() > 0
