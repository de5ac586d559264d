"""Cached 0-dim constants (noisydeq.scalars) give the values Python floats give, bit for bit."""

from __future__ import annotations

import math

import pytest
import torch

from noisydeq.scalars import const

VALUES = [0.1, 1.0 / 3.0, 2.0**-32 * 2.0 * math.pi, 16.03, -43.853, 1e-30, 3e38, 127.0,
          2.0 * math.log(2.0**31 + 1.0), 1e-4]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_const_operands_equal_python_floats_bit_for_bit(dtype):
    g = torch.Generator().manual_seed(0)
    # magnitudes over many binades, zeros of both signs, a non-multiple-of-the-vector length
    x = torch.randn(1003, generator=g, dtype=torch.float64).mul(
        torch.logspace(-20, 20, 1003, dtype=torch.float64)).to(dtype)
    x[:2] = torch.tensor([0.0, -0.0])
    for v in VALUES:
        c = const(v, x)
        assert c.dtype == dtype and c.ndim == 0
        pairs = [
            (x * v, x * c), (x + v, x + c), (x - v, x - c), (x / v, x / c),
            (v - x, c - x), (v / x, x.reciprocal() * c),  # float / tensor: reciprocal · float
            (x.clone().mul_(v), x.clone().mul_(c)), (x.clone().div_(v), x.clone().div_(c)),
            (x.clone().add_(v), x.clone().add_(c)),
            (torch.rsub(x, v, alpha=2.0), torch.rsub(x, c, alpha=2.0)),
            (x > v, x > c), (x <= v, x <= c), (x == v, x == c),
        ]
        for want, got in pairs:
            assert got.dtype == want.dtype
            # same bits: equal values, and the same sign of zero (1/±0 = ±inf)
            assert torch.equal(want, got), v
            if want.is_floating_point():
                zero = want == 0
                assert torch.equal(torch.signbit(want[zero]), torch.signbit(got[zero])), v


def test_const_is_cached_per_value_dtype_and_device_and_keeps_signed_zeros():
    x32, x64 = torch.zeros(3), torch.zeros(3, dtype=torch.float64)
    assert const(0.5, x32) is const(0.5, x32)
    assert const(0.5, x64).dtype == torch.float64
    assert torch.signbit(const(-0.0, x32)) and not torch.signbit(const(0.0, x32))
    assert math.isnan(float(const(math.nan, x32)))
    with pytest.raises(TypeError):
        const(1.0, torch.zeros(2, dtype=torch.int64))
