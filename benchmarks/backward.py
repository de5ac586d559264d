"""The ``exact`` attack gradient's IFT backward solve: fixed-point (Anderson) vs GMRES.

``python -m benchmarks.backward [--repeat R]`` on the two DEQs of the attack benchmark
(:mod:`benchmarks.attacks`: the synthetic 784-222 DEQ and the digits-trained ``quick`` DEQ,
128 inputs each, one thread):

1. **Exactness.** Per input, the relative error ‖g − g_ref‖/‖g_ref‖ of the input gradient
   of the summed cross-entropy, at the clean inputs and at the PGD-5 examples of a cold
   ``exact`` attack (ε = 0.1, α = 0.025, seed 1), for each backward method at rel 1e-6 and
   1e-3 (≤ 40 products). Reference: the same fixed point z* (the model's own forward
   solve), the model in float64, the linear system (I − J_fᵀ) u = ∂L/∂z solved densely
   (``torch.linalg.solve`` on the Jacobian built from D vector–Jacobian products) — no
   iterative solver in it. ρ: the spectral radius of J_f at z* per input.
2. **Iterations.** Backward products per PGD-10 step (batch maximum, which sets the time,
   and the mean over inputs), warm and cold, and the forward f-evaluations.
3. **Time.** PGD-10 (ε = 0.1) with both methods, warm and cold, all four interleaved in
   one process (``repeat`` rounds after one untimed): median wall time, warm / cold per
   round (median [min, max]), and each against the fixed-point cold attack.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
from torch.nn import functional as F

from benchmarks.attacks import _attack, _data, _deq, _digits_deq
from noisydeq.attacks import EstimatorSpec, make_estimator, pgd
from noisydeq.attacks.estimators import FinalState
from noisydeq.attacks.trajectory import predict
from noisydeq.solvers import gradients
from noisydeq.specs.solver import GradientSpec

METHODS = ("fixed-point", "gmres")


def _spec(method: str, tol: float = 1e-6) -> GradientSpec:
    g = GradientSpec(name="ift", backward_method=method)
    g.backward_solver = g.backward_solver.model_copy(update={"tol": tol, "traces": False})
    return g


class _Record:
    """Collects the Solution of every IFT backward solve while active."""

    def __init__(self) -> None:
        self.sols: list = []
        self._real = (gradients.solve, gradients.gmres)

    def __enter__(self) -> _Record:
        solve, gm = self._real

        def rs(*a, **k):
            s = solve(*a, **k)
            self.sols.append(s)
            return s

        def rg(*a, **k):
            s = gm(*a, **k)
            self.sols.append(s)
            return s

        gradients.solve, gradients.gmres = rs, rg
        return self

    def __exit__(self, *exc) -> None:
        gradients.solve, gradients.gmres = self._real


def reference_gradient(model, x: torch.Tensor, y: torch.Tensor):
    """(float64 input gradient by a dense solve at the model's own z*, ρ(J_f) per input)."""
    with torch.no_grad():
        z_star = model(x, None, return_solution=True).solution.z
    m64 = copy.deepcopy(model).double()
    x64 = x.double().requires_grad_(True)
    f = m64.cell_fn(m64.inject(x64, None), None)
    z_in = z_star.detach().double().requires_grad_(True)
    z = f(z_in)
    loss = F.cross_entropy(predict(m64, z), y, reduction="sum")
    (v,) = torch.autograd.grad(loss, z, retain_graph=True)
    b, d = v.shape
    jt = torch.empty(b, d, d, dtype=torch.float64)
    for i in range(d):
        e = torch.zeros(b, d, dtype=torch.float64)
        e[:, i] = 1.0
        (col,) = torch.autograd.grad(z, z_in, e, retain_graph=True)
        jt[:, :, i] = col
    u = torch.linalg.solve(torch.eye(d, dtype=torch.float64) - jt, v.unsqueeze(2)).squeeze(2)
    (gx,) = torch.autograd.grad(z, x64, u)
    return gx, torch.linalg.eigvals(jt).abs().max(dim=1).values


def _gradient(model, x, y, grad: GradientSpec):
    est = FinalState(model, None, grad, warm=False)
    xr = x.clone().requires_grad_(True)
    loss = F.cross_entropy(est(xr), y, reduction="sum")
    with _Record() as rec:
        (g,) = torch.autograd.grad(loss, xr)
    return g, rec.sols[-1]


def exactness(name: str, model, x, y) -> None:
    est = make_estimator(model, EstimatorSpec(name="exact", warm=False))
    points = {"clean": x, "PGD-5": pgd(est, x, y, eps=0.1, alpha=0.025, steps=5,
                                       generator=torch.Generator().manual_seed(1)).detach()}
    for pname, xp in points.items():
        ref, rho = reference_gradient(model, xp, y)
        print(f"{name} {pname}: ρ(J_f) ≥ 1 for {int((rho >= 1).sum())}, ≥ 0.95 for "
              f"{int((rho >= 0.95).sum())} of {len(y)}; median {float(rho.median()):.3f}")
        for method in METHODS:
            for tol in (1e-6, 1e-3):
                g, sol = _gradient(model, xp, y, _spec(method, tol))
                err = (g.double() - ref).norm(dim=1) / ref.norm(dim=1)
                cos = F.cosine_similarity(g.double(), ref, dim=1)
                print(f"  {method:11s} rel {tol:g}: products max {int(sol.steps.max())} / "
                      f"mean {float(sol.steps.float().mean()):.1f}, converged "
                      f"{int(sol.converged.sum())}/{len(y)}; rel error max {float(err.max()):.2e}"
                      f" / median {float(err.median()):.2e}; min cosine {float(cos.min()):.5f}",
                      flush=True)


def iterations(name: str, model, x, y) -> None:
    for method in METHODS:
        for warm in (False, True):
            est = FinalState(model, None, _spec(method), warm=warm)
            with _Record() as rec:
                _attack(est, x, y, 0.1)
            mx = [int(s.steps.max()) for s in rec.sols]
            mean = [round(float(s.steps.float().mean()), 1) for s in rec.sols]
            print(f"{name} {method} {'warm' if warm else 'cold'}: backward products per "
                  f"step, max {mx} (sum {sum(mx)}), mean {mean}; forward f-evals "
                  f"{est.solves}", flush=True)


def timing(name: str, model, x, y, repeat: int) -> None:
    ests = {(m, w): FinalState(model, None, _spec(m), warm=w)
            for m in METHODS for w in (True, False)}
    times: dict = {k: [] for k in ests}
    for r in range(repeat + 1):
        for k, est in ests.items():
            t0 = time.perf_counter()
            _attack(est, x, y, 0.1)
            if r:
                times[k].append(time.perf_counter() - t0)

    def pairs(a, b) -> str:
        p = sorted(u / v for u, v in zip(times[a], times[b], strict=True))
        return f"{statistics.median(p):.2f} [{p[0]:.2f}, {p[-1]:.2f}]"

    base = ("fixed-point", False)
    for m in METHODS:
        print(f"{name} {m}: cold {statistics.median(times[(m, False)]) * 1e3:.0f} ms, warm "
              f"{statistics.median(times[(m, True)]) * 1e3:.0f} ms; warm/cold "
              f"{pairs((m, True), (m, False))}; cold / fixed-point cold "
              f"{pairs((m, False), base)}; warm / fixed-point cold {pairs((m, True), base)}",
              flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.backward")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--only", choices=("exactness", "iterations", "timing"), default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    x, y = _data(128)
    digits, task = _digits_deq()
    models = [("synthetic 784-222", _deq(222), x, y),
              ("digits-trained w222", digits, task.x_test[:128], task.y_test[:128])]
    print(f"load average {os.getloadavg()[0]:.1f} at start, 1 thread", flush=True)
    for part in ("exactness", "iterations", "timing"):
        if args.only not in (None, part):
            continue
        for name, model, xx, yy in models:
            if part == "timing":
                timing(name, model, xx, yy, args.repeat)
            else:
                globals()[part](name, model, xx, yy)
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
