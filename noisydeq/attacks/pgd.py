"""Projected gradient descent (Madry et al. 2018) and I-FGSM (Kurakin et al. 2017), with
random starts, restarts and expectation over the model's noise (EOT, Athalye et al. 2018).

One step, for the cross-entropy loss L of the attacked model's logits:

    x ← Π_{B_ε(x₀) ∩ [0,1]} ( x + α · dir( (1/E) Σ_{e=1..E} ∇_x L(model_e(x), y) ) )

with dir = sign (ℓ∞) or g/‖g‖₂ (ℓ2) and E = ``eot`` draws of the model's own dynamic noise
(every call of a noisy model draws fresh noise). I-FGSM is the same iteration from x₀
without a random start and with α = ε/steps. Our own implementation (torchattacks has
PGD) because the DEQ attacks need hooks torchattacks does not offer: the gradient
estimators of :mod:`noisydeq.attacks.estimators` (the model is any callable returning
logits whose autograd graph is the estimator's), warm-started solves across steps, EOT and
seeded random starts (a counter-based stream or a generator). On the same model and start
it takes torchattacks' iterates (``tests/attacks``).

Per-position tasks (prefix sums, mazes: logits (B, K, L) or (B, K, H, W), a label per
position) are attacked with the **mean over positions of the per-position cross-entropy**
(the training loss of those tasks, per sample; :func:`sample_loss`): every step raises
the loss of all positions at once, the sign (ℓ∞) or direction (ℓ2) of its gradient being
that of the sum over positions. A restart keeps the first iterate that gets *some*
position wrong (the sample is then wrong under the tasks' all-positions metric), else the
one of highest mean loss.

Regression tasks (matrix addition: a real target per output, ``y`` a tensor of the output's
shape) are attacked with ``loss="mse"``, the **per-sample mean squared error**
mean_j (f(x)_j − y_j)² (the tasks' metric, per sample; :func:`sample_loss`): PGD ascends it
within the ε-ball. No iterate is ever "wrong" (:func:`sample_wrong`: no threshold on an MSE),
so a restart keeps the iterate of highest MSE. Their inputs are real numbers, not pixels:
the caller passes ``box=None`` (no clamp; :mod:`noisydeq.attacks.runner`). The loss is
named by the caller, never guessed from ``y``: a floating-point ``y`` of the logits' shape
is also what TRADES' inner attack passes (soft class targets, ``loss="ce"``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from noisydeq.attacks.norms import Source, clip_box, direction, project, random_start
from noisydeq.errors import NoisyDEQError
from noisydeq.specs.attack import check_norm

Model = Callable[[Tensor], Tensor]


#: the attack losses: cross-entropy to class indices or soft class targets, and a
#: regression task's mean squared error
LOSSES = ("ce", "mse")


def _check_loss(loss: str) -> None:
    if loss not in LOSSES:
        raise NoisyDEQError(f"attack: loss must be one of {', '.join(LOSSES)}, got '{loss}'")


def sample_loss(logits: Tensor, y: Tensor, loss: str = "ce") -> Tensor:
    """(B,) attack loss: the cross-entropy of each sample (``y`` class indices or soft
    targets), for a per-position task the mean over its positions of the per-position
    cross-entropy; with ``loss="mse"`` (a regression task) the sample's mean squared error
    (module docstring)."""
    _check_loss(loss)
    if loss == "mse":
        if logits.shape != y.shape:  # (B, 1) against (B,) would broadcast to (B, B)
            raise NoisyDEQError(f"attack: the model's output {tuple(logits.shape)} and the "
                                f"regression targets {tuple(y.shape)} differ in shape")
        return (logits - y).square().reshape(logits.shape[0], -1).mean(1)
    per = F.cross_entropy(logits, y, reduction="none")
    return per if per.ndim == 1 else per.reshape(per.shape[0], -1).mean(1)


def sample_wrong(logits: Tensor, y: Tensor, loss: str = "ce") -> Tensor:
    """(B,) bool: the arg-max misses the label (at some position, for a per-position task);
    never with ``loss="mse"`` (an MSE has no "wrong")."""
    _check_loss(loss)
    if loss == "mse":
        return torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    wrong = logits.argmax(1) != y
    return wrong if wrong.ndim == 1 else wrong.reshape(wrong.shape[0], -1).any(1)


def _forward(model: Model, xr: Tensor) -> Tensor:
    logits = model(xr)
    if not logits.requires_grad:
        raise NoisyDEQError(
            "attack: the model gives no gradient with respect to its input; use a "
            "query or noise attack (square, speckle, salt-pepper) or another estimator"
        )
    return logits


def loss_and_grad(model: Model, x: Tensor, y: Tensor, eot: int = 1,
                  loss: str = "ce") -> tuple[Tensor, Tensor]:
    """(per-sample loss :func:`sample_loss`, ∇_x of the summed loss), both averaged over
    ``eot`` forwards."""
    total: Tensor | None = None
    grad: Tensor | None = None
    for _ in range(eot):
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            per = sample_loss(_forward(model, xr), y, loss)
            (g,) = torch.autograd.grad(per.sum(), xr)
        # (one draw: the tensors as they are; several: summed in place, divided once)
        total = per.detach() if total is None else total.add_(per.detach())
        grad = g if grad is None else grad.add_(g)
    assert total is not None and grad is not None
    if eot > 1:
        total.div_(eot)
        grad.div_(eot)
    return total, grad


def input_grad(model: Model, x: Tensor, y: Tensor, eot: int = 1, loss: str = "ce") -> Tensor:
    """∇_x of the summed attack loss averaged over ``eot`` forwards: :func:`loss_and_grad`'s
    gradient, bit for bit, without the per-sample loss. The sum is the loss's own
    ``reduction="sum"`` (the CE backward writes −g at each target either way, g = 1 from
    the sum's backward or the scalar seed), which saves the sum and its backward node on
    each of PGD's steps (``tests/attacks`` pins the equality)."""
    grad: Tensor | None = None
    for _ in range(eot):
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = _forward(model, xr)
            total = (F.cross_entropy(logits, y, reduction="sum")
                     if loss == "ce" and logits.ndim == 2  # per-position, mse: loss_and_grad's
                     else sample_loss(logits, y, loss).sum())
            (g,) = torch.autograd.grad(total, xr)
        grad = g if grad is None else grad.add_(g)
    assert grad is not None
    return grad.div_(eot) if eot > 1 else grad


def _step(adv: Tensor, x: Tensor, grad: Tensor, alpha: float, eps: float, norm: str,
          box: tuple[float, float] | None) -> Tensor:
    """One ascent step and projection: Π_{B_ε(x) ∩ box}(adv + α·dir(grad)).

    The arithmetic is torchattacks' (x + clamp(adv' − x), then the box), so the iterates are
    the same to the bit under ℓ∞; under ℓ∞ it runs in place on the step's own new tensor
    (``grad`` is consumed): 6 elementwise passes and one allocation per step.
    """
    if norm != "linf":
        adv = adv + alpha * direction(grad, norm)
        return clip_box(x + project(adv - x, eps, norm), box).detach()
    # adv + α·sign(g): α·s is exact for s ∈ {−1, 0, 1}, so the fused add rounds the same way
    out = torch.add(adv, grad.sign_(), alpha=alpha).sub_(x).clamp_(-eps, eps).add_(x)
    return out if box is None else out.clamp_(box[0], box[1])


def pgd(
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 10,
    alpha: float | None = None,
    norm: str = "linf",
    random_init: bool = True,
    restarts: int = 1,
    eot: int = 1,
    box: tuple[float, float] | None = (0.0, 1.0),
    generator: Source = None,
    start: Tensor | None = None,
    on_restart: Callable[[], None] | None = None,
    loss: str = "ce",
) -> Tensor:
    """Adversarial examples within the ``norm`` ε-ball around ``x`` (the paper's PGD, Fig. 14).

    ``alpha`` defaults to 2.5·ε/steps. ``start``: the initial perturbation δ₀ of the first
    restart (else uniform in the ball when ``random_init``, else 0). With several
    ``restarts`` each sample keeps the first iterate that the model misclassifies, else the
    one of highest loss. ``on_restart`` is called before each restart (e.g. to forget a
    warm-start state). ε = 0 returns ``x`` itself. ``loss``: ``"ce"`` (class indices or soft
    targets) or ``"mse"`` (a regression task; module docstring).
    """
    _check_loss(loss)
    norm = check_norm(norm)  # any other name took ℓ2 steps (norms.direction / project)
    if eps < 0:
        raise NoisyDEQError(f"eps: must be >= 0, got {eps:g}")
    if steps < 1:
        raise NoisyDEQError(f"steps: must be a positive integer, got {steps}")
    x = x.detach()
    if eps == 0:
        return x.clone()
    alpha = 2.5 * eps / steps if alpha is None else alpha
    best = best_loss = fooled = x  # the restarts' record (one restart returns its iterate)
    if restarts != 1:
        best = x.clone()
        best_loss = torch.full((x.shape[0],), -torch.inf, dtype=x.dtype, device=x.device)
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for r in range(restarts):
        if on_restart is not None:
            on_restart()
        if r == 0 and start is not None:
            delta = start.to(x)
        elif random_init:
            delta = random_start(x, eps, norm, generator)
        else:
            delta = torch.zeros_like(x)
        adv = clip_box(x + project(delta, eps, norm), box)
        for _ in range(steps):
            adv = _step(adv, x, input_grad(model, adv, y, eot, loss), alpha, eps, norm, box)
        if restarts == 1:
            return adv
        with torch.no_grad():
            logits = model(adv)
            value = sample_loss(logits, y, loss)
            wrong = sample_wrong(logits, y, loss)
        take = ~fooled & (wrong | (value > best_loss))
        best = torch.where(take.reshape(-1, *([1] * (x.ndim - 1))), adv, best)
        best_loss = torch.where(take, value, best_loss)
        fooled = fooled | wrong
    return best


def ifgsm(model: Model, x: Tensor, y: Tensor, *, eps: float, steps: int = 10,
          norm: str = "linf", eot: int = 1, box: tuple[float, float] | None = (0.0, 1.0),
          alpha: float | None = None, loss: str = "ce") -> Tensor:
    """Iterative FGSM / BIM (Kurakin et al. 2017): PGD from x₀, α = ε/steps by default."""
    return pgd(model, x, y, eps=eps, steps=steps, alpha=eps / steps if alpha is None else alpha,
               norm=norm, random_init=False, restarts=1, eot=eot, box=box, loss=loss)
