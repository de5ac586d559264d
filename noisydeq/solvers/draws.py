"""What a solver needs from a random source: :class:`Draws` (random thresholds, probes).

The solvers take any object with ``rand`` / ``randn(shape, dtype, device)`` — in practice a
:class:`noisydeq.noise.NoiseStream`, counter-based, whose rows' numbers are functions of
their own addresses — or a ``torch.Generator``. Declared here so the solvers do not import
the noise sources.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class Draws(Protocol):
    """A batch-first source of random draws (each row's numbers its own)."""

    def rand(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """Uniform [0, 1) numbers."""
        ...

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """Standard normal numbers."""
        ...
