"""Attacks on the cells beyond Eq. 57 (issue 22): the multiscale DEQ is attacked like any
classifier (per-position tasks: tests/attacks/test_per_position.py)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from noisydeq.attacks import EstimatorSpec, make_estimator, parse_estimator
from noisydeq.attacks.pgd import pgd
from noisydeq.config import SolverSpec
from noisydeq.models import build_model
from noisydeq.models.wnconv import WeightNorm
from tests.attacks.helpers import frozen


def small_mdeq():
    """A 2-scale MDEQ on 6×6 images, gains shrunk to a contraction, solved to 1e-11."""
    torch.manual_seed(0)
    solver = SolverSpec(name="broyden", max_iter=200, tol=1e-11, stop="abs", window=1)
    m = build_model(dict(cell="mdeq", in_features=36, out_features=3, width=4, scales=2,
                         in_shape=[1, 6, 6]), solver=solver, test_solver=solver).double()
    with torch.no_grad():
        for mod in m.cell.modules():
            if isinstance(mod, WeightNorm):
                mod.g.mul_(0.4)
    return frozen(m)


def _loss(est, x, y):
    return F.cross_entropy(est(x), y, reduction="sum")


def test_mdeq_input_gradients_match_finite_differences_and_pgd_raises_the_loss():
    m = small_mdeq()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 36, dtype=torch.float64, generator=g)
    y = torch.tensor([0, 1, 2])
    exact = make_estimator(m, EstimatorSpec(name="exact"))
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_loss(exact, xr, y), xr)
    # the implicit input gradient against central differences of the solved loss (float64)
    h, entries, fd = 1e-6, ((0, 0), (1, 17), (2, 35), (0, 20), (1, 5)), []
    with torch.no_grad():
        for i, j in entries:
            up, down = x.clone(), x.clone()
            up[i, j] += h
            down[i, j] -= h
            fd.append((float(_loss(m, up, y)) - float(_loss(m, down, y))) / (2 * h))
    got = torch.tensor([float(grad[i, j]) for i, j in entries], dtype=torch.float64)
    want = torch.tensor(fd, dtype=torch.float64)
    # (the exact estimator's backward solve stops at rel 1e-6: errors of that order)
    assert float((got - want).abs().max()) < 1e-5 * float(want.abs().max()), (got, want)
    # the adjoint estimator (Eq. 11) points the same way once the solve has converged
    xa = x.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(_loss(make_estimator(m, parse_estimator("adjoint")), xa, y), xa)
    assert float(F.cosine_similarity(ga.flatten(), grad.flatten(), dim=0)) > 0.99
    adv = pgd(exact, x, y, eps=0.1, steps=5, generator=torch.Generator().manual_seed(0))
    assert float((adv - x).abs().max()) <= 0.1 + 1e-12 and float(adv.min()) >= 0.0
    with torch.no_grad():
        assert float(_loss(m, adv, y)) > float(_loss(m, x, y))
