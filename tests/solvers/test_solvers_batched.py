"""Per-sample products of solvers/batched.py against einsum, on strided history views."""

from __future__ import annotations

import math

import torch

from noisydeq.config import SolverSpec
from noisydeq.solvers.batched import coefs, combine


def test_products_match_einsum_on_history_slices() -> None:
    g = torch.Generator().manual_seed(3)
    hist = torch.randn(7, 10, 33, generator=g)  # (B, L, D); the solvers read [:, :n]
    y = torch.randn(7, 33, generator=g)
    c = torch.randn(7, 4, generator=g)
    m = hist[:, :4]  # not contiguous
    torch.testing.assert_close(coefs(m, y), torch.einsum("bnd,bd->bn", m, y))
    torch.testing.assert_close(combine(c, m), torch.einsum("bn,bnd->bd", c, m))


def test_rows_never_mix() -> None:
    g = torch.Generator().manual_seed(4)
    m = torch.randn(5, 3, 8, generator=g)
    y = torch.randn(5, 8, generator=g)
    c = torch.randn(5, 3, generator=g)
    m[2, 1, 4] = math.nan
    bad = torch.zeros(5, dtype=torch.bool)
    bad[2] = True
    assert torch.isnan(coefs(m, y)[bad]).any() and torch.isfinite(coefs(m, y)[~bad]).all()
    assert torch.isnan(combine(c, m)[bad]).any() and torch.isfinite(combine(c, m)[~bad]).all()


def test_anderson_non_finite_weights_fall_back_to_the_plain_step_per_row():
    """A row whose mixing weights are not finite (an infinite point: its Gram row is inf)
    takes the plain step f(x) of its newest slot; the other rows mix as they would
    without it, bit for bit (the plain weights are made only when a row needs them)."""
    from noisydeq.solvers.anderson import Anderson

    spec = SolverSpec(name="anderson", m=3)
    g = torch.Generator().manual_seed(0)
    xs = [torch.rand(5, 4, generator=g, dtype=torch.float64) for _ in range(4)]
    bad = [x.clone() for x in xs]
    bad[2][1] = torch.inf  # row 1's third point
    active = torch.ones(5, dtype=torch.bool)
    ref, hit = Anderson(spec, xs[0]), Anderson(spec, bad[0])
    for k in range(3):
        out_ref = ref.step(k, xs[k], xs[k + 1], active)
        out = hit.step(k, bad[k], xs[k + 1], active)
    assert hit.plain is not None and ref.plain is None
    assert torch.equal(out[1], xs[3][1])  # the plain step: f of the newest point
    keep = torch.tensor([0, 2, 3, 4])
    assert torch.equal(out.index_select(0, keep), out_ref.index_select(0, keep))
