"""The attack table's forward-solve columns (``fwd_*``) and ``bwd_fallback``: how the
model's own judging solve ended at the clean and attacked inputs, and the backward rows the
GMRES fallback re-solved — checked against closed forms and independent solves; older cells
still load, and the cell keys do not move."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from noisydeq import store
from noisydeq.attacks.defences import NO_FORWARD_STATS, defended_solve, forward_stats
from noisydeq.attacks.runner import ATTACK_COLUMNS, SOLVE_COLUMNS_FILL
from noisydeq.attacks.spec import DefenceSpec
from noisydeq.solvers.solution import Solution
from noisydeq.specs.solver import SolverSpec
from noisydeq.sweep import SweepModel
from tests.attacks.helpers import small_deq, small_ffw
from tests.attacks.test_exact_fallback import _hard


def test_forward_stats_closed_form() -> None:
    sol = Solution(z=torch.zeros(4, 2), steps=torch.tensor([3, 8, 8, 5]),
                   converged=torch.tensor([True, False, False, True]),
                   diverged=torch.tensor([False, False, True, False]))
    r = torch.tensor([1e-4, 3e-2, float("nan"), 2e-3], dtype=torch.float64)
    got = forward_stats(sol, r)
    # 2 of 4 missed the rule (one diverged); steps 24/4; median = lower middle (2e-3);
    # the diverged sample's NaN residual counts as inf
    assert got == {"unconverged": 0.5, "residual": 2e-3, "residual_max": math.inf,
                   "steps": 6.0}
    none = forward_stats(sol)
    assert none["unconverged"] == 0.5 and math.isnan(none["residual"])


def test_defended_solve_residual_is_the_returned_states() -> None:
    m, x, _ = _hard()
    final = [DefenceSpec(name="final")]
    logits, bad, st = defended_solve(m, x, final)
    sol = m(x, return_solution=True).solution  # an independent solve, no noise
    fz = m.cell_fn(m.inject(x))(sol.z)
    rel = (fz - sol.z).norm(dim=1) / fz.norm(dim=1)
    assert st["unconverged"] == 0.0 and st["steps"] == float(sol.steps.double().mean())
    assert abs(st["residual_max"] - float(rel.max())) <= 1e-12
    assert st["residual_max"] < 1e-8  # solved to 1e-10 (abs)
    # a capped solve misses its rule on every sample, with residuals to match
    short = small_deq(scale=3.0, seed=0, solver=SolverSpec(name="unroll", max_iter=2, window=1,
                                                            tol=1e-10, stop="rel"))
    _, _, st2 = defended_solve(short, x, final)
    assert st2["unconverged"] == 1.0 and st2["steps"] == 2.0
    assert st2["residual"] > 1e-6 > st["residual"]
    # a feed-forward model has no solve
    ffw = small_ffw(in_features=16, classes=3).double()
    assert all(math.isnan(v) for v in defended_solve(ffw, x, final)[2].values())
    assert set(NO_FORWARD_STATS) == {"unconverged", "residual", "residual_max", "steps"}


def _run(tmp_path, estimators: str, out: str, member=None):
    from noisydeq.attacks.grid import AttackRunSpec
    from noisydeq.attacks.runner import run_attacks
    from noisydeq.config import build

    m, x, y = _hard()
    task = SimpleNamespace(name="toy", kind="classification", x_test=x, y_test=y,
                           x_train=x[:8], out_features=3)
    member = member or SweepModel(m, "deq", 1, 12, 64)
    spec = build(AttackRunSpec, {"family": "x", "attacks": "pgd-eps", "eps": "0.05",
                                 "pgd_steps": [2], "samples": 32, "val_samples": 0,
                                 "estimators": [estimators], "defences": ["final"]})
    return run_attacks(spec, [member], task, tmp_path / out, progress=False, plots=False,
                       echo=lambda s: None)


def test_columns_in_the_table_and_old_cells_load(tmp_path) -> None:
    m, x, _ = _hard()
    res = _run(tmp_path, "exact", "fb")
    (row,) = res.rows
    # Anderson leaves some backward rows of this DEQ unconverged: GMRES re-solves them
    assert row["bwd_fallback"] > 0 and row["bwd_unconverged"] == 0
    assert _run(tmp_path, "exact:bsolver=fixed-point", "fp").rows[0]["bwd_fallback"] == 0
    # the clean columns are the judging solve of the clean inputs (noise-free model)
    clean = forward_stats(m(x, return_solution=True).solution)
    assert row["fwd_unconverged_clean"] == clean["unconverged"] == 0.0
    assert row["fwd_steps_clean"] == clean["steps"]
    assert 0.0 <= row["fwd_unconverged"] <= 1.0 and 0 < row["fwd_residual"] < 1e-8
    assert row["fwd_residual"] <= row["fwd_residual_max"]
    header = (res.run_dir.path / "results.csv").read_text().splitlines()[0].split(",")
    assert set(SOLVE_COLUMNS_FILL) <= set(header) and set(SOLVE_COLUMNS_FILL) <= set(
        ATTACK_COLUMNS)
    # a cell written before these columns: same key (skipped, not recomputed), loaded
    # with NaN / -1
    cell = next((res.run_dir.path / "cells").iterdir())
    data = store.read_signed_json(cell)
    old = [{k: v for k, v in r.items() if k not in SOLVE_COLUMNS_FILL} for r in data["rows"]]
    res.run_dir.save_cell(data["key"], old)
    again = _run(tmp_path, "exact", "fb")
    (r2,) = again.rows
    assert again.skipped_cells == 1 and again.computed_cells == 0
    assert r2["bwd_fallback"] == -1 and math.isnan(r2["fwd_residual"])
    assert r2["value"] == row["value"] and r2["bwd_unconverged"] == 0


def test_ffw_rows_have_no_forward_solve(tmp_path) -> None:
    ffw = small_ffw(in_features=16, classes=3).double()
    (row,) = _run(tmp_path, "exact", "ffw", SweepModel(ffw, "ffw", 3, 32, 1)).rows
    assert row["bwd_fallback"] == 0 and row["bwd_unconverged"] == 0
    assert all(math.isnan(row[f"fwd_{k}{s}"]) for k in NO_FORWARD_STATS
               for s in ("_clean", ""))
