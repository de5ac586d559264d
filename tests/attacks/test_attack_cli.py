"""``noisydeq attack`` on a family from ``noisydeq sweep``: table, figures, resume, bad input."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from tests.analysis.analysis_family import tiny_sweep
from tests.cli_helpers import one_line_error
from tests.cli_helpers import run_cli as run


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    """A tiny sweep (digits, depth 1, one epoch) and its model cache."""
    with tiny_sweep(tmp_path_factory.mktemp("attack-sweep"), "--depths", "1", "--snr",
                    "0,inf", "--chips", "1", "--device", "ideal", "--noise-site", "signal",
                    "--jobs", "1") as run_dir:
        yield run_dir


BASE = ["--attacks", "pgd-eps,pgd-steps,speckle,salt-pepper", "--eps", "0,0.3",
        "--pgd-steps", "5", "--steps", "1,3", "--sigma", "0,1", "--fraction", "0,0.3",
        "--samples", "24", "--val-samples", "12", "--quiet"]


@pytest.mark.slow
def test_attack_command_writes_table_figures_and_resumes(sweep_run, tmp_path, capsys,
                                                        monkeypatch):
    out = tmp_path / "a"
    argv = ["attack", "--family", str(sweep_run), *BASE, "--estimators",
            "exact,phantom:k=3,lam=0.5,unrolled:state=1,k=1,lam=1,adjoint", "--defences",
            "final,early,ensemble", "--out", str(out)]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert "white-box robustness at ε = 0.3" in stdout
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    deq = [r for r in rows if r["kind"] == "deq"]
    ffw = [r for r in rows if r["kind"] == "ffw"]
    # DEQ: 4 estimators × (2 + 2) gradient points + 4 noise points, × 3 defences
    assert len(deq) == 3 * (4 * 4 + 4)
    assert len(ffw) == 4 + 4 and {r["estimator"] for r in ffw} <= {"backprop", "none"}
    assert {r["defence"] for r in deq} == {"final", "early", "ensemble"}
    assert all(int(r["early_n"]) >= 1 for r in deq if r["defence"] == "early")
    # ε = 0 is the clean accuracy, whatever the estimator; a standard-trained model falls
    clean = {r["value"] for r in deq if r["x_name"] == "eps" and r["x"] == "0.0"
             and r["defence"] == "final"}
    assert len(clean) == 1
    strong = [float(r["value"]) for r in rows if r["x_name"] == "eps" and r["x"] == "0.3"]
    assert max(strong) < float(clean.pop())
    for name in ("results.parquet", "whitebox.csv", "config.toml", "meta.json",
                 "figures/attacks_white-box_inf.png", "figures/attacks_white-box_inf.svg"):
        assert (out / name).stat().st_size > 0
    # the figure's CSV: every plotted point is the worst estimator's final-state accuracy
    plotted = list(csv.DictReader(open(out / "figures" / "attacks_white-box_inf.csv")))
    assert plotted
    for p in plotted:
        vals = [float(r["value"]) for r in rows if r["model_id"] == p["model_id"]
                and r["attack"] == p["attack"] and float(r["x"]) == float(p["x"])
                and r["defence"] == "final"]
        assert float(p["accuracy_worst"]) == pytest.approx(min(vals))
    first = (out / "results.csv").read_text()
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert "0 computed" in stdout and "resumed" in stdout
    assert (out / "results.csv").read_text() == first
    # an interrupted run (half of the cells lost) resumes to the same table: every cell
    # draws from seeds derived from its own key
    cells = sorted((out / "cells").iterdir())
    for p in cells[::2]:
        p.unlink()
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert f"{len(cells[::2])} computed" in stdout
    assert (out / "results.csv").read_text() == first
    sums = (out / "SHA256SUMS").read_text()
    assert "whitebox.csv" in sums and "results.csv" in sums
    # a cell whose rows are not the ones its key promises is refused, naming the file;
    # deleting it recomputes that cell
    from noisydeq import store

    victim, data = next((p, d) for p in cells for d in [store.read_signed_json(p)]
                        if any(r.get("defence") == "early" for r in d["rows"]))
    rows = [dict(r, defence="final") for r in data["rows"]]
    store.write_signed_json(victim, {**data, "rows": rows})  # its code and weights record kept
    code, _, err = run(argv, capsys)
    one_line_error(code, err, victim.name, "delete it")
    victim.unlink()
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert "1 computed" in stdout and (out / "results.csv").read_text() == first
    # a different grid in the same run dir is refused
    code, _, err = run([*argv[:-2], "--eot", "2", "--out", str(out)], capsys)
    one_line_error(code, err, "holds an attack run with a different config", "eot")
    # resumed by other code: --keep-other-code serves the cells and says so
    # (tests/attacks/test_other_code.py: without it they are computed again)
    from noisydeq import fingerprint

    monkeypatch.setattr(fingerprint, "code_fingerprint", lambda *kind: "0123456789abcdef")
    code, stdout, err = run([*argv, "--keep-other-code"], capsys)
    assert code == 0, err
    assert "0 computed" in stdout and (out / "results.csv").read_text() == first
    assert "were computed by other noisydeq code" in err and "kept (--keep-other-code)" in err


@pytest.mark.slow
def test_eot_column_is_the_draws_each_attack_averaged_old_cells_included(sweep_run, tmp_path,
                                                                        capsys):
    """AA-rand averages 20 draws (APGD-CE and APGD-DLR with EOT 20) and its rows say 20, not
    the grid's --eot 1; FAB (no EOT) says 1, Square (no gradient) 0. Cells written when the
    column was the grid's eot (AA-rand 1) resume without recomputing and load corrected."""
    pytest.importorskip("torchattacks")
    from noisydeq import store

    out = tmp_path / "aa"
    argv = ["attack", "--family", str(sweep_run), "--attacks", "aa-rand,fab,square",
            "--eps", "0.1", "--samples", "4", "--val-samples", "0", "--estimators",
            "phantom", "--defences", "final", "--set", "queries=20", "--quiet", "--out",
            str(out)]
    code, _, err = run(argv, capsys)
    assert code == 0, err

    def eot() -> dict[str, set[str]]:
        with open(out / "results.csv") as fh:
            rows = list(csv.DictReader(fh))
        return {n: {r["eot"] for r in rows if r["attack_name"] == n} for n in
                ("aa-rand", "fab", "square")}

    assert eot() == {"aa-rand": {"20"}, "fab": {"1"}, "square": {"0"}}
    first = (out / "results.csv").read_bytes()
    for p in (out / "cells").iterdir():  # as the code before the column's fix wrote them
        data = store.read_signed_json(p)
        if any(r.get("attack_name") in ("aa-rand", "fab") for r in data["rows"]):
            store.write_signed_json(p, {**data, "rows": [dict(r, eot=1) for r in data["rows"]]})
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert "0 computed" in stdout
    assert (out / "results.csv").read_bytes() == first


@pytest.mark.slow
def test_attack_on_a_device_with_transfer_and_json(sweep_run, tmp_path, capsys):
    out = tmp_path / "hw"
    code, stdout, err = run(["attack", "--family", str(sweep_run), "--attacks", "pgd-eps",
                             "--eps", "0.3", "--pgd-steps", "3", "--samples", "16",
                             "--val-samples", "0", "--device", "snr", "--snr", "10,inf",
                             "--chips", "2", "--transfer", "--eot", "2", "--json", "--out",
                             str(out)], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    with open(report["results_csv"]) as fh:
        rows = list(csv.DictReader(fh))
    modes = {(r["mode"], r["snr_db"], r["chip"]) for r in rows}
    assert ("transfer", "10.0", "1") in modes and ("white-box", "inf", "0") in modes
    assert not any(r["mode"] == "transfer" and math.isinf(float(r["snr_db"])) for r in rows)
    assert any(p.endswith("robust_vs_snr.png") for p in report["figures"])
    from tests.load_helpers import assert_loads_declared

    df = assert_loads_declared(out)  # noisydeq.load_results: the declared column types
    assert df["snr_db"].dtype == "float64" and df["eot"].dtype == "int64"


@pytest.mark.slow
def test_bad_input_is_one_line(sweep_run, tmp_path, capsys):
    fam = ["attack", "--family", str(sweep_run), "--out", str(tmp_path / "x")]
    cases = [
        (["--eps", "0,1.5"], "outside [0, 1]"),
        (["--eps", "-0.1"], "outside [0, 1]"),
        (["--eps", "abc"], "not a number"),
        (["--eps", "0:0.4:0"], "step must be > 0"),
        (["--snr", "abc"], "not a number of dB"),
        (["--snr", "nan"], "--snr: SNR value 'nan'"),
        (["--eps", "0:inf:0.1"], "finite"),
        (["--sigma", "0:1000:0.01"], "more than 1000 points"),
        (["--chips", "100000"], "chips"),
        (["--attacks", "pgd-epz"], "did you mean 'pgd-eps'"),
        (["--norm", "l3"], "allowed: linf, l2"),
        (["--estimators", "exactt"], "did you mean 'exact'"),
        (["--estimators", "exact:bsolver=gmress"], "did you mean 'gmres'"),
        (["--defences", "erly"], "did you mean 'early'"),
        (["--steps", "0"], "positive integers"),
        (["--pgd-steps", "2.5"], "positive integers"),
        (["--samples", "1790"], "exceed"),
        (["--device", "rramm", "--snr", "10"], "rram"),
        (["--defences", "entropy:r=0"], "R must be a positive integer"),
        (["--defences", "entropy:tf=0"], "T_f must be a positive integer"),
        (["--defences", "entropy:beta=-1"], "β must be a finite number >= 0"),
        (["--defences", "entropy:eps=1.5"], "[0, 1]"),
        (["--defences", "early:beta=0.1"], "entropy options belong to the 'entropy' defence"),
        (["--defences", "early:n=-1"], "defence 'early:n=-1': n must be an integer >= 1, got -1"),
        (["--estimators", "unrolled-grid:n=0"], "must be >= 1"),
        (["--estimators", "unrolled-grid:lamb=0.5"], "did you mean 'lam'"),
        # an l2 radius has no upper bound: a negative one is not "outside [0, 1]"
        (["--norm", "l2", "--eps", "0,-3"], "-3 is negative (an l2 radius is >= 0)"),
        # the model's own noise replaces the device: refused rather than a digital run
        # whose rows name the device
        (["--device", "photonic", "--noise-site", "signal", "--snr", "10"],
         "device 'photonic' applies with noise_site 'device' only"),
    ]
    for extra, needle in cases:
        code, _, err = run([*fam, *extra], capsys)
        one_line_error(code, err, needle)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(["attack", "--family", str(empty)], capsys)
    one_line_error(code, err, "no trained model")
    assert not (tmp_path / "x").exists()  # nothing written for bad input


def test_gradient_attack_on_a_model_without_input_gradient_is_refused_before_writing(tmp_path):
    from types import SimpleNamespace

    from noisydeq.attacks.grid import AttackRunSpec
    from noisydeq.attacks.runner import run_attacks
    from noisydeq.config import build
    from noisydeq.errors import NoisyDEQError
    from noisydeq.models import FFW
    from noisydeq.sweep import SweepModel

    class Detached(FFW):
        def forward(self, x, noise=None, **kw):
            return super().forward(x, noise, **kw).detach()

    torch.manual_seed(0)
    model = Detached(16, 8, 1, 3).eval()
    task = SimpleNamespace(name="toy", kind="classification", x_test=torch.rand(40, 16),
                           y_test=torch.randint(0, 3, (40,)), x_train=torch.rand(8, 16),
                           out_features=3)
    member = SweepModel(model, "ffw", 1, 8, 64)
    spec = build(AttackRunSpec, {"family": "x", "attacks": "pgd-eps", "eps": "0.1",
                                 "samples": 10, "val_samples": 0})
    with pytest.raises(NoisyDEQError, match="no gradient with respect to its input"):
        run_attacks(spec, [member], task, tmp_path / "out", progress=False, plots=False)
    assert not (tmp_path / "out").exists()
    ok = build(AttackRunSpec, {"family": "x", "attacks": "speckle", "samples": 10,
                               "val_samples": 0, "sigma": "0,0.5"})
    res = run_attacks(ok, [member], task, tmp_path / "noise", progress=False, plots=False)
    assert len(res.rows) == 2


@pytest.mark.slow
def test_progress_in_a_log_is_lines_and_titles_name_the_device(sweep_run, tmp_path, capsys,
                                                               monkeypatch):
    """stderr not a terminal (as under nohup or CI): plain progress lines, no tqdm bar's
    carriage returns; the figures say on which device the SNR levels were set."""
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    monkeypatch.setenv("NOISYDEQ_PROGRESS_EVERY", "0")
    monkeypatch.delenv("NOISYDEQ_PROGRESS", raising=False)
    code, _, err = run(["attack", "--family", str(sweep_run), "--attacks", "pgd-eps",
                        "--eps", "0,0.3", "--pgd-steps", "2", "--samples", "8",
                        "--val-samples", "0", "--device", "snr", "--snr", "10,inf",
                        "--out", str(tmp_path / "log")], capsys)
    monkeypatch.undo()
    assert code == 0, err
    assert "\r" not in err and "\x1b" not in err, err
    assert "noisydeq: attack " in err and " cells in " in err, err
    titles = [f._suptitle.get_text() for f in kept if f._suptitle is not None]
    assert titles and all("device snr" in t for t in titles), titles
    vs_snr = next(f for f in kept if "accuracy vs SNR" in f._suptitle.get_text())
    assert vs_snr.axes[0].get_xlabel() == "snr device SNR (dB)"
    assert "transfer" not in vs_snr._suptitle.get_text()  # no --transfer: no transfer lines
    plt.close("all")


def test_attack_names_are_the_documented_ones_and_a_bare_pgd_is_refused(tmp_path, capsys):
    """`--attacks pgd` could mean either PGD curve (over ε or over steps): one line naming
    both and every valid name, not silently pgd-eps; the documented spellings and aliases
    are taken. Refused before --family is even loaded (it does not exist here)."""
    from noisydeq.attacks.grid import AttackRunSpec
    from noisydeq.specs.base import build

    for given in ("pgd", "PGD", "pgd-eps,pgd"):
        code, _, err = run(["attack", "--family", str(tmp_path), "--attacks", given], capsys)
        one_line_error(code, err, "'pgd' names two curves: 'pgd-eps'", "'pgd-steps'",
                       "allowed: pgd-eps, pgd-steps, ifgsm,")
        assert "attack: unknown attack" not in err
    spec = build(AttackRunSpec, {"family": "x", "attacks": "PGD-EPS,autoattack,sp"})
    assert spec.attacks == ["pgd-eps", "aa", "salt-pepper"]


def test_the_printed_white_box_table_stays_aligned_with_long_names(capsys):
    """An entropy defence with its parameters (README's example) and a transfer-source
    mode are wider than the old fixed columns: the worst value moved right on their rows."""
    from noisydeq.commands.attack import _summary

    base = {"eps": 0.3, "snr_db": float("inf"), "chip": 0, "worst_value": 0.0,
            "worst_attack": "PGD-10 / exact", "best_defence": "final"}
    rows = [{**base, "model_id": "deq-d1-w128-s0-tinf", "mode": "white-box",
             "defence": "final"},
            {**base, "model_id": "deq-d1-w128-s0-t0-z-10db-trades", "mode": "transfer-source",
             "defence": "entropy(β=0.075 R=10 Tf=2 ε=0.3)"}]
    _summary(rows, 0.3)
    lines = capsys.readouterr().out.splitlines()[1:]
    cols = {ln.index("worst") if i == 0 else ln.index("0.000") for i, ln in enumerate(lines)}
    assert len(lines) == 3 and len(cols) == 1, lines


def test_summary_eps_is_steps_eps_or_the_nearest_grid_point():
    from noisydeq.attacks.runner import summary_eps

    rows = [{"x_name": "eps", "eps": e} for e in (0.0, 0.1, 0.2)] + [
        {"x_name": "steps", "eps": 0.3}, {"x_name": "sigma", "eps": 0.0}]
    assert summary_eps(rows, 0.1) == 0.1
    assert summary_eps(rows, 0.3) == 0.2  # the pgd-steps curve's ε is not an ε curve's
    assert summary_eps(rows, 0.15) == 0.2  # a tie: the larger
    assert summary_eps(rows[3:], 0.3) is None


@pytest.mark.slow
def test_a_steps_eps_off_the_grid_still_gets_a_summary_and_a_run_without_noise_says_so(
        sweep_run, tmp_path, capsys, monkeypatch):
    """``--steps-eps`` not among ``--eps`` printed no white-box table and said no gradient
    attack ran at that ε, which had run at others: the table is at the grid's nearest ε,
    said in one line; without an ε curve one line says why there is none. The run on the
    ideal device (no noise) titles its figure "no noise" once, not "digital — digital"."""
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    small = ["--pgd-steps", "2", "--samples", "8", "--val-samples", "0", "--quiet"]
    code, stdout, err = run(["attack", "--family", str(sweep_run), "--attacks", "pgd-eps",
                             "--eps", "0,0.1", "--steps-eps", "0.3", *small, "--out",
                             str(tmp_path / "off")], capsys)
    assert code == 0, err
    assert "white-box robustness at ε = 0.1" in stdout, stdout
    assert "--steps-eps 0.3 is not on the --eps grid" in stdout, stdout
    with open(tmp_path / "off" / "whitebox.csv") as fh:
        wb = list(csv.DictReader(fh))
    assert wb and {r["eps"] for r in wb} == {"0.1"}
    titles = [f._suptitle.get_text().replace("\n", " ") for f in kept
              if f._suptitle is not None]
    assert titles and all(" — no noise (" in t and "digital" not in t
                          and t.count("noise") == 1 for t in titles), titles
    monkeypatch.undo()
    plt.close("all")
    code, stdout, err = run(["attack", "--family", str(sweep_run), "--attacks", "speckle",
                             "--sigma", "0,1", *small, "--out", str(tmp_path / "none")],
                            capsys)
    assert code == 0, err
    lines = [ln for ln in stdout.splitlines() if "white-box" in ln and "summary" in ln]
    assert len(lines) == 1 and "no attack ran over the --eps grid" in lines[0], stdout
    # the default --steps-eps (0.3) off the grid, with nothing run at it: no line about it
    code, stdout, err = run(["attack", "--family", str(sweep_run), "--attacks", "pgd-eps",
                             "--eps", "0,0.1", *small, "--out", str(tmp_path / "quiet")],
                            capsys)
    assert code == 0, err
    assert "white-box robustness at ε = 0.1" in stdout and "steps-eps" not in stdout, stdout


def test_the_off_grid_steps_eps_line_only_where_it_tells_the_user_something(capsys):
    """The default --steps-eps 0.3 off a user's --eps grid printed "(--steps-eps 0.3 is not
    on the --eps grid …)" though nothing ran at 0.3 and the user never named it: the line
    now comes where the user gave --steps-eps (--set too), or the pgd-steps curve or the
    early-state selection ran at it, and says what ran at which ε."""
    import click
    from click.core import ParameterSource

    from noisydeq.attacks.grid import AttackRunSpec
    from noisydeq.commands.attack import _steps_eps_uses, _summary
    from noisydeq.commands.attack import command as attack_command
    from noisydeq.specs.base import build

    rows = [{"eps": 0.25, "snr_db": float("inf"), "chip": 0, "worst_value": 0.5,
             "worst_attack": "PGD-10 / exact", "best_defence": "final",
             "model_id": "deq-d1-w128-s0-tinf", "mode": "white-box", "defence": "final"}]

    def spec(**kw):
        return build(AttackRunSpec, {"family": "x", **kw})

    with click.Context(attack_command) as ctx:
        ctx.set_parameter_source("steps_eps", ParameterSource.DEFAULT)
        assert _steps_eps_uses(spec(attacks="pgd-eps", eps="0,0.25")) is None
        assert _steps_eps_uses(spec(attacks="pgd-eps"), set_given=True) == []
        assert _steps_eps_uses(spec()) == ["the pgd-steps curve"]
        assert _steps_eps_uses(spec(attacks="pgd-eps", defences="final,early")) == [
            "the early-state selection"]
        ctx.set_parameter_source("steps_eps", ParameterSource.COMMANDLINE)
        assert _steps_eps_uses(spec(attacks="pgd-eps")) == []
    _summary(rows, 0.3, uses=None)
    out = capsys.readouterr().out
    assert "steps-eps" not in out and "white-box robustness at ε = 0.25" in out, out
    _summary(rows, 0.3, uses=[])
    first = capsys.readouterr().out.splitlines()[0]
    assert first == ("(--steps-eps 0.3 is not on the --eps grid: the summary below is at "
                     "its nearest point, ε = 0.25; add 0.3 to --eps for a summary at "
                     "ε = 0.3)"), first
    _summary(rows, 0.3, uses=["the pgd-steps curve"])
    first = capsys.readouterr().out.splitlines()[0]
    assert "ε = 0.25; the pgd-steps curve ran at ε = 0.3; add 0.3" in first, first
    _summary([{**rows[0], "eps": 0.3}], 0.3, uses=[])
    assert "steps-eps" not in capsys.readouterr().out
