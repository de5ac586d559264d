"""Small models and tasks for the sweep-engine tests (real DEQ / FFW, tiny widths)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from noisydeq.config import SolverSpec, SweepSpec, build
from noisydeq.models import DEQ, FFW
from noisydeq.sweep import SweepModel


def toy_task(kind: str = "classification", n: int = 48, d: int = 8, seed: int = 0):
    """A seeded random task with the attributes the engine reads."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    if kind == "classification":
        y = torch.randint(0, 4, (n,), generator=g)
        out = 4
    else:
        y = torch.randn(n, 1, generator=g)
        out = 1
    return SimpleNamespace(name="toy", kind=kind, x_test=x, y_test=y, in_features=d,
                           out_features=out)


def toy_models(task, seed: int = 0, depths=(1, 3)) -> list[SweepModel]:
    """Untrained DEQ/FFW pairs with deterministic weights (global seed only in tests)."""
    torch.manual_seed(1234 + seed)
    solver = SolverSpec(name="unroll", max_iter=30, tol=0.05, stop="mean_rel", window=5)
    out = []
    for depth in depths:
        width = 6 + 2 * depth
        deq = DEQ(task.in_features, width, task.out_features, solver=solver, depth=depth)
        ffw = FFW(task.in_features, 6, depth, task.out_features)
        for m in (deq, ffw):
            out.append(SweepModel(m.eval(), m.kind, depth, m.width, m.parameter_count(), seed,
                                  math.inf))
    return out


def toy_spec(**kw) -> SweepSpec:
    base = dict(task="toy", device="ideal", noise_site="signal", snr_db="0,5,10,inf", chips=2,
                max_rows=64, depths=[1, 3])
    base.update(kw)
    return build(SweepSpec, base)


def count_cell_saves(monkeypatch) -> list[str]:
    """The keys of every cell ``RunDir.save_cell`` writes (in this process) from now on, in
    order: a list that grows as the test runs (``monkeypatch`` undoes the patch)."""
    from noisydeq.results import RunDir

    saved: list[str] = []
    real_save = RunDir.save_cell

    def counting_save(self, key, rows, layers=()):
        saved.append(key)
        return real_save(self, key, rows, layers)

    monkeypatch.setattr(RunDir, "save_cell", counting_save)
    return saved
