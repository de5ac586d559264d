"""Per-sample products with stored vectors, shared by Anderson and Broyden (App. B).

Both methods keep, per sample b, a stack M_b of n stored vectors (a (B, n, D) tensor) and
need two products per step: the coefficients M_b y_b (Anderson's Gram row, Broyden's
vᵀy) and the combination c_bᵀ M_b (Anderson's mixing, Broyden's Σ u_l c_l). Both run as
one batched GEMM with the per-sample vector as a row: (1×D)·M_bᵀ and (1×n)·M_b. Measured
on the 2-core CPU box against multiply-and-sum (a (B, n, D) temporary, then a reduction)
and against bmm with the vector as a column, 2 threads, µs per call:

=================  ==============  ================  ===============
(B, n, D)          coefs row bmm   coefs mul-sum     combine bmm / mul-sum
=================  ==============  ================  ===============
64, 5, 100         7               13                6 / 10
256, 5, 467        28              53                35 / 76
256, 30, 467       147             465               137 / 503
256, 100, 467      1 873           15 715            1 441 / 16 946
3960, 5, 339       1 232           1 409             963 / 2 512
=================  ==============  ================  ===============

(bmm with the vector as a column, M_b y_b, was 2-5x slower than either.) Rows never mix:
a NaN in one sample stays in that sample's outputs.
"""

from __future__ import annotations

from torch import Tensor


def coefs(m: Tensor, y: Tensor) -> Tensor:
    """(B, n) with entries m_bl · y_b, for m (B, n, D) and y (B, D)."""
    return (y.unsqueeze(1) @ m.transpose(1, 2)).squeeze(1)


def combine(c: Tensor, m: Tensor) -> Tensor:
    """(B, D) = Σ_l c_bl m_bl, for c (B, n) and m (B, n, D)."""
    return (c.unsqueeze(1) @ m).squeeze(1)
