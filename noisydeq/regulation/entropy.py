"""Prediction entropy and input entropy reduction along a DEQ's dynamics (Yang, Li, Pang &
Liu 2023, "Improving adversarial robustness of DEQs with explicit regulations along the
neural dynamics", §3.2; "regulation paper" below).

* Eq. 6: the prediction entropy of a state, H(z) = −Σ_j p_j log p_j with p = softmax(head(z)).
* Algorithm 1 / Eq. 7-8: at test time the input is updated along the forward solve. After
  every T_f-th solver iteration t (z[t+1] computed with input x[t]) the input takes R
  projected steps

      x_i = Π( x_{i−1} − β · sign(∇ₓ H(f(z[t+1]; x_{i−1}))) ),   Π: onto [x₀ − ε, x₀ + ε] ∩ [0, 1]

  and iteration t is redone from z[t] with the new input (line 13). The paper prints the
  step as β∇ₓH; its released code (and its ℓ∞ box) step along the gradient's sign, as
  done here. Defaults are the paper's CIFAR-10 values: β = 2/255, R = 10, T_f = 2,
  ε = 8/255 (its ℓ∞ budget).

The solve runs the model's own solver method (unroll, Anderson, Broyden, stochastic) for
exactly N iterations (N = its ``max_iter`` unless given): the paper's fixed threshold, no
stop rule. Redoing an iteration restores the method's state (Broyden's low-rank memory,
Anderson's history, the stochastic window) from before it, so with β = 0 the result is the
model's own N-step solve.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from noisydeq.errors import NoisyDEQError
from noisydeq.noise import Noise
from noisydeq.solvers.registry import SOLVERS
from noisydeq.solvers.stop import Window
from noisydeq.specs.entropy import EntropySpec


def prediction_entropy(logits: Tensor) -> Tensor:
    """H = −Σ_j p_j log p_j of softmax(logits), per sample (regulation paper Eq. 6).

    Per-position logits (B, K, L) / (B, K, H, W) (prefix sums, mazes): the softmax over the
    classes (dimension 1) at each position, and the sample's H is the mean over its
    positions of the per-position entropy.
    """
    if logits.ndim > 2:
        logp = F.log_softmax(logits, dim=1)
        return -(logp.exp() * logp).sum(dim=1).reshape(logits.shape[0], -1).mean(dim=1)
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def head_logits(model: nn.Module, z: Tensor) -> Tensor:
    """Logits of a hidden state: head(pool(z))."""
    return model.head(model.pool(z))


@dataclass
class ReducedSolve:
    """Result of :func:`entropy_reduced_solve`.

    ``z``: the final state (the solver's estimate after N iterations); ``logits`` its
    prediction; ``x``: the input after the last update; ``entropies``: H of the state
    z[t] at every iteration t = 1 … N (list of (B,) tensors: the point evaluated there,
    the final estimate last); ``states``: those states (only with ``keep_states``).
    """

    z: Tensor
    logits: Tensor
    x: Tensor
    entropies: list[Tensor] = field(default_factory=list)
    states: list[Tensor] = field(default_factory=list)


def check_dynamics(model: nn.Module, what: str) -> None:
    """One line when ``model`` has no solver dynamics (not a DEQ)."""
    if getattr(model, "kind", None) != "deq":
        kind = getattr(model, "kind", type(model).__name__)
        raise NoisyDEQError(f"{what}: needs a DEQ (solver dynamics); a {kind} model has none")


def _reduce_input(model: nn.Module, x: Tensor, z: Tensor, lo: Tensor, hi: Tensor,
                  spec: EntropySpec, noise: Noise | None) -> Tensor:
    """R projected sign steps of x on H(f(z; x)) (Eq. 8), z fixed."""
    z = z.detach()
    for _ in range(spec.r):
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            xt = model.inject(xr, noise)
            h = prediction_entropy(head_logits(model, model.cell_fn(xt, noise)(z))).sum()
            (g,) = torch.autograd.grad(h, xr)
        x = torch.minimum(torch.maximum(xr.detach() - spec.beta * g.sign(), lo), hi)
    return x


def entropy_reduced_solve(model: nn.Module, x: Tensor, spec: EntropySpec | None = None,
                          noise: Noise | None = None, *, keep_states: bool = False
                          ) -> ReducedSolve:
    """Solve the DEQ's fixed point for ``x`` with Algorithm 1's input updates (module doc).

    The model's active solver (``test_solver`` in eval mode) gives the method and N; the
    injection is recomputed (and input noise redrawn) whenever the input changes.
    """
    check_dynamics(model, "entropy reduction")
    spec = spec or EntropySpec()
    solver = model.active_solver()
    n_iter = spec.iters or solver.max_iter
    x0 = x.detach()
    lo, hi = (x0 - spec.eps).clamp(0.0, 1.0), (x0 + spec.eps).clamp(0.0, 1.0)
    cur = x0
    with torch.no_grad():
        xt = model.inject(cur, noise)
        start = model.initial_state(xt)
    shape, batch = start.shape, start.shape[0]
    f = model.cell_fn(xt, noise)

    def ff(fn, zf: Tensor) -> Tensor:
        return fn(zf.reshape(shape)).reshape(batch, -1)

    z = start.reshape(batch, -1)
    method = SOLVERS[solver.name](solver, z)
    window = Window(min(solver.window, n_iter)) if solver.name == "stochastic" else None
    active = torch.ones(batch, dtype=torch.bool, device=z.device)
    out = ReducedSolve(z=start, logits=start, x=cur)

    def record(point: Tensor) -> None:
        state = point.reshape(shape)
        with torch.no_grad():
            out.entropies.append(prediction_entropy(head_logits(model, state)))
        if keep_states:
            out.states.append(state)

    def iterate(t: int, zf: Tensor, fn, meth, win) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            fx = ff(fn, zf)
            if win is not None:
                win.push(zf, fx, fx - zf)
            return fx, meth.step(t, zf, fx, active)

    fx = z
    point = z
    for t in range(n_iter):
        if t > 0:
            record(z)  # z[t]: the point evaluated at iteration t
        intervene = (t + 1) % spec.tf == 0
        saved = copy.deepcopy((method, window)) if intervene else None
        fx, z_next = iterate(t, z, f, method, window)
        if intervene and saved is not None:
            cur = _reduce_input(model, cur, z_next.reshape(shape), lo, hi, spec, noise)
            with torch.no_grad():
                xt = model.inject(cur, noise)
            f = model.cell_fn(xt, noise)
            method, window = saved
            fx, z_next = iterate(t, z, f, method, window)
        point, z = z, z_next
    with torch.no_grad():
        final = method.estimate(n_iter - 1, point, fx, window).reshape(shape)
        logits = head_logits(model, final)
    record(final)
    out.z, out.logits, out.x = final, logits, cur
    return out


class EntropyReduced(nn.Module):
    """A DEQ whose forward runs Algorithm 1 (test-time input entropy reduction): logits of
    the final state. Gradients do not flow through the input updates (the paper evaluates
    the defence without BPDA)."""

    def __init__(self, model: nn.Module, spec: EntropySpec | None = None) -> None:
        super().__init__()
        check_dynamics(model, "entropy reduction")
        self.model = model
        self.spec = spec or EntropySpec()

    def forward(self, x: Tensor, noise: Noise | None = None) -> Tensor:
        return entropy_reduced_solve(self.model, x, self.spec, noise).logits
