"""I-FGSM and ℓ∞ PGD as the LyaDEQ paper runs them (Chu et al. 2024, Eq. 9-10).

* I-FGSM (Kurakin et al. 2018): x₀ = x, x_{i+1} = Clip_{x,ε}(x_i + α·sign(∇ₓL(x_i, y))).
* PGD (Madry et al. 2018): the same iteration from x₀ = x + U[−ε, ε] (ℓ∞ ball).

Both clip every iterate to the ε-ball around x and to the pixel box ([0, 1]). L is the
cross-entropy of the model's logits and ∇ₓL comes from the model's own backward pass (for a
DEQ the gradient method it was built with, e.g. the implicit gradient), so a deterministic
digital model needs no expectation over transformations. The paper's settings:
α = 1/255 and n = ⌊min(255ε + 4, 1.25·255ε)⌋ steps (:func:`paper_steps`; torchattacks'
BIM uses the same count when given ``steps=0``).

The signatures match ``noisydeq.attacks.ifgsm`` / ``pgd`` of the attack package (model,
x, y, keyword ε, steps, α, box, generator), so a caller can swap one for the other.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

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
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xr)
        if not logits.requires_grad:
            raise NoisyDEQError("attack: the model gives no gradient with respect to its input")
        per = F.cross_entropy(logits, y, reduction="none")
        (grad,) = torch.autograd.grad(per.sum(), xr)
    return per.detach(), grad


def _clip(adv: Tensor, x: Tensor, eps: float, box: tuple[float, float] | None) -> Tensor:
    adv = torch.max(torch.min(adv, x + eps), x - eps)
    return adv if box is None else adv.clamp(box[0], box[1])


def _iterate(model: Model, x: Tensor, y: Tensor, adv: Tensor, eps: float, steps: int,
             alpha: float, box: tuple[float, float] | None) -> Tensor:
    if steps < 1:
        raise NoisyDEQError(f"steps: must be a positive integer, got {steps}")
    if not alpha > 0:
        raise NoisyDEQError(f"alpha: must be > 0, got {alpha}")
    for _ in range(steps):
        _, g = input_gradient(model, adv, y)
        adv = _clip(adv + alpha * g.sign(), x, eps, box).detach()
    return adv


def ifgsm(model: Model, x: Tensor, y: Tensor, *, eps: float, steps: int | None = None,
          alpha: float = 1.0 / 255.0, box: tuple[float, float] | None = (0.0, 1.0)) -> Tensor:
    """I-FGSM adversarial examples (Eq. 9); ``steps`` defaults to :func:`paper_steps`."""
    eps = check_eps(eps)
    x = x.detach()
    if eps == 0.0:
        return x.clone()
    n = paper_steps(eps) if steps is None else steps
    return _iterate(model, x, y, x.clone(), eps, n, alpha, box)


def pgd(model: Model, x: Tensor, y: Tensor, *, eps: float, steps: int | None = None,
        alpha: float = 1.0 / 255.0, box: tuple[float, float] | None = (0.0, 1.0),
        random_init: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """ℓ∞ PGD adversarial examples (Eq. 10) from x + U[−ε, ε] (drawn from ``generator``)."""
    eps = check_eps(eps)
    x = x.detach()
    if eps == 0.0:
        return x.clone()
    n = paper_steps(eps) if steps is None else steps
    start = x.clone()
    if random_init:
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        start = _clip(x + (2.0 * u - 1.0) * eps, x, eps, box)
    return _iterate(model, x, y, start, eps, n, alpha, box)
