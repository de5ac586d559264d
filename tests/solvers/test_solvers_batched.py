"""Per-sample products of solvers/batched.py against einsum, on strided history views."""

from __future__ import annotations

import math

import torch

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
