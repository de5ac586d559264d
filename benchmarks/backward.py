"""The ``exact`` attack gradient's IFT backward solve: fixed-point (Anderson alone), the GMRES
fallback (Anderson, then GMRES on the inputs it left unconverged; the default) and GMRES.

``python -m benchmarks.backward [--repeat R]`` on the two DEQs of the attack benchmark
(:mod:`benchmarks.attacks`: the synthetic 784-222 DEQ and the digits-trained ``quick`` DEQ,
128 inputs each, one thread); ``--family RUN [--data-dir DIR]`` adds every DEQ of a trained
family (e.g. the mnist10k families of ``docs/robustness.md``) on its first 128 test inputs,
``--no-default`` leaves the two out:

1. **Exactness.** Per input, the relative error ‖g − g_ref‖/‖g_ref‖ of the input gradient
   of the summed cross-entropy, at the clean inputs and at the PGD-5 examples of a cold
   ``exact`` attack (ε = 0.1, α = 0.025, seed 1; Anderson alone, as when first measured),
   for each backward method at rel 1e-6 and 1e-3 (≤ 40 products; the fallback's GMRES ≤ 40
   more). Reference: the same fixed point z* (the model's own forward solve), the model in
   float64, the linear system (I − J_fᵀ) u = ∂L/∂z solved densely
   (``torch.linalg.solve`` on the Jacobian built from D vector–Jacobian products) — no
   iterative solver in it. ρ: the spectral radius of J_f at z* per input.
2. **Iterations.** Backward products per PGD-10 step (batch maximum, which sets the time,
   and the mean over inputs), warm and cold, and the forward f-evaluations.
3. **Time.** PGD-10 (ε = 0.1) with each method, warm and cold, all six interleaved in
   one process (``repeat`` rounds after one untimed): median wall and CPU time, warm / cold
   per round (median [min, max]), each against the fixed-point cold attack, and the robust
   accuracy of each attack's examples (right clean and attacked; the last round's).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
from torch.nn import functional as F

from benchmarks.attacks import _attack, _data, _deq, _digits_deq, deq_label
from noisydeq.attacks import EstimatorSpec, make_estimator, pgd
from noisydeq.attacks.estimators import FinalState
from noisydeq.attacks.trajectory import predict
from noisydeq.solvers import gradients
from noisydeq.specs.solver import GradientSpec

METHODS = ("fixed-point", "fallback", "gmres")


def _spec(method: str, tol: float = 1e-6) -> GradientSpec:
    g = GradientSpec(name="ift", backward_method=method)
    g.backward_solver = g.backward_solver.model_copy(update={"tol": tol, "traces": False})
    return g


class _Record:
    """Collects the final Solution of every IFT backward solve (after the fallback, where
    it ran) and the rows it re-solved, while active."""

    def __init__(self) -> None:
        self.sols: list = []
        self.fell: list[int] = []
        self._real = gradients._record

    def __enter__(self) -> _Record:
        real = self._real

        def rec(sol, fell):
            self.sols.append(sol)
            self.fell.append(fell)
            real(sol, fell)

        gradients._record = rec
        return self

    def __exit__(self, *exc) -> None:
        gradients._record = self._real


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
    return g, rec.sols[-1], rec.fell[-1]


def exactness(name: str, model, x, y) -> None:
    est = make_estimator(model, EstimatorSpec(name="exact", warm=False, bsolver="fixed-point"))
    points = {"clean": x, "PGD-5": pgd(est, x, y, eps=0.1, alpha=0.025, steps=5,
                                       generator=torch.Generator().manual_seed(1)).detach()}
    for pname, xp in points.items():
        ref, rho = reference_gradient(model, xp, y)
        print(f"{name} {pname}: ρ(J_f) ≥ 1 for {int((rho >= 1).sum())}, ≥ 0.95 for "
              f"{int((rho >= 0.95).sum())} of {len(y)}; median {float(rho.median()):.3f}")
        for method in METHODS:
            for tol in (1e-6, 1e-3):
                g, sol, fell = _gradient(model, xp, y, _spec(method, tol))
                err = (g.double() - ref).norm(dim=1) / ref.norm(dim=1)
                cos = F.cosine_similarity(g.double(), ref, dim=1)
                print(f"  {method:11s} rel {tol:g}: products max {int(sol.steps.max())} / "
                      f"mean {float(sol.steps.float().mean()):.1f}, converged "
                      f"{int(sol.converged.sum())}/{len(y)} ({fell} re-solved by GMRES); "
                      f"rel error max {float(err.max()):.2e} / median "
                      f"{float(err.median()):.2e}, > 1e-4 at {int((err > 1e-4).sum())}; "
                      f"min cosine {float(cos.min()):.5f}", flush=True)


def iterations(name: str, model, x, y) -> None:
    for method in METHODS:
        for warm in (False, True):
            est = FinalState(model, None, _spec(method), warm=warm)
            with _Record() as rec:
                _attack(est, x, y, 0.1)
            mx = [int(s.steps.max()) for s in rec.sols]
            mean = [round(float(s.steps.float().mean()), 1) for s in rec.sols]
            left = sum(int((~s.converged).sum()) for s in rec.sols)
            print(f"{name} {method} {'warm' if warm else 'cold'}: backward products per "
                  f"step, max {mx} (sum {sum(mx)}), mean {mean}; rows re-solved by GMRES "
                  f"per step {rec.fell}, left unconverged {left}; forward f-evals "
                  f"{est.solves}", flush=True)


def timing(name: str, model, x, y, repeat: int) -> None:
    ests = {(m, w): FinalState(model, None, _spec(m), warm=w)
            for m in METHODS for w in (True, False)}
    times: dict = {k: [] for k in ests}
    cpu: dict = {k: [] for k in ests}
    robust: dict = {}
    with torch.no_grad():
        clean_ok = model(x).argmax(1) == y
    for r in range(repeat + 1):
        for k, est in ests.items():
            t0, c0 = time.perf_counter(), time.process_time()
            adv = _attack(est, x, y, 0.1)
            if r:
                times[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
            with torch.no_grad():
                robust[k] = float((clean_ok & (model(adv).argmax(1) == y)).double().mean())

    def pairs(a, b) -> str:
        p = sorted(u / v for u, v in zip(times[a], times[b], strict=True))
        return f"{statistics.median(p):.2f} [{p[0]:.2f}, {p[-1]:.2f}]"

    def ms(t: dict, k) -> str:
        return f"{statistics.median(t[k]) * 1e3:,.0f}"

    base = ("fixed-point", False)
    for m in METHODS:
        print(f"{name} {m}: cold {ms(times, (m, False))} ms (CPU {ms(cpu, (m, False))}), "
              f"warm {ms(times, (m, True))} ms (CPU {ms(cpu, (m, True))}); warm/cold "
              f"{pairs((m, True), (m, False))}; cold / fixed-point cold "
              f"{pairs((m, False), base)}; warm / fixed-point cold {pairs((m, True), base)}; "
              f"robust accuracy warm / cold {robust[(m, True)]:.3f} / "
              f"{robust[(m, False)]:.3f}", flush=True)


def _family(family: str, data_dir: str | None, cache: str | None) -> list:
    """(name, model, x, y) for every DEQ of a trained family, its first 128 test inputs."""
    from benchmarks.attacks import _frozen
    from noisydeq.analysis.family import deq_or_ffw, load_family, load_family_task

    members = [m for m in load_family(family, data_dir=data_dir, cache_dir=cache,
                                      check=deq_or_ffw) if m.kind == "deq"]
    if not members:
        raise SystemExit(f"{family}: no DEQ in this family")
    task = load_family_task(members, data_dir)
    return [(deq_label(m.task, m.width, m.depth, m.seed), _frozen(m.model),
             task.x_test[:128], task.y_test[:128]) for m in members]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.backward")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--only", choices=("exactness", "iterations", "timing"), default=None)
    ap.add_argument("--family", default=None, help="add every DEQ of this trained family")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--no-default", action="store_true",
                    help="leave out the synthetic and digits DEQs")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    models = []
    if not args.no_default:
        x, y = _data(128)
        digits, task = _digits_deq()
        models += [("synthetic 784-222", _deq(222), x, y),
                   (deq_label("digits", digits.width), digits, task.x_test[:128],
                    task.y_test[:128])]
    if args.family:
        models += _family(args.family, args.data_dir, args.cache)
    print(f"load average {os.getloadavg()[0]:.1f} at start, 1 thread, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
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
