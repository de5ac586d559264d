"""Attacks: our PGD-10 against torchattacks' PGD on the same FFW, and a warm-started DEQ
attack against the same attack with cold solves.

* ``PGD-10 FFW``: ``noisydeq.attacks.pgd`` (ℓ∞, ε = 0.3, α = 0.1, random start) against
  ``torchattacks.PGD`` with the same parameters on the same MNIST-size FFW (784 → 3 × 128 →
  10, random init), batch 256; time per sample. Check: for the same random start both
  give the same adversarial examples (bit for bit: the same arithmetic).
* ``PGD-10 DEQ warm``: PGD-10 through the ``exact`` (IFT) and ``phantom`` estimators of an
  MNIST-size DEQ (784 → 222 units, W rescaled to spectral norm 0.9 like a Jacobian-
  regularised trained DEQ) with the test solver of the ``quick`` training preset that the
  sweep's families use (:data:`noisydeq.config.QUICK_TEST_SOLVER`: unroll, 40 steps, stop
  ``mean_rel`` 0.05, window 20), each step's solve warm-started from the previous step's
  fixed point (stopped as soon as Eq. 54 holds over the points evaluated so far) and, for
  ``exact``, each IFT backward solve from the previous step's adjoint, against the same
  attack solving every step from z⁰ = 0 (and v). ε = 0.1, α = 0.025. ``btol`` sets the
  ``exact`` estimator's IFT backward-solve tolerance (``exact:btol=…``; default rel 1e-6)
  for both attacks of the pair. Check (untimed): (a) the warm attack is not weaker than the
  cold one beyond sampling — b − c ≤ 2√(b + c) for the b inputs only the warm attack
  leaves correct and the c only the cold one does (one-sided McNemar, ≈ 2 σ); (b) with
  the model's test solver tightened to rel 1e-5 (:data:`TIGHT_SOLVER`) the two attacks'
  robust predictions agree on ≥ 95 % of the samples. Agreement at the model's own
  tolerance is reported, not required: its solves stop anywhere within mean_rel 0.05, and
  on a model with many inputs near the boundary two equally valid attacks (cold at
  tolerance 0.05 vs 0.025, or another random start) disagree on as many inputs.
* ``PGD-10 digits DEQ w=222``: the same pair on a *trained* DEQ — the digits member of the
  sweep's default family matched to FFW depth 3, ``quick`` preset (trained here, seeded, in
  a throw-away cache) — attacking its first 128 test inputs with its own test solver.
  ``python -m benchmarks.attacks --family RUN --data-dir DIR`` runs the pair on every DEQ
  of a trained family (e.g. the mnist10k families of ``docs/robustness.md``; not part of
  ``benchmarks.run``, which needs no data files), ``--digits`` adds the digits rows,
  ``--btol 1e-3`` runs the ``exact`` rows at that backward tolerance, ``--bsolver gmres``
  (or ``fixed-point,fallback,gmres``) with that backward method (unset: the default,
  ``fallback``), ``--synthetic`` adds the synthetic
  rows. ``benchmarks.run``
  has the digits ``exact`` pair at the default and at ``btol`` 1e-3.
* ``PGD-AT epoch``: one epoch of adversarial training (PGD-10 at ε = 0.1, α = 0.025, random
  start; Adam) of an FFW (64 → 3 × 128 → 10) on the digits training split, batch 64,
  through ``noisydeq.train.train_model`` (no validation hold-out, so no epoch-selection
  attack) against the same epoch written with ``torchattacks.PGD`` crafting each batch's
  examples and the same model, data order and optimiser; the loop does the same
  bookkeeping as ``train_model`` (mean loss and training accuracy per batch, the test
  accuracy once at the end). 5 interleaved pairs. Check: the epoch's mean adversarial
  training loss of both runs agrees within 10 % (the random starts differ).
"""

from __future__ import annotations

import statistics

import torch

from benchmarks.common import Row, ratio, timeit_pair
from noisydeq.attacks import EstimatorSpec, make_estimator, pgd
from noisydeq.attacks.estimators import AttackModule
from noisydeq.config import QUICK_TEST_SOLVER, SolverSpec
from noisydeq.models import DEQ, FFW

TARGET_FFW = 1.0
TARGET_WARM = 0.5
#: the forward solver of check (b): plain iteration to rel 1e-5, where warm and cold solves
#: land on the same fixed point to well within a PGD step's effect on the prediction
TIGHT_SOLVER = SolverSpec(name="unroll", max_iter=400, tol=1e-5, stop="rel", window=1,
                          traces=False)


def _spread(t_o, t_p) -> dict[str, float]:
    """Medians and the per-pair ratios (ours_i / peer_i of the interleaved runs): median,
    min, max — under a shared machine's load the pairs' spread is the honest error bar."""
    pairs = sorted(a / b for a, b in zip(t_o.times, t_p.times, strict=True))
    return {"median_ours": t_o.median, "median_peer": t_p.median,
            "ratio_pairs_median": statistics.median(pairs), "ratio_pairs_min": pairs[0],
            "ratio_pairs_max": pairs[-1], "pairs": len(pairs)}


def _frozen(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def _data(batch: int, d: int = 784, classes: int = 10):
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, d, generator=g), torch.randint(0, classes, (batch,), generator=g)


def bench_pgd_ffw(batch: int = 256, hidden: int = 128, repeat: int = 15) -> Row:
    import torchattacks

    torch.manual_seed(0)
    model = _frozen(FFW(784, hidden, 3, 10))
    x, y = _data(batch)
    est = make_estimator(model, EstimatorSpec(name="backprop"))
    module = AttackModule(est, model)
    side = (batch, 1, 28, 28)

    def ours() -> None:
        pgd(est, x, y, eps=0.3, alpha=0.1, steps=10, generator=torch.Generator().manual_seed(1))

    def peer() -> None:
        torchattacks.PGD(module, eps=0.3, alpha=0.1, steps=10)(x.reshape(side), y)

    t_o, t_p = timeit_pair(ours, peer, repeat=repeat, warmup=1)
    torch.manual_seed(5)
    adv_ta = torchattacks.PGD(module, eps=0.3, alpha=0.1, steps=10)(x.reshape(side), y)
    torch.manual_seed(5)
    start = torch.empty(side).uniform_(-0.3, 0.3).reshape(batch, -1)
    adv = pgd(est, x, y, eps=0.3, alpha=0.1, steps=10, start=start)
    diff = float((adv - adv_ta.reshape(batch, -1)).abs().max())
    sp = _spread(t_o, t_p)
    return Row(area="attacks", name=f"PGD-10 FFW 784-3x{hidden}-10 b{batch}: ours vs "
               "torchattacks (per sample)", ours=t_o.best / batch, peer=t_p.best / batch,
               ratio=ratio(t_o.best, t_p.best), target=TARGET_FFW,
               check=f"same start: max|Δ| {diff:.1e}; {_pairs(sp)}", ok=diff == 0.0,
               extra={**sp, "median_ours": t_o.median / batch,
                      "median_peer": t_p.median / batch})


def _pairs(sp: dict[str, float]) -> str:
    return (f"pairs {sp['ratio_pairs_median']:.2f} [{sp['ratio_pairs_min']:.2f}, "
            f"{sp['ratio_pairs_max']:.2f}] (n={sp['pairs']})")


def _deq(width: int) -> DEQ:
    torch.manual_seed(0)
    solver = QUICK_TEST_SOLVER.model_copy(update={"traces": False})
    m = DEQ(784, width, 10, solver=solver)
    with torch.no_grad():
        w = m.cell.W.weight
        w.mul_(0.9 / torch.linalg.matrix_norm(w.double(), ord=2).item())
    return _frozen(m)


def bench_pgd_deq_warm(estimator: str = "exact", batch: int = 128, width: int = 222,
                       repeat: int = 7, btol: float | None = None,
                       bsolver: str | None = None) -> Row:
    x, y = _data(batch)
    return _warm_cold_row(_deq(width), x, y, f"DEQ 784-{width} b{batch}", estimator, repeat,
                          btol=btol, bsolver=bsolver)


def _attack(est, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """PGD-10 at ``eps`` through ``est`` from the seeded random start, forgetting warm state."""
    est.reset()
    est.solves = 0
    return pgd(est, x, y, eps=eps, steps=10, generator=torch.Generator().manual_seed(1))


def _predict(model, adv: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(adv).argmax(1)


def _tight_agreement(model, specs: tuple[EstimatorSpec, EstimatorSpec], x: torch.Tensor,
                     y: torch.Tensor, eps: float) -> float:
    """Check (b): warm vs cold robust predictions with the test solver at rel 1e-5."""
    saved = model.test_solver
    model.test_solver = TIGHT_SOLVER
    try:
        pw, pc = (_predict(model, _attack(make_estimator(model, s), x, y, eps))
                  for s in specs)
        return float((pw == pc).double().mean())
    finally:
        model.test_solver = saved


def _warm_cold_row(model, x: torch.Tensor, y: torch.Tensor, label: str, estimator: str,
                   repeat: int, eps: float = 0.1, btol: float | None = None,
                   bsolver: str | None = None) -> Row:
    """PGD-10 at ``eps`` (α = ε/4) through ``estimator`` with warm-started solves against
    the same attack with cold solves, ``repeat`` interleaved pairs after one untimed each;
    ``btol``, ``bsolver``: the ``exact`` backward solve's tolerance and method, both."""
    specs = (EstimatorSpec(name=estimator, warm=True, btol=btol, bsolver=bsolver),
             EstimatorSpec(name=estimator, warm=False, btol=btol, bsolver=bsolver))
    warm, cold = (make_estimator(model, s) for s in specs)
    out: dict[str, torch.Tensor] = {}

    def run(est, key: str) -> None:
        out[key] = _attack(est, x, y, eps)

    t_o, t_p = timeit_pair(lambda: run(warm, "warm"), lambda: run(cold, "cold"), repeat=repeat,
                           warmup=1)
    pw, pc = _predict(model, out["warm"]), _predict(model, out["cold"])
    agree = float((pw == pc).double().mean())
    acc_w, acc_c = float((pw == y).double().mean()), float((pc == y).double().mean())
    b, c = int(((pw == y) & (pc != y)).sum()), int(((pw != y) & (pc == y)).sum())
    not_weaker = b - c <= 2.0 * (b + c) ** 0.5
    tight = _tight_agreement(model, specs, x, y, eps)
    sp = _spread(t_o, t_p)
    tag = estimator if btol is None and bsolver is None else specs[0].label()
    return Row(area="attacks", name=f"PGD-10 {label} {tag}: warm vs cold solves",
               ours=t_o.best, peer=t_p.best, ratio=ratio(t_o.best, t_p.best), target=TARGET_WARM,
               check=f"robust acc {acc_w:.3f} vs {acc_c:.3f}, only-warm/only-cold correct "
               f"{b}/{c}; predictions agree {agree:.1%} (at rel 1e-5: {tight:.1%}); "
               f"f-evals {warm.solves} vs {cold.solves}; {_pairs(sp)}",
               ok=not_weaker and tight >= 0.95,
               extra={**sp, "f_evals_warm": warm.solves, "f_evals_cold": cold.solves,
                      "robust_acc_warm": acc_w, "robust_acc_cold": acc_c, "agree": agree,
                      "agree_tight": tight, "only_warm_correct": b, "only_cold_correct": c})


def _digits_deq(depth: int = 3, seed: int = 0, hidden: int | None = None,
                epochs: int | None = None):
    """A DEQ trained on digits by the ``quick`` preset (the sweep's default family member
    matched to FFW depth ``depth``; ``hidden``/``epochs`` shrink it for a smoke run), in a
    throw-away model cache; returns (model, task)."""
    import tempfile

    from noisydeq.families import train_family
    from noisydeq.specs.base import build
    from noisydeq.specs.family import FamilySpec
    from noisydeq.tasks import load_task

    task = load_task("digits", seed=seed)
    data: dict = {"task": "digits", "depths": [depth], "kinds": ["deq"], "seed": seed}
    if hidden is not None:
        data["hidden"] = hidden
    if epochs is not None:
        data["train"] = {"epochs": epochs}
    spec = build(FamilySpec, data)
    with tempfile.TemporaryDirectory() as cache:
        family = train_family(spec, task, cache_dir=cache)
    return _frozen(family.members[0].model), task


def deq_label(task: str, width: int, depth: int = 1, seed: int | None = None) -> str:
    """A trained DEQ as the docs name it: ``mnist10k DEQ w=128 seed 0`` (``d=N`` for a DEQ of
    depth N > 1; the docs' "≙ FFW 3 layers" needs the family's FFWs, not named here)."""
    at = "" if depth == 1 else f" d={depth}"
    return f"{task} DEQ w={width}{at}" + ("" if seed is None else f" seed {seed}")


def bench_pgd_deq_warm_digits(estimator: str = "exact", batch: int = 128, repeat: int = 7,
                              btol: float | None = None, bsolver: str | None = None,
                              **shrink: int) -> Row:
    """The warm/cold pair on a trained digits DEQ (``quick`` preset) and its test inputs."""
    model, task = _digits_deq(**shrink)
    x, y = task.x_test[:batch], task.y_test[:batch]
    return _warm_cold_row(model, x, y, f"{deq_label('digits', model.width)} b{batch}",
                          estimator, repeat, btol=btol, bsolver=bsolver)


def bench_pgd_deq_warm_family(family: str, data_dir: str | None = None,
                              cache: str | None = None, estimators: tuple[str, ...] = (
                                  "exact", "phantom"), batch: int = 128,
                              repeat: int = 7, btol: float | None = None,
                              bsolver: str | None = None) -> list[Row]:
    """The warm/cold pair on every DEQ of a trained family (a ``noisydeq sweep`` run dir,
    a ``train`` dir or a checkpoint; e.g. the mnist10k families of docs/robustness.md),
    attacking its first ``batch`` test inputs with the model's own test solver."""
    from noisydeq.analysis.family import deq_or_ffw, load_family, load_family_task

    members = [m for m in load_family(family, data_dir=data_dir, cache_dir=cache,
                                      check=deq_or_ffw) if m.kind == "deq"]
    if not members:
        raise SystemExit(f"{family}: no DEQ in this family")
    task = load_family_task(members, data_dir)
    x, y = task.x_test[:batch], task.y_test[:batch]
    return [_warm_cold_row(_frozen(m.model), x, y,
                           f"{deq_label(m.task, m.width, m.depth, m.seed)} b{batch}", est,
                           repeat, btol=btol if est == "exact" else None,
                           bsolver=bsolver if est == "exact" else None)
            for m in members for est in estimators]


def bench_adversarial_epoch(hidden: int = 128, samples: int | None = None,
                            repeat: int = 5) -> Row:
    import torchattacks
    from torch.nn import functional as F

    from noisydeq.config import AdversarialSpec, TrainSpec
    from noisydeq.tasks import load_task
    from noisydeq.train import train_model

    task = load_task("digits", seed=0)
    n = len(task.x_train) if samples is None else samples
    spec = TrainSpec(epochs=1, batch_size=64, lr=1e-3, seed=0, max_train_samples=n,
                     adversarial=AdversarialSpec(eps=0.1, step=0.025, steps=10,
                                                 val_fraction=0.0))

    def model() -> FFW:
        torch.manual_seed(0)
        return FFW(64, hidden, 3, 10)

    losses: dict[str, float] = {}

    def ours() -> None:
        res = train_model(model(), task, spec, quiet=True)
        losses["ours"] = res.history[-1]["loss"]

    def peer() -> None:
        net = model().train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        flat = torch.nn.Sequential(torch.nn.Flatten(), net)
        atk = torchattacks.PGD(flat, eps=0.1, alpha=0.025, steps=10, random_start=True)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        x_all, y_all = task.x_train[:n], task.y_train[:n]
        total = correct = 0.0
        for i in range(0, n, 64):
            idx = perm[i:i + 64]
            xb = atk(x_all[idx].reshape(-1, 1, 8, 8), y_all[idx]).reshape(len(idx), -1)
            net.train()
            out = net(xb)
            loss = F.cross_entropy(out, y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            # the epoch record train_model keeps: mean loss and training accuracy
            correct += float((out.detach().argmax(1) == y_all[idx]).double().mean()) * len(idx)
        losses["peer"] = total / n
        net.eval()  # and the trained model's test accuracy, as every training run reports
        with torch.no_grad():
            float((net(task.x_test).argmax(1) == task.y_test).double().mean())

    t_o, t_p = timeit_pair(ours, peer, repeat=repeat, warmup=1)
    rel = abs(losses["ours"] - losses["peer"]) / max(losses["peer"], 1e-12)
    return Row(area="attacks", name=f"PGD-AT epoch FFW 64-3x{hidden}-10 b64 ({n} digits): "
               "ours vs torchattacks loop", ours=t_o.best, peer=t_p.best,
               ratio=ratio(t_o.best, t_p.best), target=TARGET_FFW,
               check=f"epoch loss {losses['ours']:.3f} vs {losses['peer']:.3f}; "
               f"{_pairs(_spread(t_o, t_p))}",
               ok=rel <= 0.10, extra=_spread(t_o, t_p))


def bench_attacks(quick: bool = False) -> list[Row]:
    if quick:
        return [bench_pgd_ffw(batch=16, hidden=16, repeat=1),
                bench_adversarial_epoch(hidden=16, samples=256, repeat=1),
                bench_pgd_deq_warm("exact", batch=16, width=24, repeat=1),
                bench_pgd_deq_warm("phantom", batch=16, width=24, repeat=1),
                bench_pgd_deq_warm_digits("exact", batch=16, repeat=1, depth=1, hidden=16,
                                          epochs=1)]
    return [bench_pgd_ffw(), bench_adversarial_epoch(), bench_pgd_deq_warm("exact"),
            bench_pgd_deq_warm("phantom"), bench_pgd_deq_warm_digits("exact"),
            bench_pgd_deq_warm_digits("exact", btol=1e-3), bench_pgd_deq_warm_digits("phantom")]


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.attacks --family RUN [--data-dir D] [--cache C]``: the warm/cold
    rows on a trained family's DEQs (not part of ``benchmarks.run``: it needs a trained
    family and its data); ``--digits`` adds the digits DEQ rows."""
    import argparse
    import os

    from benchmarks.common import format_table

    ap = argparse.ArgumentParser(prog="python -m benchmarks.attacks")
    ap.add_argument("--family", default=None)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--estimators", default="exact,phantom")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--digits", action="store_true")
    ap.add_argument("--btol", type=float, default=None,
                    help="exact rows: the IFT backward-solve tolerance (default rel 1e-6)")
    ap.add_argument("--bsolver", default=None, help="exact rows: the IFT backward-solve "
                    "method, fallback (default: Anderson, GMRES on its unconverged rows), "
                    "fixed-point (Anderson alone) or gmres; a comma list runs each")
    ap.add_argument("--synthetic", action="store_true",
                    help="add the synthetic 784-222 rows of benchmarks.run")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ests = tuple(e for e in args.estimators.split(",") if e)
    load = os.getloadavg()[0]
    rows: list[Row] = []
    bsolvers = [b or None for b in (args.bsolver or "").split(",")]
    for bs in bsolvers:
        # non-exact rows once (the backward method is the exact estimator's)
        est_b = ests if bs == bsolvers[0] else tuple(e for e in ests if e == "exact")
        opts = {"btol": args.btol, "bsolver": bs}
        if args.synthetic:
            rows += [bench_pgd_deq_warm(e, args.batch, repeat=args.repeat,
                                        **(opts if e == "exact" else {})) for e in est_b]
        if args.digits:
            rows += [bench_pgd_deq_warm_digits(e, args.batch, args.repeat,
                                               **(opts if e == "exact" else {}))
                     for e in est_b]
        if args.family:
            rows += bench_pgd_deq_warm_family(args.family, args.data_dir, args.cache, est_b,
                                              args.batch, args.repeat, **opts)
    print(f"load average {load:.1f} at start / {os.getloadavg()[0]:.1f} at end, 1 thread")
    print(format_table(rows, markdown=True))


if __name__ == "__main__":
    main()
