"""Gradients of the monotone DEQ and of the IBP loss (through the interval equilibrium)
against central finite differences, in float64."""

from __future__ import annotations

import pytest
import torch

from noisydeq.certify.propagate import bounds
from noisydeq.config import GradientSpec, SolverSpec
from tests.certify.helpers import small_model

TIGHT = SolverSpec(name="anderson", max_iter=2000, tol=1e-13, stop="abs", window=1,
                   traces=False)
IFT = GradientSpec(name="ift", backward_solver=SolverSpec(
    name="anderson", max_iter=2000, tol=1e-13, stop="abs", window=1))


def _prepared(param, cell, batch_norm):
    model = small_model(param=param, cell=cell, width=3 if cell == "conv" else 10,
                        batch_norm=batch_norm, warm=False)
    model.solver = TIGHT
    model.test_solver = TIGHT
    model.gradient = IFT
    return model.train()


def _directional(model, loss_fn, h=1e-6):
    """(autograd, finite-difference) directional derivative along a random direction."""
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(11)
    dirs = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    model.zero_grad()
    loss_fn().backward()
    auto = sum(float((p.grad * d).sum()) for p, d in zip(params, dirs, strict=True)
               if p.grad is not None)
    vals = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, d in zip(params, dirs, strict=True):
                p.add_(sign * h * d)
        # evaluated as in training (grad enabled: the model's own tight solver; without
        # grad a certificate's interval solve and its a-posteriori widening would be used)
        vals.append(float(loss_fn().detach()))
        with torch.no_grad():
            for p, d in zip(params, dirs, strict=True):
                p.sub_(sign * h * d)
    return auto, (vals[0] - vals[1]) / (2 * h)


@pytest.mark.parametrize("param,cell,bn", [
    ("ibp", "mlp", True), ("lben", "mlp", False), ("mon", "mlp", False), ("ibp", "conv", False),
])
def test_clean_gradient_matches_finite_differences(param, cell, bn):
    model = _prepared(param, cell, bn)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 16, generator=g, dtype=torch.float64)
    w = torch.randn(6, 5, generator=g, dtype=torch.float64)
    auto, fd = _directional(model, lambda: (model(x) * w).sum())
    assert auto == pytest.approx(fd, rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("param,bn", [("ibp", True), ("lben", False)])
def test_ibp_loss_gradient_matches_finite_differences(param, bn):
    """The worst-case loss flows through the interval equilibrium (implicit gradient of the
    stacked fixed point), the injection's interval and the elided margins."""
    model = _prepared(param, "mlp", bn)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(6, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=g)

    def loss():
        b = bounds(model, x, y, 0.05)
        return torch.nn.functional.cross_entropy(b.worst_logits(), y)

    auto, fd = _directional(model, loss)
    assert auto == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_relu_ffw_ibp_loss_gradient_matches_finite_differences():
    model = small_model("ffw_relu", depth=2, warm=False).train()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(6, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=g)

    def loss():
        b = bounds(model, x, y, 0.05)
        return torch.nn.functional.cross_entropy(b.worst_logits(), y) + b.logits.square().mean()

    auto, fd = _directional(model, loss)
    assert auto == pytest.approx(fd, rel=1e-6, abs=1e-8)
