"""Intermediate-state defences of a DEQ (closer-look paper §5.2) and the white-box
robustness they are judged by.

* ``final`` — the model's solution z* (its usual prediction);
* ``early`` — the state z_n of the forward solve (:mod:`noisydeq.attacks.trajectory`),
  with n fixed or chosen once on a validation split: the n whose predictions are most
  accurate under the ready-made PGD-10 attack (ties: the larger clean accuracy, then the
  smaller n), as the paper does on its development set;
* ``ensemble`` — the per-sample mean of the states z_1 … z_N (an accumulator, O(1) memory);
* ``entropy`` — the final state (or z_n) of a solve with test-time input entropy reduction
  (regulation paper Algorithm 1, :mod:`noisydeq.regulation.entropy`).

The first three come from one recorded solve from z⁰ = 0. White-box robustness (their §6.2, 6.5):
for each defence the minimum accuracy over all attacks, then the maximum over defences —
:func:`white_box`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from noisydeq.attacks.robust import correct
from noisydeq.attacks.spec import DefenceSpec
from noisydeq.attacks.trajectory import States, predict, record_states
from noisydeq.noise import Noise
from noisydeq.regulation.entropy import entropy_reduced_solve
from noisydeq.solvers.solution import Solution


def state_logits(model: nn.Module, states: States, defence: DefenceSpec) -> Tensor:
    """Logits of one defence from a recorded solve."""
    if defence.name == "final":
        return predict(model, states.solution.z)
    if defence.name == "ensemble":
        return predict(model, states.mean())
    if defence.n is None:
        raise ValueError("early defence: n must be chosen first (select_early_state)")
    return predict(model, states.at(defence.n))


def defended_logits(model: nn.Module, x: Tensor, defences: Sequence[DefenceSpec],
                    noise: Noise | None = None) -> tuple[dict[str, Tensor], Tensor]:
    """(logits of each defence's prediction on ``x``, per-sample "solve diverged" flags).

    ``final``/``early``/``ensemble`` share one recorded solve; each ``entropy`` defence
    runs its own solve with input entropy reduction (regulation paper Algorithm 1). A
    non-DEQ has only its plain prediction (reported under every defence name asked).
    """
    out, bad, _ = defended_solve(model, x, defences, noise, residual=False)
    return out, bad


def defended_solve(model: nn.Module, x: Tensor, defences: Sequence[DefenceSpec],
                   noise: Noise | None = None, residual: bool = True
                   ) -> tuple[dict[str, Tensor], Tensor, dict[str, float]]:
    """:func:`defended_logits` and :func:`forward_stats` of the model's own forward solve
    it made (the recorded solve of ``final``/``early``/``ensemble``;
    :data:`NO_FORWARD_STATS` for a non-DEQ or when only ``entropy`` defences are asked).
    ``residual``: measure the returned state's relative residual, one more evaluation of
    the model's map after every prediction is made (its noise drawn afresh, as each
    solver step's); else it is NaN."""
    with torch.no_grad():
        if getattr(model, "kind", None) != "deq":
            logits = model(x, noise)
            return {d.label(): logits for d in defences}, torch.zeros(
                x.shape[0], dtype=torch.bool, device=x.device), dict(NO_FORWARD_STATS)
        plain = [d for d in defences if d.name != "entropy"]
        states = record_states(model, x, noise) if plain or not defences else None
        bad = (states.solution.diverged.to(x.device) if states is not None
               else torch.zeros(x.shape[0], dtype=torch.bool, device=x.device))
        out = {}
        for d in defences:
            if d.name == "entropy":
                red = entropy_reduced_solve(model, x, d.entropy, noise, keep_states=d.n is not None)
                z = red.z if d.n is None else red.states[min(d.n, len(red.states)) - 1]
                out[d.label()] = predict(model, z)
            else:
                out[d.label()] = state_logits(model, states, d)
        if states is None:
            return out, bad, dict(NO_FORWARD_STATS)
        rel = None
        if residual:
            z = states.solution.z
            fz = model.cell_fn(states.xt, noise)(z)
            rel = (fz - z).flatten(1).norm(dim=1) / fz.flatten(1).norm(dim=1)
        return out, bad, forward_stats(states.solution, rel)


#: :func:`forward_stats` of no solve (a feed-forward model; a cell written before them)
NO_FORWARD_STATS: dict[str, float] = {
    "unconverged": math.nan, "residual": math.nan, "residual_max": math.nan,
    "steps": math.nan}


def forward_stats(sol: Solution, residual: Tensor | None = None) -> dict[str, float]:
    """How a forward solve ended, over its samples: ``unconverged`` the fraction that did
    not meet the solver's stop rule (diverged included), ``steps`` the mean
    f-evaluations, ``residual`` / ``residual_max`` the median (lower middle) / largest of
    the per-sample relative residuals ``residual`` (‖f(z) − z‖/‖f(z)‖ at the state
    returned; a non-finite one counts as inf; NaN when not given)."""
    out = {"unconverged": float((~sol.converged).double().mean()),
           "residual": math.nan, "residual_max": math.nan,
           "steps": float(sol.steps.double().mean())}
    if residual is not None and residual.numel() > 0:
        r = residual.detach().double()
        r = torch.where(torch.isfinite(r), r, torch.full_like(r, math.inf))
        out["residual"] = float(r.median())  # the lower middle value for an even count
        out["residual_max"] = float(r.max())
    return out


def defended_correct(model: nn.Module, x: Tensor, y: Tensor, defences: Sequence[DefenceSpec],
                     noise: Noise | None = None) -> dict[str, Tensor]:
    """Per-sample correctness (bool) of each defence's prediction on ``x``.

    A sample whose solve diverged (or whose logits are not finite) counts as wrong
    (:func:`noisydeq.attacks.robust.correct`).
    """
    logits, bad = defended_logits(model, x, defences, noise)
    return {k: correct(v, y, bad) for k, v in logits.items()}


def select_early_state(model: nn.Module, x_clean: Tensor, x_adv: Tensor, y: Tensor,
                       noise: Noise | None = None) -> tuple[int, list[dict[str, float]]]:
    """The early-exit state n (validation split, ready-made PGD-10 examples ``x_adv``).

    Returns n and the per-state record (:func:`state_record`). Both solves draw from
    ``noise`` one after the other; the attack runner judges them under one draw instead.
    """
    with torch.no_grad():
        clean = record_states(model, x_clean, noise)
        adv = record_states(model, x_adv, noise)
    record = state_record(model, clean, adv, y)
    return best_early_state(record), record


def state_record(model: nn.Module, clean: States, adv: States, y: Tensor
                 ) -> list[dict[str, float]]:
    """Per state n: ``clean`` accuracy of z_n and ``robust`` accuracy — z_n correct on the
    clean *and* on the attacked input (:mod:`noisydeq.attacks.robust`)."""
    record = []
    with torch.no_grad():
        for n in range(1, max(clean.n_max, adv.n_max) + 1):
            ok_c = correct(predict(model, clean.at(n)), y)
            ok_a = ok_c & correct(predict(model, adv.at(n)), y)
            record.append({"n": n, "clean": float(ok_c.double().mean()),
                           "robust": float(ok_a.double().mean())})
    return record


def best_early_state(record: Sequence[dict[str, float]]) -> int:
    """n of the per-state record with the best robust accuracy (ties: the larger clean
    accuracy, then the smaller n)."""
    return int(max(record, key=lambda r: (r["robust"], r["clean"], -r["n"]))["n"])


def white_box(table: Iterable[tuple[str, str, float]], lower_is_better: bool = False
              ) -> tuple[float, str, dict[str, float]]:
    """max over defences of (min over attacks of accuracy), from (defence, attack, accuracy).

    Returns (robustness, the defence achieving it, each defence's worst-case accuracy).
    ``lower_is_better`` (a regression task's attacked MSE): min over defences of (max over
    attacks); a NaN value counts as the worst.
    """
    if lower_is_better:
        def bad(v: float) -> float:
            return float("inf") if v != v else v
        w: dict[str, float] = {}
        for defence, _attack, val in table:
            w[defence] = max(bad(val), w.get(defence, float("-inf")))
        if not w:
            raise ValueError("white_box: no results")
        top = min(w, key=lambda d: w[d])
        return w[top], top, w
    worst: dict[str, float] = {}
    for defence, _attack, acc in table:
        worst[defence] = min(acc, worst.get(defence, float("inf")))
    if not worst:
        raise ValueError("white_box: no results")
    best = max(worst, key=lambda d: worst[d])
    return worst[best], best, worst
