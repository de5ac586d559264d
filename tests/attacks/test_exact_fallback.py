"""The ``exact`` estimator's backward solve with the GMRES fallback (its default): exact where
Anderson alone is not, identical to Anderson where Anderson converges, and the rows left
unconverged reported in the attack table."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.nn import functional as F

from noisydeq import store
from noisydeq.attacks import EstimatorSpec, make_estimator, parse_estimator
from noisydeq.attacks.pgd import pgd
from noisydeq.attacks.runner import SOLVE_COLUMNS_FILL
from noisydeq.errors import NoisyDEQError
from noisydeq.solvers import gradients
from noisydeq.specs.attack import EXACT_BSOLVER
from tests.attacks.helpers import small_deq
from tests.attacks.test_estimators import _closed_form_input_gradient


def _hard():
    """A float64 DEQ (W scaled by 3: ρ(J_f) ≥ 1 at some inputs) whose forward solves all
    converge and whose Anderson backward solve misses rel 1e-6 in 40 steps on some rows."""
    m = small_deq(scale=3.0, seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (32,), generator=g)
    assert bool(m(x, return_solution=True).solution.converged.all())
    return m, x, y


def _grad(m, spec: str, x, y):
    est = make_estimator(m, parse_estimator(spec))
    xr = x.clone().requires_grad_(True)
    with gradients.tally_backward() as tally:
        (g,) = torch.autograd.grad(F.cross_entropy(est(xr), y, reduction="sum"), xr)
    return g, tally


def _rel(g, ref):
    return (g - ref).norm(dim=1) / ref.norm(dim=1)


def test_fallback_is_exact_where_anderson_alone_is_not() -> None:
    m, x, y = _hard()
    ref = _closed_form_input_gradient(m, x, y)  # dense float64 Jacobians, no iteration
    g_and, t_and = _grad(m, "exact:warm=false,bsolver=fixed-point", x, y)
    g_fb, t_fb = _grad(m, "exact:warm=false", x, y)  # the default: the fallback
    g_gm, _ = _grad(m, "exact:warm=false,bsolver=gmres", x, y)
    assert float(_rel(g_and, ref).max()) > 1e-4 and t_and.unconverged > 0
    assert t_and.fallback == 0 and t_and.rows == 32 and t_and.solves == 1
    assert float(_rel(g_fb, ref).max()) < 1e-5 and float(_rel(g_gm, ref).max()) < 1e-5
    # only the rows Anderson missed were re-solved, and all of them converged
    assert t_fb.fallback == t_and.unconverged and t_fb.unconverged == 0
    # the rows Anderson converged keep its gradient exactly; the others changed
    changed = (g_fb != g_and).any(dim=1)
    assert int(changed.sum()) == t_fb.fallback
    assert bool(changed[_rel(g_and, ref) > 1e-5].all())


def test_fallback_never_triggers_on_a_contractive_deq_and_equals_anderson_bit_for_bit():
    m = small_deq()  # W scaled by 0.6
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=g)
    ga, ta = _grad(m, "exact:warm=false,bsolver=fixed-point", x, y)
    gf, tf = _grad(m, "exact:warm=false", x, y)
    assert tf.fallback == 0 and tf.unconverged == 0 and ta.unconverged == 0
    assert torch.equal(ga, gf)
    # a warm PGD-5 trajectory: the same examples
    advs = []
    for spec in ("exact:bsolver=fixed-point", "exact"):
        est = make_estimator(m, parse_estimator(spec))
        with gradients.tally_backward() as t:
            advs.append(pgd(est, x, y, eps=0.1, alpha=0.03, steps=5,
                            generator=torch.Generator().manual_seed(3)))
        assert t.fallback == 0 and t.solves == 5
    assert torch.equal(advs[0], advs[1])


def test_gmres_fallback_re_solves_only_the_missed_rows_from_their_iterate() -> None:
    from noisydeq.config import SolverSpec
    from noisydeq.solvers import solve
    from tests.solvers.test_krylov import _jt, _system

    j1, v, exact1 = _system(0.5, seed=2)
    j2, _, _ = _system(1.2, seed=3)  # ρ > 1: the plain iteration diverges
    j = torch.cat([j1[:3], j2[3:]])
    exact = torch.linalg.solve(torch.eye(j.shape[1], dtype=j.dtype) - j.transpose(1, 2), v)
    jt = _jt(j)
    spec = SolverSpec(name="anderson", max_iter=40, tol=1e-10, stop="rel", window=1,
                      traces=False)
    sol = solve(lambda u: jt(u) + v, v, spec)
    assert bool(sol.converged[:3].all()) and not bool(sol.converged[3:].any())
    calls = []

    def counted(p):
        calls.append(p.clone())
        return jt(p)

    fixed, n = gradients.gmres_fallback(counted, v, v, sol, spec)
    assert n == 2 and bool(fixed.converged.all()) and not bool(fixed.diverged.any())
    assert torch.equal(fixed.z[:3], sol.z[:3]) and torch.equal(fixed.steps[:3], sol.steps[:3])
    assert bool((fixed.steps[3:] > sol.steps[3:]).all())
    assert float(((fixed.z - exact).norm(dim=1) / exact.norm(dim=1)).max()) < 1e-8
    assert all(bool((p[:3] == 0).all()) for p in calls)  # converged rows: no work
    again, n0 = gradients.gmres_fallback(counted, v, v, fixed, spec)
    assert n0 == 0 and again is fixed


def test_exact_backward_option_names_and_bad_input() -> None:
    assert EXACT_BSOLVER == "fallback"
    assert make_estimator(small_deq(), EstimatorSpec()).gradient.backward_method == "fallback"
    assert parse_estimator("exact:bsolver=anderson").bsolver == "fixed-point"
    assert parse_estimator("exact:bsolver=fallback").label() == "exact(fallback)"
    for bad, needle in (("exact:bsolver=gmress", "did you mean 'gmres'"),
                        ("exact:bsolver=cg", "allowed: fallback, fixed-point, anderson, gmres"),
                        ("phantom:bsolver=fallback", "belongs to 'exact'")):
        with pytest.raises(NoisyDEQError, match="bsolver") as err:
            parse_estimator(bad)
        assert needle in str(err.value) and "\n" not in str(err.value)
    # the default exact cell carries the backward method in its key, the others do not
    assert parse_estimator("exact").cell_tag() == "bwd=fallback|"
    assert parse_estimator("exact:bsolver=fixed-point").cell_tag() == ""
    assert parse_estimator("phantom").cell_tag() == ""


def _run(tmp_path, estimators: str, out: str):
    from noisydeq.attacks.grid import AttackRunSpec
    from noisydeq.attacks.runner import run_attacks
    from noisydeq.config import build
    from noisydeq.sweep import SweepModel

    m, x, y = _hard()
    task = SimpleNamespace(name="toy", kind="classification", x_test=x, y_test=y,
                           x_train=x[:8], out_features=3)
    member = SweepModel(m, "deq", 1, 12, 64)
    spec = build(AttackRunSpec, {"family": "x", "attacks": "pgd-eps", "eps": "0.05",
                                 "pgd_steps": [2], "samples": 32, "val_samples": 0,
                                 "estimators": [estimators], "defences": ["final"]})
    said: list[str] = []
    res = run_attacks(spec, [member], task, tmp_path / out, progress=False, plots=False,
                      echo=said.append)
    return res, said


def test_unconverged_rows_are_a_column_and_a_warning(tmp_path) -> None:
    res, said = _run(tmp_path, "exact:bsolver=fixed-point", "and")
    (row,) = res.rows
    assert row["bwd_unconverged"] > 0
    assert len(said) == 1 and said[0].startswith("warning: 1 cell(s)")
    assert "bwd_unconverged" in (res.run_dir.path / "results.csv").read_text().splitlines()[0]
    res, said = _run(tmp_path, "exact", "fb")
    (row,) = res.rows
    assert row["bwd_unconverged"] == 0 and said == []
    cell = next((res.run_dir.path / "cells").iterdir())
    assert "bwd=fallback|" in store.read_signed_json(cell)["key"]
    # a cell written before the column: loaded with -1 (not recorded), not refused
    data = store.read_signed_json(cell)
    legacy = [{k: v for k, v in r.items()
               if k != "bwd_unconverged" and k not in SOLVE_COLUMNS_FILL} for r in data["rows"]]
    res.run_dir.save_cell(data["key"], legacy)
    res2, said = _run(tmp_path, "exact", "fb")
    assert res2.skipped_cells == 1 and res2.rows[0]["bwd_unconverged"] == -1 and said == []
