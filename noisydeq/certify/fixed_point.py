"""The interval equilibrium of a monotone DEQ (Wei & Kolter 2022, Eq. 3.3 / 3.6).

Given bounds v̲ ≤ v ≤ v̄ on the injection, the bounds on z* = relu(W z* + v) are the fixed
point of

    [ȳ; y̲] = relu(Ŵ [ȳ; y̲] + [v̄; v̲]),   Ŵ = [[W₊, W₋], [W₋, W₊]]                 (3.3)

solved here by forward–backward splitting (Eq. A.1) with any method of the shared solver
(``anderson`` by default) on the stacked (B, 2, …) state. With a device envelope
(|W_chip − W| ≤ Δ) the upper row uses W + Δ and the lower row W − Δ:
Ŵ_Δ = [[(W+Δ)₊, (W+Δ)₋], [(W−Δ)₋, (W−Δ)₊]], valid because states are ReLU outputs (≥ 0);
a bounded read error ±E is added to both rows.

Soundness does not rest on the solver's tolerance. Let F be the map above, Ŷ the solver's
answer, Ŷ' = F(Ŷ) and r = Ŷ' − Ŷ. If sym(Ŵ) ⪯ (1 − μ)I then, ReLU being firmly
non-expansive, ‖Ŷ' − Y*‖₂ ≤ ‖Ŵ r‖₂ / μ (with e = Ŷ' − Y*: ‖e‖² ≤ ⟨e, Ŵ(e − r)⟩ ≤
(1 − μ)‖e‖² + ‖e‖‖Ŵr‖). The returned bounds are Ŷ' widened by that radius, so they contain
the exact interval equilibrium whatever residual the solve stopped at. μ is the margin of
:func:`interval_margin`: m for the ``ibp``/``lben`` forms (Theorem 3.1 with Lemma 3.4, see
:mod:`noisydeq.models.mondeq`), 1 − λ_max(sym Ŵ_Δ) computed exactly for dense cells, and
m − 2‖D^{-1/2}ΔD^{-1/2}‖₂ (a bound: |Ŵ_Δ| ≤ [[A, B], [B, A]] with A + B = |W| + 2Δ_W) for
convolutions. μ ≤ 0 means the envelope is too wide for the bounds to include it.

A state-dependent read error (|E| ≤ a·max|x|, x = D^{-1/2}y the crossbar input) is
handled by a bound B on max|x|: the equilibrium with E = a·B is computed and B raised to
the max it implies until it holds; since the interval equilibrium moves by at most
√2‖D^{-1/2}a‖₂ΔB/μ in ℓ₂, no equilibrium beyond B exists once that slope L < 1 (else: the
envelope is refused).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from noisydeq.certify.envelope_types import LayerEnvelope
from noisydeq.certify.interval import Interval
from noisydeq.errors import NoisyDEQError
from noisydeq.models.splitting import forward_backward
from noisydeq.solvers import Solution, solve
from noisydeq.solvers.gradients import attach_gradient
from noisydeq.specs.solver import SolverSpec

#: the interval solve of a certificate: Anderson on forward–backward, tight relative stop
CERT_SOLVER = SolverSpec(name="anderson", max_iter=300, tol=1e-7, stop="rel", window=1,
                         traces=False)
#: outer iterations of the dynamic-error bound B before giving up
MAX_OUTER = 100


@dataclass
class IntervalEquilibrium:
    """Bounds on z* (original coordinates) and how they were found.

    ``y``: the stacked (B, 2, …) interval state in the cell's coordinates, with the gradient
    attached when grad is enabled (training); ``enclosure`` (B,): the ℓ₂ radius added a
    posteriori (0 when not enclosed); ``margin``: μ; ``input_bound``: B of the dynamic read
    error (None without one).
    """

    z: Interval
    y: Tensor
    solution: Solution
    margin: float
    enclosure: Tensor
    input_bound: Tensor | None = None


def _lin(conv: bool, pad: int):
    if conv:
        return lambda x, w: F.conv2d(x, w, padding=pad)
    return F.linear


class IntervalOperator:
    """Ŵ (or Ŵ_Δ) of a cell in its y-coordinates, as a map on stacked (B, 2, …) states."""

    def __init__(self, cell, d: Tensor | None, delta: Tensor | None = None) -> None:
        self.cell = cell
        self.d = d
        if cell.param == "mon":
            if delta is not None:
                raise NoisyDEQError(
                    "certify: device envelopes need the 'ibp' or 'lben' parameterisation "
                    "(the 'mon' weight is not one crossbar)"
                )
            w = cell.ops().dense()
            self.up_p = self.lo_p = w.clamp(min=0)
            self.up_n = self.lo_n = w.clamp(max=0)
            self.lin = F.linear
            self.scaled = False
            return
        k = cell.M.weight
        ku = k if delta is None else k + delta
        kl = k if delta is None else k - delta
        self.up_p, self.up_n = ku.clamp(min=0), ku.clamp(max=0)
        self.lo_p, self.lo_n = kl.clamp(min=0), kl.clamp(max=0)
        self.lin = _lin(cell.conv, cell.kernel // 2)
        self.scaled = True

    def __call__(self, y: Tensor) -> Tensor:
        hi, lo = y[:, 0], y[:, 1]
        if self.scaled:
            hi, lo = self.d * hi, self.d * lo
        up = self.lin(hi, self.up_p) + self.lin(lo, self.up_n)
        dn = self.lin(hi, self.lo_n) + self.lin(lo, self.lo_p)
        if self.scaled:
            up, dn = self.d * up, self.d * dn
        return torch.stack((up, dn), dim=1)


def _sym_lmax(a: Tensor) -> float:
    return float(torch.linalg.eigvalsh((a + a.T) / 2).max())


ENVELOPE_ADVICE = "use a smaller k or coverage, a model with a larger m, or a better device"
# a measured chip's error is what it is: no k or coverage to lower
CHIP_ADVICE = ("a measured chip's error has no k or coverage to lower: use a model with a "
               "larger m (noisydeq train --monotone m=...), another chip or a better device")


def interval_margin(cell, delta: Tensor | None = None, shape=None,
                    advice: str = ENVELOPE_ADVICE) -> float:
    """μ with sym(Ŵ_Δ) ⪯ (1 − μ)I (module docstring); raises when μ ≤ 0 (the interval
    fixed point of the envelope need not exist), with ``advice`` on what to change."""
    if not cell.conv:
        with torch.no_grad():
            ops = cell.ops()
            w = ops.dense().double()
            if delta is None:
                mu = 1.0 - _sym_lmax(w.abs())
            else:
                d = ops.d.double()
                dw = d[:, None] * delta.double() * d[None, :]
                up, lo = w + dw, w - dw
                big = torch.cat([
                    torch.cat([up.clamp(min=0), up.clamp(max=0)], 1),
                    torch.cat([lo.clamp(max=0), lo.clamp(min=0)], 1)], 0)
                mu = 1.0 - _sym_lmax(big)
    else:
        if cell.param == "mon":
            raise NoisyDEQError(
                "certify: a convolutional 'mon' cell has no computable |W|; the interval "
                "fixed point need not exist (Lemma 3.4) — use param 'ibp' or 'lben'"
            )
        mu = float(cell.m_active)
        if delta is not None:
            mu -= 2.0 * _conv_delta_norm(cell, delta, shape)
    if not mu > 0:
        raise NoisyDEQError(
            f"envelope: too wide for the interval fixed point: I − Ŵ_Δ has margin {mu:.3g} "
            f"(must be > 0; Theorem 3.1, Lemma 3.4); {advice}"
        )
    return mu


def _conv_delta_norm(cell, delta: Tensor, shape) -> float:
    """Bound √(‖Δ_W‖₁‖Δ_W‖∞) on ‖D^{-1/2}ΔD^{-1/2}‖₂ for a convolutional Δ."""
    with torch.no_grad():
        d = cell.diag_inv_sqrt(shape)[None]
        pad = cell.kernel // 2
        rows = d * F.conv2d(d, delta, padding=pad)
        cols = d * F.conv_transpose2d(d, delta, padding=pad)
        return math.sqrt(float(rows.max()) * float(cols.max()))


def chip_margin(cell, delta: Tensor | None = None, shape=None) -> float:
    """A lower bound on min over the envelope's chips of λ_min(I − (W' + W'ᵀ)/2):
    1 − λ_max(sym W) − ‖Δ_W‖₂. Positive: every chip is itself a monotone DEQ with a unique
    equilibrium. (The bounds contain every equilibrium of every chip either way.)"""
    with torch.no_grad():
        if cell.conv:
            base = float(cell.m_active)  # λ_max(sym W) ≤ λ_max(sym |W|) ≤ 1 − m
            return base - (0.0 if delta is None else _conv_delta_norm(cell, delta, shape))
        ops = cell.ops()
        w = ops.dense().double()
        out = 1.0 - _sym_lmax(w)
        if delta is not None and ops.d is not None:
            d = ops.d.double()
            out -= float(torch.linalg.matrix_norm(d[:, None] * delta.double() * d[None, :],
                                                  ord=2))
        return out


def check_dynamic_slope(cell, dyn: Tensor, margin: float, shape=None) -> float:
    """L = √2·max(D^{-1/2})·‖D^{-1/2}a‖₂/μ of a read error |E| ≤ a·max|x| on the cell's
    crossbar; raises unless L < 1 (module docstring)."""
    with torch.no_grad():
        d = cell.diag_inv_sqrt(shape)
        a = dyn.reshape((-1,) + (1,) * (d.ndim - 1)) * d
        slope = math.sqrt(2.0) * float(d.max()) * float(a.norm()) / margin
    if not slope < 1.0:
        raise NoisyDEQError(
            f"envelope: the read-error bound grows faster than the interval fixed point can "
            f"absorb it (slope {slope:.3g} ≥ 1): the bounds cannot include this dynamic "
            "noise; certify the static envelope only"
        )
    return slope


def _stack_map(op: IntervalOperator, vt: Interval, err: Tensor | None, alpha: float):
    inj = torch.stack((vt.hi, vt.lo), dim=1)
    if err is not None:
        inj = inj + torch.stack((err, -err), dim=1)
    return forward_backward(lambda y: op(y) + inj, alpha)


def _enclose(op: IntervalOperator, fmap, y: Tensor, margin: float) -> tuple[Tensor, Tensor]:
    """(F(Ŷ) widened by ‖Ŵ r‖₂/μ per sample, the radius)."""
    y2 = fmap(y)
    r = y2 - y
    rad = op(r).reshape(r.shape[0], -1).norm(dim=1) / margin
    rad = torch.where(torch.isfinite(rad), rad, torch.full_like(rad, math.inf))
    rb = rad.reshape((-1,) + (1,) * (y.ndim - 1))
    hi = y2[:, 0] + rb[:, 0]
    lo = torch.relu(y2[:, 1] - rb[:, 0])
    return torch.stack((hi, lo), dim=1), rad


def interval_equilibrium(
    model,
    v: Interval,
    *,
    layer_env: LayerEnvelope | None = None,
    margin: float | None = None,
    solver: SolverSpec | None = None,
    enclose: bool = True,
) -> IntervalEquilibrium:
    """Bounds on z* = relu(W z* + v) for every v in ``v`` (and every chip in ``layer_env``).

    ``margin``: μ (computed by :func:`interval_margin` when None). ``solver``: default
    :data:`CERT_SOLVER` under no_grad, the model's active solver when training. With grad
    enabled the stacked solution carries the model's gradient method (IBP training) and no
    enclosure is added.
    """
    cell = model.cell
    alpha = model.monotone.alpha
    grad = torch.is_grad_enabled()
    shape = tuple(v.lo.shape[1:]) if cell.conv else None
    d = None if cell.param == "mon" else cell.diag_inv_sqrt(shape)
    delta = None if layer_env is None else layer_env.delta
    op = IntervalOperator(cell, d, delta)
    if margin is None:
        margin = interval_margin(cell, delta, shape)
    vt = Interval(cell.to_y(v.lo), cell.to_y(v.hi))
    spec = solver if solver is not None else (model.active_solver() if grad else CERT_SOLVER)
    y0 = torch.zeros((v.lo.shape[0], 2, *v.lo.shape[1:]), dtype=v.lo.dtype, device=v.lo.device)
    dyn = None if layer_env is None else layer_env.dyn
    if dyn is not None and d is None:
        raise NoisyDEQError("certify: dynamic read errors need the 'ibp'/'lben' cell")

    def solve_at(err: Tensor | None, start: Tensor) -> tuple[Solution, object]:
        fmap = _stack_map(op, vt, err, alpha)
        return solve(fmap, start, spec), fmap

    bound = None
    err = None
    if dyn is not None:
        a = dyn.reshape((-1,) + (1,) * (len(v.lo.shape) - 2)) * d  # (units) pre-act per B
        check_dynamic_slope(cell, dyn, margin, shape)
    sol, fmap = solve_at(None, y0)
    y_star = sol.z
    if grad:
        y_att = attach_gradient(fmap, y_star.detach(), model.gradient)
        lo = cell.from_y(y_att[:, 1])
        hi = cell.from_y(y_att[:, 0])
        return IntervalEquilibrium(Interval(lo, hi), y_att, sol, margin,
                                   torch.zeros(v.lo.shape[0], device=v.lo.device))
    encl, rad = _enclose(op, fmap, y_star, margin) if enclose else (y_star, torch.zeros(
        v.lo.shape[0], device=v.lo.device))
    if dyn is not None:
        def input_max(y: Tensor) -> Tensor:
            return (d * y[:, 0]).reshape(y.shape[0], -1).amax(dim=1)

        bound = input_max(encl)
        for _ in range(MAX_OUTER):
            err = a * bound.reshape((-1,) + (1,) * (len(v.lo.shape) - 1))
            sol, fmap = solve_at(err, y_star)
            y_star = sol.z
            encl, rad = _enclose(op, fmap, y_star, margin)
            implied = input_max(encl)
            if bool((implied <= bound).all()) or not bool(torch.isfinite(implied).all()):
                break
            bound = torch.maximum(bound, implied * (1.0 + 1e-6))
        else:
            raise NoisyDEQError("envelope: the read-error bound did not settle in "
                                f"{MAX_OUTER} rounds")
    hi, lo = cell.from_y(encl[:, 0]), cell.from_y(encl[:, 1])
    return IntervalEquilibrium(Interval(lo, hi), encl, sol, margin, rad, bound)


def iteration_gaps(model, v: Interval, alpha: float, n_iter: int) -> list[float]:
    """Mean of z̄_k − z̲_k over units and samples for k = 1..n_iter of the damped iteration
    (A.1) from zero (Fig. 2 right); ``inf`` once it overflows."""
    cell = model.cell
    shape = tuple(v.lo.shape[1:]) if cell.conv else None
    d = None if cell.param == "mon" else cell.diag_inv_sqrt(shape)
    op = IntervalOperator(cell, d)
    vt = Interval(cell.to_y(v.lo), cell.to_y(v.hi))
    fmap = _stack_map(op, vt, None, alpha)
    y = torch.zeros((v.lo.shape[0], 2, *v.lo.shape[1:]), dtype=v.lo.dtype, device=v.lo.device)
    out = []
    with torch.no_grad():
        for _ in range(n_iter):
            y = fmap(y)
            gap = float((cell.from_y(y[:, 0]) - cell.from_y(y[:, 1])).mean())
            out.append(gap if math.isfinite(gap) else math.inf)
            if not math.isfinite(gap):
                y = torch.nan_to_num(y, nan=0.0, posinf=1e300)
    return out
