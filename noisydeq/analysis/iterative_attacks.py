"""I-FGSM and ℓ∞ PGD as the LyaDEQ paper runs them (Chu et al. 2024, Eq. 9-10).

* I-FGSM (Kurakin et al. 2018): x₀ = x, x_{i+1} = Clip_{x,ε}(x_i + α·sign(∇ₓL(x_i, y))).
* PGD (Madry et al. 2018): the same iteration from x₀ = x + U[−ε, ε] (ℓ∞ ball).

Both clip every iterate to the ε-ball around x and to the pixel box ([0, 1]). L is the
cross-entropy of the model's logits and ∇ₓL comes from the model's own backward pass (for a
DEQ the gradient method it was built with, e.g. the implicit gradient), so a deterministic
digital model needs no expectation over transformations. The paper's settings:
α = 1/255 and n = ⌊min(255ε + 4, 1.25·255ε)⌋ steps (:func:`paper_steps`; torchattacks'
BIM uses the same count when given ``steps=0``).

The iteration is the attack package's (:func:`noisydeq.attacks.pgd.pgd` / ``ifgsm``, one
step per gradient, no EOT); this module adds the paper's step count, step size and the
checks of its inputs. ``generator`` is a counter-based
:class:`~noisydeq.noise.NoiseStream` (a sample's random start depends on the seed and its
row only) or a ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor

from noisydeq.attacks.norms import Source
from noisydeq.attacks.pgd import ifgsm as _ifgsm
from noisydeq.attacks.pgd import loss_and_grad
from noisydeq.attacks.pgd import pgd as _pgd
from noisydeq.errors import NoisyDEQError

Model = Callable[[Tensor], Tensor]


def paper_steps(eps: float) -> int:
    """n = ⌊min(255ε + 4, 1.25·255ε)⌋ (at least 1): 2, 5, 7, 10 at ε = 2, 4, 6, 8 /255.

    255ε is rounded to the nearest integer when it is within 1e-9 of one, so that ε = k/255
    gives the count of k exactly despite float rounding.
    """
    check_eps(eps)
    e = 255.0 * eps
    if abs(e - round(e)) < 1e-9:
        e = float(round(e))
    return max(1, math.floor(min(e + 4.0, 1.25 * e)))


def check_eps(eps: float) -> float:
    """ε in [0, 1] (pixels are in [0, 1]); one clear error otherwise."""
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0.0 <= eps <= 1.0:
        raise NoisyDEQError(f"eps: must be a number in [0, 1], got {eps!r}")
    return float(eps)


def input_gradient(model: Model, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(per-sample cross-entropy, ∇ₓ of their sum) through the model's own backward."""
    return loss_and_grad(model, x, y)


def _settings(eps: float, steps: int | None, alpha: float) -> tuple[float, int]:
    eps = check_eps(eps)
    n = paper_steps(eps) if steps is None and eps > 0 else (steps or 1)
    if steps is not None and (isinstance(steps, bool) or steps < 1):
        raise NoisyDEQError(f"steps: must be a positive integer, got {steps}")
    if not alpha > 0:
        raise NoisyDEQError(f"alpha: must be > 0, got {alpha}")
    return eps, n


def ifgsm(model: Model, x: Tensor, y: Tensor, *, eps: float, steps: int | None = None,
          alpha: float = 1.0 / 255.0, box: tuple[float, float] | None = (0.0, 1.0)) -> Tensor:
    """I-FGSM adversarial examples (Eq. 9); ``steps`` defaults to :func:`paper_steps`."""
    eps, n = _settings(eps, steps, alpha)
    return _ifgsm(model, x, y, eps=eps, steps=n, alpha=alpha, box=box)


def pgd(model: Model, x: Tensor, y: Tensor, *, eps: float, steps: int | None = None,
        alpha: float = 1.0 / 255.0, box: tuple[float, float] | None = (0.0, 1.0),
        random_init: bool = True, generator: Source = None) -> Tensor:
    """ℓ∞ PGD adversarial examples (Eq. 10) from x + U[−ε, ε] (drawn from ``generator``)."""
    eps, n = _settings(eps, steps, alpha)
    return _pgd(model, x, y, eps=eps, steps=n, alpha=alpha, norm="linf",
                random_init=random_init, restarts=1, box=box, generator=generator)
