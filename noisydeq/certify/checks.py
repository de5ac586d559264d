"""Which models have interval certificates, and why the others do not (one line each).

* Explicit networks (``ffw_relu``, the tanh ``ffw``) — always: IBP through each layer.
* ``mondeq`` with ``ibp`` / ``lben`` — always: I − |W| ⪰ m·I by construction (Theorem 3.1 /
  3.3), so the interval equilibrium exists, is unique and bounds z* (Prop. 3.2).
* ``mondeq`` with ``mon`` (W = (1 − m)I − AᵀA + B − Bᵀ) — only if I − |W| happens to be PD
  (checked: λ_min(I − (|W| + |W|ᵀ)/2) > 0); monotonicity of I − W alone does not make the
  interval iteration converge (Lemma 3.4, Example 3.6, Fig. 2 right).
* the tanh ``deq`` — never: its W is unconstrained and its cell is not a ReLU; the message
  states which of the properties fail, with the numbers.
"""

from __future__ import annotations

import torch
from torch import nn

from noisydeq.errors import NoisyDEQError


def _lmin_sym(a: torch.Tensor) -> float:
    return float(torch.linalg.eigvalsh((a + a.T) / 2).min())


def monotone_margins(w: torch.Tensor) -> tuple[float, float]:
    """(λ_min(I − (W + Wᵀ)/2), λ_min(I − (|W| + |W|ᵀ)/2)) of a dense W, in float64."""
    w = w.detach().double()
    eye = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
    return _lmin_sym(eye - w), _lmin_sym(eye - w.abs())


def check_certifiable(model: nn.Module) -> str:
    """The model's kind when certify supports it; otherwise a :class:`NoisyDEQError` naming
    the property that fails."""
    kind = getattr(model, "kind", None)
    if kind in ("ffw_relu", "ffw"):
        return kind
    if kind == "mondeq":
        cell = model.cell
        if cell.param in ("ibp", "lben"):
            return kind
        if cell.conv:
            raise NoisyDEQError(
                "certify: this monDEQ (param 'mon', convolutional) is monotone (I − W ⪰ "
                f"{float(cell.m_active):g}·I) but I − |W| cannot be checked for a convolution, and "
                "without it the interval fixed point need not exist (Lemma 3.4); "
                "train with monotone.param 'ibp' or 'lben'"
            )
        mono, ibp = monotone_margins(cell.weight_matrix())
        if ibp <= 0:
            raise NoisyDEQError(
                f"certify: this monDEQ (param 'mon') is monotone (λ_min(I − (W+Wᵀ)/2) = "
                f"{mono:.3g}) but I − |W| is not positive definite (λ_min(I − (|W|+|W|ᵀ)/2) "
                f"= {ibp:.3g} ≤ 0): the interval fixed point (Eq. 3.3) need not exist "
                "(Lemma 3.4, Fig. 2 right); train with monotone.param 'ibp' or 'lben'"
            )
        return kind
    if kind == "deq":
        w = getattr(getattr(model, "cell", None), "W", None)
        if isinstance(w, nn.Linear):
            mono, ibp = monotone_margins(w.weight)
            fails = []
            if mono <= 0:
                fails.append(f"monotonicity I − W ≻ 0 (λ_min = {mono:.3g})")
            if ibp <= 0:
                fails.append(f"I − |W| ≻ 0 (λ_min = {ibp:.3g})")
            fails.append("a ReLU cell (it is tanh)")
            raise NoisyDEQError(
                "certify: model kind 'deq' is not a monotone ReLU DEQ — it fails "
                + "; ".join(fails)
                + " — so its interval fixed point is not guaranteed (Theorem 3.1); "
                "certify 'mondeq' or explicit ('ffw', 'ffw_relu') models"
            )
        raise NoisyDEQError(
            "certify: model kind 'deq' (convolutional tanh cell, unconstrained W) is not a "
            "monotone ReLU DEQ (Theorem 3.1); certify 'mondeq' or explicit models"
        )
    raise NoisyDEQError(
        f"certify: unsupported model {type(model).__name__} (kind={kind!r}); supported: "
        "mondeq, ffw_relu, ffw"
    )
