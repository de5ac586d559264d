"""The end-of-run convergence lines (noisydeq/convergence.py): one line per model whose
evaluated samples missed the stop rule (with the numbers of the table's cells), diverged
samples worded apart, nothing when every sample converged — for the sweep, the attack, a
study, the Lyapunov experiment and train. Only messages: the tables are not touched."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from noisydeq.config import SolverSpec
from noisydeq.convergence import Tally, report_lines, solver_rule, stop_rule

CAPPED = SolverSpec(name="unroll", max_iter=1, tol=1e-3, stop="rel", window=1)


def test_rule_words():
    assert solver_rule(SolverSpec(name="broyden", max_iter=8, tol=1e-3, stop="rel", window=1)
                       ) == "relative residual ≤ 0.001 within 8 broyden steps"
    assert solver_rule(CAPPED) == "relative residual ≤ 0.001 within 1 unroll step"
    assert solver_rule(SolverSpec(name="unroll", max_iter=60, tol=0.05, stop="mean_rel",
                                  window=40, random_threshold=True)) == (
        "Eq. 54 relative residual over a window of 40 ≤ 0.05 within a random cap of 1-60 "
        "unroll steps")
    assert stop_rule(SimpleNamespace(test_solver=None, solver=CAPPED)) == solver_rule(CAPPED)
    assert stop_rule(object()) == ""  # no solver: a feed-forward model


def test_numbers_of_a_line_and_quiet_when_all_converged():
    t = Tally("m", "RULE", unit="solves")
    t.add(100, 0.0, None, residual=2e-4, residual_max=4e-4, label="a")
    t.add(100, 0.5, None, residual=3e-3, residual_max=9e-3, label="b")
    (line,) = report_lines([t, Tally("ok")], "COLS")
    assert line == ("convergence: m: of 200 evaluated samples, 25% missed the stop rule "
                    "(RULE) — in 1 of 2 solves, most at b (50%); relative residual: medians "
                    "0.0002-0.003, largest 0.009. Detail: COLS")
    ok = Tally("ok")
    ok.add(10, 0.0, 0.0)
    assert report_lines([ok], "COLS") == []
    # diverged counted apart, listed first; the limit's last line counts the others
    many = []
    for i in range(4):
        m = Tally(f"m{i}", "R")
        m.add(10, 0.1 * i, 0.3 if i == 1 else 0.0)
        many.append(m)
    lines = report_lines(many, "C", limit=2)
    assert lines[0].startswith("convergence: m1: of 10 evaluated samples, 30% diverged "
                               "(non-finite, or residual past the solver's blow-up limit); "
                               "10% missed the stop rule (R) without diverging")
    assert lines[1].startswith("convergence: m3: of 10 evaluated samples, 30% missed")
    assert lines[2] == "convergence: 1 more model(s) missed their stop rule too. Detail: C"


def _sweep(tmp_path, name, task, solver=None, **spec):
    from noisydeq.summary import convergence_lines
    from noisydeq.sweep import run_sweep
    from tests.sweep_helpers import toy_models, toy_spec

    models = toy_models(task, depths=(1,))
    if solver is not None:
        for sm in models:
            if sm.kind == "deq":
                sm.model.test_solver = solver
    res = run_sweep(toy_spec(depths=[1], **spec), tmp_path / name, task=task, models=models,
                    progress=False, plots=False, jobs=1)
    return res, convergence_lines(res.rows, res.stop_rules)


def test_sweep_lines(tmp_path):
    from tests.sweep_helpers import toy_task

    task = toy_task()
    res, lines = _sweep(tmp_path, "capped", task, CAPPED, snr_db="0,inf", chips=1)
    (line,) = lines  # the DEQ (a 1-step budget misses 1e-3); the FFW has no solve
    deq = [r for r in res.rows if r["kind"] == "deq"]
    assert all(r["converged_frac"] == 0.0 and r["diverged_frac"] == 0.0 for r in deq)
    assert line.startswith(f"convergence: {deq[0]['model_id']}: of 96 evaluated samples, 100% "
                           "missed the stop rule (relative residual ≤ 0.001 within 1 unroll "
                           "step) — in 2 of 2 points (SNR, chip)")
    assert line.endswith("Detail: converged_frac, diverged_frac in results.csv (a sweep "
                         "records no residuals)")
    loose = SolverSpec(name="unroll", max_iter=200, tol=1e-3, stop="rel", window=1)
    res, lines = _sweep(tmp_path, "loose", task, loose, snr_db="inf", chips=1)
    assert all(r["converged_frac"] == 1.0 for r in res.rows) and lines == []
    # a blow-up (non-finite inputs: every third sample) is worded apart, for the FFW too
    bad = toy_task()
    bad.x_test[::3] = float("nan")
    res, lines = _sweep(tmp_path, "nan", bad, loose, snr_db="inf", chips=1)
    assert len(lines) == 2 and all("of 48 evaluated samples, 33% diverged (" in s for s in lines)
    assert any("(non-finite output)" in s and s.startswith("convergence: ffw") for s in lines)
    assert not any("missed the stop rule" in s for s in lines)


def test_the_sweep_command_prints_the_lines(tmp_path, monkeypatch, capsys):
    import noisydeq.sweep as sweep_pkg
    from noisydeq.commands.sweep import execute
    from tests.sweep_helpers import toy_models, toy_spec, toy_task

    task = toy_task()
    models = toy_models(task, depths=(1,))
    models[0].model.test_solver = CAPPED
    real = sweep_pkg.run_sweep
    monkeypatch.setattr(sweep_pkg, "run_sweep", lambda spec, out, **kw: real(
        spec, out, task=task, models=models, progress=False, plots=False, jobs=1))
    execute(toy_spec(depths=[1], snr_db="inf", chips=1), tmp_path / "run", quiet=True,
            as_json=False)
    out = capsys.readouterr().out
    assert out.count("convergence: ") == 1
    assert "100% missed the stop rule (relative residual ≤ 0.001 within 1 unroll step)" in out
    run = tmp_path / "run" / "results.csv"
    assert f"Detail: converged_frac, diverged_frac in {run} (a sweep records no residuals)" in out


def _attack(tmp_path, name, model, x=None):
    from noisydeq.attacks.grid import AttackRunSpec
    from noisydeq.attacks.runner import run_attacks
    from noisydeq.config import build
    from noisydeq.sweep import SweepModel
    from tests.attacks.test_exact_fallback import _hard

    _m, x0, y = _hard()
    x = x0 if x is None else x
    task = SimpleNamespace(name="toy", kind="classification", x_test=x, y_test=y,
                           x_train=x[:8], out_features=3)
    spec = build(AttackRunSpec, {"family": "x", "attacks": "pgd-eps", "eps": "0,0.05",
                                 "pgd_steps": [2], "samples": 32, "val_samples": 0,
                                 "estimators": ["exact"], "defences": ["final"]})
    said: list[str] = []
    res = run_attacks(spec, [SweepModel(model, "deq", 1, 12, 64)], task, tmp_path / name,
                      progress=False, plots=False, echo=said.append)
    return res, [s for s in said if s.startswith("convergence:")]


def test_attack_lines(tmp_path):
    from noisydeq.attacks.runner import forward_convergence_lines
    from tests.attacks.helpers import small_deq
    from tests.attacks.test_exact_fallback import _hard

    capped = small_deq(solver=SolverSpec(name="broyden", max_iter=1, tol=1e-3, stop="rel",
                                         window=1))
    res, said = _attack(tmp_path, "capped", capped)
    (line,) = said
    rows = res.rows  # two cells (ε 0, 0.05), one clean solve: three solves of 32 samples
    meds = sorted([rows[0]["fwd_residual_clean"]] + [r["fwd_residual"] for r in rows])
    top = max([rows[0]["fwd_residual_max_clean"]] + [r["fwd_residual_max"] for r in rows])
    assert all(r["fwd_unconverged"] == 1.0 == r["fwd_unconverged_clean"] for r in rows)
    assert line.startswith(f"convergence: {rows[0]['model_id']}: of 96 evaluated samples, "
                           "100% missed the stop rule (relative residual ≤ 0.001 within 1 "
                           "broyden step) — in 3 of 3 solves; relative residual: ")
    med = f"{meds[0]:.2g}" if f"{meds[0]:.2g}" == f"{meds[-1]:.2g}" else \
        f"{meds[0]:.2g}-{meds[-1]:.2g}"
    assert f"medians {med}, largest {top:.2g}." in line
    assert line.endswith("Detail: fwd_unconverged, fwd_residual, fwd_residual_max, fwd_steps "
                         f"(attacked; _clean: clean) in {res.run_dir.csv_path}")
    # resumed: the same line from the cells on disk
    again, said2 = _attack(tmp_path, "capped", capped)
    assert again.skipped_cells == 2 and said2 == said
    # solved to 1e-10: nothing to say
    assert _attack(tmp_path, "fine", small_deq())[1] == []
    # a blow-up: non-finite inputs (every fourth) give non-finite residuals, named as such
    _m, x, _y = _hard()
    x = x.clone()
    x[::4] = float("nan")
    _, (bad,) = _attack(tmp_path, "nan", small_deq(), x)
    assert "25% missed the stop rule (absolute residual ≤ 1e-10 within 60 broyden steps) or " \
           "diverged — in 3 of 3 solves" in bad
    assert "largest inf; diverged samples (a non-finite residual) in 3 of them" in bad
    # feed-forward rows (NaN columns) and cells written before the columns say nothing
    nan_row = {**rows[0], **{k: math.nan for k in rows[0] if k.startswith("fwd_")}}
    assert forward_convergence_lines([nan_row]) == []


def test_study_lines(tmp_path, monkeypatch, capsys):
    import noisydeq.studies as studies_pkg
    from noisydeq.studies import StudyResult, run_study
    from noisydeq.studies.summary import convergence_lines, summarise
    from tests.cli_helpers import run_cli
    from tests.test_studies import tiny

    solvers = {"a": {"name": "unroll", "max_iter": 2, "window": 1},
               "b": {"name": "unroll", "max_iter": 50, "tol": 10.0, "stop": "abs",
                     "window": 1}}
    spec = tiny(paired=True, budgets=["train"], shifts=[], train_snr_db=["inf"],
                test_snr_db=["inf"], test_solvers=solvers)
    rows = run_study(spec, tmp_path / "r", plots=False).rows
    deq = {r["solver"]: r for r in rows if r["kind"] == "deq"}
    assert deq["a"]["converged_frac"] < 1 and deq["b"]["converged_frac"] == 1.0
    (line,) = convergence_lines(rows, spec.test_solvers)
    missed = 1 - deq["a"]["converged_frac"] - deq["a"]["diverged_frac"]
    n = deq["a"]["n"]
    assert line.startswith(f"convergence: deq seed 0: of {2 * n} evaluated samples, ")
    assert ("missed the stop rule (a: relative residual ≤ 0.001 within 2 unroll steps; "
            "b: absolute residual ≤ 10 within 50 unroll steps) — in 1 of 2 rows") in line
    from noisydeq.convergence import _pct

    assert f"{_pct(missed / 2)} missed" in line
    only_b = [r for r in rows if r["solver"] != "a"]
    assert convergence_lines(only_b, spec.test_solvers) == []
    # the command prints them after its table, naming the run's table
    monkeypatch.setattr(studies_pkg, "run_study", lambda *a, **k: StudyResult(
        rows, summarise(rows), tmp_path / "r"))
    code, out, err = run_cli(["study", "algorithmic-prefix-sums", "--quick", "--out",
                              str(tmp_path / "cli")], capsys)
    assert code in (0, None), err
    (printed,) = [s for s in out.splitlines() if s.startswith("convergence:")]
    assert printed.startswith("convergence: deq seed 0: of ") and printed.endswith(
        f"in {tmp_path / 'r' / 'results.csv'} (a study records no residuals)")


def test_lyapunov_attack_lines():
    from noisydeq.analysis.lyapunov_experiment import attack_convergence_lines

    rows = [{"variant": "both", "seed": 0, "converged_frac": 0.75, "attack": a}
            for a in ("ifgsm", "pgd")] + [{"variant": "none", "seed": 0,
                                           "converged_frac": 1.0, "attack": "pgd"}]
    (line,) = attack_convergence_lines(rows, 40)
    assert line.startswith("convergence: LyaDEQ both seed 0: of 40 evaluated samples, 25% "
                           "missed the stop rule — in 1 of 1 clean solves")


@pytest.fixture(scope="module")
def digits():
    from noisydeq.tasks import load_task

    return load_task("digits", seed=0)


def test_train_lines(digits, capsys):
    from noisydeq.commands.train import _convergence
    from noisydeq.config import ModelSpec
    from noisydeq.models import build_model
    from noisydeq.specs.training import TrainSpec
    from noisydeq.train import train_model

    def deq():
        torch.manual_seed(0)
        return build_model(ModelSpec(kind="deq", in_features=64, out_features=10, width=8,
                                     matched=False))

    spec = TrainSpec(epochs=1, batch_size=256,
                     solver=SolverSpec(name="unroll", max_iter=4, tol=1e-3, window=1),
                     test_solver=CAPPED)
    res = train_model(deq(), digits, spec, desc="tiny")
    _convergence(res.convergence)
    (line,) = capsys.readouterr().out.splitlines()
    n = len(digits.x_test)
    assert line.startswith(f"convergence: tiny (test metric): of {n} evaluated samples, 100% "
                           "missed the stop rule (relative residual ≤ 0.001 within 1 unroll "
                           "step)")
    fine = train_model(deq(), digits, spec.model_copy(update={"test_solver": SolverSpec(
        name="unroll", max_iter=300, tol=1e-3, window=1)}), desc="tiny")
    assert fine.test_metric == fine.test_metric and report_lines(fine.convergence, "") == []


def test_train_device_validation_lines(digits):
    """Device-in-the-loop training: the last epoch's validation, digital and on the chip,
    gets its lines too (with the test metric's)."""
    from noisydeq.config import ModelSpec
    from noisydeq.models import build_model
    from noisydeq.specs.training import TrainSpec
    from noisydeq.train import train_model

    torch.manual_seed(0)
    m = build_model(ModelSpec(kind="deq", in_features=64, out_features=10, width=8,
                              matched=False))
    spec = TrainSpec(epochs=1, batch_size=256, device="rram", test_solver=CAPPED,
                     solver=SolverSpec(name="unroll", max_iter=4, tol=1e-3, window=1))
    res = train_model(m, digits, spec, desc="tiny")
    names = sorted(t.model for t in res.convergence)
    assert names == ["tiny (test metric)", "tiny (validation on rram, epoch 1)",
                     "tiny (validation, epoch 1)"]
    assert len(report_lines(res.convergence, "X")) == 3
