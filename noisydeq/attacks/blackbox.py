"""Black-box input corruptions of the main paper's App. D.3 (Fig. 15-17): speckle and
salt-and-pepper noise. They never query the model.

* speckle: x' = x + x·n, n ~ N(0, σ²) per pixel (multiplicative: dark pixels stay dark);
* salt-and-pepper: a fraction p of the pixels, chosen independently (each with
  probability p), is set to the box's low or high end with equal probability.

Both are clamped to the valid input box (default [0, 1]); draws come from the given
source only (a counter-based :class:`~noisydeq.noise.NoiseStream` in ``noisydeq attack``:
each sample's corruption is a function of the seed and its row), so a (seed, strength)
pair always gives the same corrupted inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from noisydeq.attacks.norms import Source, clip_box, draw
from noisydeq.errors import NoisyDEQError


def speckle(x: Tensor, sigma: float, generator: Source = None,
            box: tuple[float, float] | None = (0.0, 1.0)) -> Tensor:
    """x + x·n with n ~ N(0, σ²) elementwise, clamped to ``box``."""
    if sigma < 0:
        raise NoisyDEQError(f"speckle: sigma must be >= 0, got {sigma:g}")
    if sigma == 0:
        return x.clone()
    n = draw(generator, "randn", x.shape, x)
    return clip_box(x + x * n * sigma, box)


def salt_and_pepper(x: Tensor, fraction: float, generator: Source = None,
                    box: tuple[float, float] = (0.0, 1.0)) -> Tensor:
    """Each pixel independently with probability ``fraction`` set to box[0] or box[1] (½ each)."""
    if not 0.0 <= fraction <= 1.0:
        raise NoisyDEQError(f"salt-pepper: fraction must lie in [0, 1], got {fraction:g}")
    if fraction == 0:
        return x.clone()
    hit = draw(generator, "rand", x.shape, x) < fraction
    salt = draw(generator, "rand", x.shape, x) < 0.5
    value = torch.where(salt, torch.full_like(x, box[1]), torch.full_like(x, box[0]))
    return torch.where(hit, value, x)
