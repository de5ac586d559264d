"""Parameter-matched DEQ widths for FFW depths (paper §4.1, App. E.1, Tables 1-2).

An FFW with ``depth`` hidden layers of ``hidden`` units holds depth·h(h+1) hidden-layer
parameters (each layer W_m: h×h weights + h biases, Eq. 57); a DEQ of width d holds d(d+1).
``matched_width`` solves d(d+1) = depth·h(h+1) and rounds to the nearest integer.

Paper list (App. E.1) for depths 1, 3, …, 13 with h = 128: 128, 223, 288, 340, 386, 427, 467.
This formula gives 128, 222, 287, 339, 385, 426, 463 — every value within 0.9 % of the
paper's (largest gap 463 vs 467 at depth 13). The paper states the FFW biases were ignored,
i.e. d = h·√depth; that gives 128, 222, 286, 339, 384, 425, 462 (461.5 at depth 13, 1.1 %
below 467), so it reproduces the printed list less well than counting weights and biases.
Neither formula reproduces the list exactly; we keep the one that is within 1 % everywhere
and always report the actual parameter counts next to the widths.
"""

from __future__ import annotations

import math

from noisydeq.errors import NoisyDEQError

PAPER_DEPTHS = (1, 3, 5, 7, 9, 11, 13)
PAPER_WIDTHS = (128, 223, 288, 340, 386, 427, 467)


def matched_width(depth: int, hidden: int = 128, kernel_area: int = 1) -> int:
    """DEQ width d with d(d+1) = depth · hidden(hidden+1) hidden-layer parameters (App. E.1).

    For convolutional cells (k×k kernels, ``kernel_area`` = k²) the count per layer is
    k²·c² + c, and d solves k²·d² + d = depth · (k²·h² + h).
    """
    for name, value in (("depth", depth), ("hidden", hidden), ("kernel_area", kernel_area)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise NoisyDEQError(f"{name}: must be a positive integer, got {value!r}")
    a = float(kernel_area)
    target = depth * (a * hidden * hidden + hidden)
    d = (-1.0 + math.sqrt(1.0 + 4.0 * a * target)) / (2.0 * a)
    return max(1, int(round(d)))


def ffw_hidden_parameter_count(depth: int, hidden: int = 128, include_bias: bool = True) -> int:
    """Hidden-layer parameters of an FFW: depth · (h² + h) (or depth · h² without biases)."""
    return depth * (hidden * hidden + (hidden if include_bias else 0))


def deq_hidden_parameter_count(width: int, include_bias: bool = True) -> int:
    """Hidden-layer parameters of a DEQ cell: d² + d (or d² without the bias)."""
    return width * width + (width if include_bias else 0)
