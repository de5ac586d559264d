"""Simultaneous adjoint: intermediate DEQ gradients from the forward solver's own inverse-
Jacobian estimate (closer-look paper §4.1, Eq. 7-11 and 17).

The forward solve iterates z_{n+1} = z_n − B_n g(z_n), g = f − id, where B_n estimates
(J_f − I)⁻¹: Broyden's low-rank B_n (their Eq. 7-8), −τI for damped unrolling, −α_n I for
the stochastic solver. Alongside, the adjoint state solves the backward fixed point
u = J_fᵀ u + ∂L/∂z (their Eq. 3) with the same estimate:

    v_n = J_f(z_n)ᵀ u_n + ∂L(z_n)/∂z − u_n                         (Eq. 9)
    u_{n+1} = u_n − β B_nᵀ v_n,   u_0 = 0                           (Eq. 10)
    [∂L/∂x]_n = (∂f(z_n; x)/∂x)ᵀ u_n                                 (Eq. 11)

The paper writes B_n v_n in its transposed-Jacobian notation; in the usual one the
residual map u ↦ (J_f − I)ᵀ u + c has Jacobian (J_f − I)ᵀ, whose inverse is ≈ B_nᵀ — the
transpose is what makes u_n → u* = (I − J_fᵀ)⁻¹ ∂L/∂z, so that Eq. 11 at convergence is the
exact implicit gradient (checked in ``tests/attacks``: cosine ≥ 0.99 with the IFT
gradient on a converged DEQ). The gradient ensemble is Σ_n [∂L/∂x]_n (Eq. 17).

As an autograd function: the forward runs the model's solver method for its ``max_iter``
steps (no early stop: the adjoint keeps improving while the states stay at the fixed
point) and returns the logits of the target state; the backward receives g = ∂L/∂logits
and runs Eq. 9-11 with ∂L(z_n)/∂z = J_head(z_n)ᵀ g, one vector-Jacobian product of the
cell per step (J_fᵀ u_n and (∂f/∂x)ᵀ u_n come from the same product). Every call of a
noisy cell draws fresh noise, in the backward as in the forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from noisydeq.attacks.trajectory import predict
from noisydeq.errors import NoisyDEQError
from noisydeq.noise import Noise
from noisydeq.solvers.batched import coefs, combine
from noisydeq.solvers.broyden import Broyden

ADJOINT_SOLVERS = ("unroll", "broyden", "stochastic")


@dataclass
class AdjointRecord:
    """The forward pass of the solver: states z_0 … z_N and what defines each B_n."""

    states: list[Tensor] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)  # B_n = −scale_n I (+ Broyden terms)
    counts: list[int] = field(default_factory=list)  # Broyden: rank-one terms in B_n
    broyden: Broyden | None = None

    def bt(self, n: int, v: Tensor) -> Tensor:
        """B_nᵀ v (flattened (B, D) vectors)."""
        if self.broyden is None:
            return -self.scale[n] * v
        c = self.counts[n]
        if c == 0:
            return -v
        b = self.broyden
        return combine(coefs(b.U[:, :c], v), b.V[:, :c]) - v


def forward_record(model: nn.Module, x: Tensor, noise: Noise | None) -> AdjointRecord:
    """Run the model's solver method for ``max_iter`` steps from z⁰ = 0, recording B_n."""
    spec = model.active_solver()
    if spec.name not in ADJOINT_SOLVERS:
        raise NoisyDEQError(
            f"estimator 'adjoint': needs a forward solver with an explicit inverse-Jacobian "
            f"estimate (allowed: {', '.join(ADJOINT_SOLVERS)}); the model solves with "
            f"'{spec.name}'"
        )
    rec = AdjointRecord()
    with torch.no_grad():
        xt = model.inject(x, noise)
        f = model.cell_fn(xt, noise)
        z = model.initial_state(xt)
        shape = z.shape
        flat = z.reshape(shape[0], -1)
        if spec.name == "broyden":  # memory = max_iter: no restart, B_n stays readable
            rec.broyden = Broyden(spec.model_copy(update={"m": spec.max_iter}), flat)
        active = torch.ones(shape[0], dtype=torch.bool, device=z.device)
        for k in range(spec.max_iter):
            rec.states.append(flat.reshape(shape))
            fx = f(flat.reshape(shape)).reshape(shape[0], -1)
            if rec.broyden is not None:
                flat = rec.broyden.step(k, flat, fx, active)
                rec.counts.append(min(rec.broyden.count, rec.broyden.L))
                rec.scale.append(1.0)
            else:
                a = spec.tau if spec.name == "unroll" else spec.alpha0 / float(k + 1) ** spec.gamma
                flat = (1.0 - a) * flat + a * fx
                rec.scale.append(a)
        rec.states.append(flat.reshape(shape))
    return rec


class _Adjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, run: SimultaneousAdjoint) -> Tensor:  # type: ignore[override]
        rec = forward_record(run.model, x.detach(), run.noise)
        ctx.run, ctx.rec = run, rec
        ctx.save_for_backward(x)
        with torch.no_grad():
            return predict(run.model, rec.states[run.target(rec)])

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return ctx.run.input_gradient(x, ctx.rec, g), None


class SimultaneousAdjoint:
    """Logits of a DEQ whose input gradient is the simultaneous-adjoint estimate.

    ``state``: the n of Eq. 11 (``None``: the last state, z_N). ``ensemble``: Σ_n of
    Eq. 11 over n = 1 … N (Eq. 17); the logits are those of z_N.
    """

    def __init__(self, model: nn.Module, noise: Noise | None = None, *, beta: float = 0.5,
                 state: int | None = None, ensemble: bool = False) -> None:
        self.model, self.noise = model, noise
        self.beta, self.state, self.ensemble = beta, state, ensemble

    def target(self, rec: AdjointRecord) -> int:
        n_last = len(rec.states) - 1
        return n_last if self.state is None or self.ensemble else min(self.state, n_last)

    def __call__(self, x: Tensor) -> Tensor:
        return _Adjoint.apply(x, self)

    def input_gradient(self, x: Tensor, rec: AdjointRecord, g: Tensor) -> Tensor:
        """Σ (or the one term at the target state) of Eq. 11, running Eq. 9-10 on ``rec``."""
        model, target = self.model, self.target(rec)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            xt = model.inject(x_in, self.noise)
            f = model.cell_fn(xt, self.noise)
            u = torch.zeros_like(rec.states[0])
            grad = torch.zeros_like(x)
            for n in range(target + 1):
                z_in = rec.states[n].detach().requires_grad_(True)
                if n > 0:  # u_0 = 0 contributes nothing
                    ju, gx = torch.autograd.grad(f(z_in), (z_in, x_in), u, retain_graph=True)
                    if self.ensemble or n == target:
                        grad = grad + gx
                else:
                    ju = torch.zeros_like(u)
                if n == target:
                    break
                (c,) = torch.autograd.grad(predict(model, z_in), z_in, g)
                v = (ju + c - u).reshape(u.shape[0], -1)
                u = u - self.beta * rec.bt(n, v).reshape(u.shape)
        return grad
