"""The DEQ/FFW comparison's knobs: FFW form in specs and CLI, the paper SNR scale, summary marks.

Numbers: the paper scale realises nominal − 10·log10(d) dB within 0.2 dB; an FFW form enters
FFW members (and their cache keys) only; bad names are one line with a suggestion.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from noisydeq.cli import main
from noisydeq.config import FamilySpec, NoiseSpec, SolverSpec, SweepSpec, build
from noisydeq.errors import NoisyDEQError
from noisydeq.families import family_spec_for_sweep, member_spec, prepared_member
from noisydeq.noise import Noise, NoiseStream, measured_snr_db, multiplicative
from noisydeq.summary import summary_json, summary_table
from noisydeq.tasks import load_task

# ------------------------------------------------------------------------ paper SNR scale


@pytest.mark.parametrize("width", [32, 128, 287, 467])
@pytest.mark.parametrize("snr_db", [0.0, 10.0, 30.0])
def test_paper_scale_realises_nominal_minus_10log10_width(width, snr_db):
    gen = torch.Generator().manual_seed(width)
    y = torch.randn(2048, width, generator=gen, dtype=torch.float64) * 2.0 - 0.3
    noisy = multiplicative(y, snr_db, NoiseStream.from_seed(3), scale="paper")
    assert abs(measured_snr_db(y, noisy) - (snr_db - 10 * math.log10(width))) < 0.2
    # the default scale at the same width realises the nominal SNR
    plain = multiplicative(y, snr_db, NoiseStream.from_seed(3))
    assert abs(measured_snr_db(y, plain) - snr_db) < 0.2


def test_paper_scale_through_the_noise_spec_and_a_model_sweep(tmp_path):
    """The sweep's model noise honours ``snr_scale``; its measured SNR column shows it."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from sweep_helpers import toy_models, toy_spec, toy_task

    from noisydeq.sweep import run_sweep

    y = torch.randn(512, 128, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noise = Noise(NoiseSpec(site="signal", snr_db=10.0, snr_scale="paper"),
                  NoiseStream.from_seed(1))
    assert abs(measured_snr_db(y, noise.apply("signal", y)) - (10 - 10 * math.log10(128))) < 0.2

    task = toy_task(n=1500, d=8)
    models = toy_models(task)
    spec = toy_spec(snr_db="0,10,20", max_rows=4500, chips=1, snr_scale="paper")
    res = run_sweep(spec, tmp_path / "paper", task=task, models=models, progress=False,
                    plots=False, jobs=1)
    for r in res.rows:
        want = r["snr_db"] - 10 * math.log10(r["width"])
        assert abs(r["measured_snr_db"] - want) < 0.2, r


def test_unknown_snr_scale_is_one_error_with_a_suggestion():
    with pytest.raises(NoisyDEQError,
                       match="snr_scale: unknown value 'papr'; did you mean 'paper'"):
        build(NoiseSpec, {"snr_scale": "papr"})
    with pytest.raises(NoisyDEQError, match="did you mean 'realised'"):
        build(SweepSpec, {"snr_scale": "realized", "noise_site": "signal"})
    with pytest.raises(NoisyDEQError, match="noise_site 'device'"):
        build(SweepSpec, {"snr_scale": "paper", "noise_site": "device"})


def test_family_training_noise_carries_the_scale():
    sweep = build(SweepSpec, {"noise_site": "signal", "snr_scale": "paper"})
    assert family_spec_for_sweep(sweep, 0, 10.0).noise().snr_scale == "paper"
    assert not family_spec_for_sweep(sweep, 0, math.inf).noise().active


# ------------------------------------------------------------------------------ FFW form


def test_ffw_form_enters_ffw_members_only(tmp_path):
    task = load_task("digits")
    dev = torch.device("cpu")
    keys = {}
    for form in (None, "eq57x", "eq57"):
        spec = build(FamilySpec, {"depths": [3], "ffw_form": form})
        assert member_spec(spec, task, "ffw", 3).ffw_form == (form or "eq57x")
        assert member_spec(spec, task, "deq", 3).ffw_form == "eq57x"  # the model default
        keys[form] = {k: prepared_member(spec, task, k, 3, tmp_path, dev)[2].name
                      for k in ("deq", "ffw")}
    assert keys[None] == keys["eq57x"]  # None means the default form
    assert keys["eq57"]["deq"] == keys[None]["deq"]  # the DEQ does not depend on it
    assert keys["eq57"]["ffw"] != keys[None]["ffw"]  # the FFW's cache key does


def test_sweep_passes_form_and_test_solver_to_the_family():
    ts = SolverSpec(name="unroll", max_iter=60, tol=0.05, stop="mean_rel", window=40)
    sweep = build(SweepSpec, {"ffw_form": "eq32", "test_solver": ts.model_dump()})
    fam = family_spec_for_sweep(sweep, 0, math.inf)
    assert fam.ffw_form == "eq32"
    assert fam.train_spec("deq").test_solver == ts
    # a DEQ-only setting does not reach the FFW's training spec (nor its cache key)
    assert fam.train_spec("ffw") == family_spec_for_sweep(
        build(SweepSpec, {"ffw_form": "eq32"}), 0, math.inf).train_spec("ffw")


@pytest.mark.parametrize("model", [SweepSpec, FamilySpec])
def test_ffw_form_bad_input(model):
    with pytest.raises(NoisyDEQError, match="unknown value 'eq75'; did you mean 'eq57'"):
        build(model, {"ffw_form": "eq75"})
    with pytest.raises(NoisyDEQError, match="has no 'ffw' member"):
        build(model, {"ffw_form": "eq57", "kinds": ["deq"]})
    assert build(model, {"kinds": ["deq"]}).ffw_form is None  # not given: fine


def _one_line(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert info.value.code == 2 and len(lines) == 1, err
    assert lines[0].startswith("noisydeq: error:") and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(("argv", "needle"), [
    (["sweep", "--ffw-form", "eq75"], "did you mean 'eq57'"),
    (["sweep", "--ffw-form", "eq57", "--set", 'kinds=["deq"]'], "has no 'ffw' member"),
    (["sweep", "--snr-scale", "papr"], "did you mean 'paper'"),
    (["sweep", "--snr-scale", "paper"], "noise_site 'device'"),
    (["sweep", "--set", "test_solver={max_iter=40, window=50}"], "must not exceed max_iter"),
    (["train", "--kind", "deq", "--ffw-form", "eq57"], "only an FFW has a layer form"),
    (["train", "--kind", "ffw", "--ffw-form", "eq3"], "did you mean 'eq32'"),
    (["train", "--snr-scale", "lit"], "snr_scale"),
    (["train", "--depths", "1", "--ffw-form", "zero"], "allowed: eq57x, eq57, eq32"),
])
def test_cli_bad_form_or_scale_is_one_line(capsys, tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    assert needle in _one_line(capsys, argv)
    assert not (tmp_path / "runs").exists()  # nothing written


def test_window_larger_than_threshold_is_still_refused():
    with pytest.raises(NoisyDEQError, match=r"window \(50\) must not exceed max_iter \(40\)"):
        build(SweepSpec, {"test_solver": {"max_iter": 40, "window": 50}})


# ------------------------------------------------------------------------------ summary


def _row(kind, snr, value, conv, div=0.0):
    return {"kind": kind, "depth": 1, "width": 8, "params": 72, "train_snr_db": math.inf,
            "snr_db": snr, "value": value, "metric": "accuracy", "chip": 0, "seed": 0,
            "converged_frac": conv, "diverged_frac": div}


def test_summary_marks_cells_whose_solves_did_not_all_converge():
    rows = [_row("deq", 0.0, 0.5, 0.25), _row("deq", 10.0, 0.8, 1.0),
            _row("ffw", 0.0, 0.4, 1.0), _row("ffw", 10.0, 0.7, 1.0, div=0.1)]
    text = summary_table(rows)
    deq = next(ln for ln in text.splitlines() if ln.strip().startswith("DEQ"))
    ffw = next(ln for ln in text.splitlines() if ln.strip().startswith("FFW"))
    assert "0.500~" in deq and "0.800~" not in deq and "0.800" in deq
    assert "~" not in ffw and "0.700*" in ffw
    assert "~ = some samples did not converge" in text and "* = some samples diverged" in text
    clean = summary_table([_row("deq", 0.0, 0.5, 1.0)])
    assert "~" not in clean
    recs = {(r["kind"], r["snr_db"]): r for r in summary_json(rows)}
    assert recs[("deq", 0.0)]["converged_frac"] == 0.25
    assert recs[("ffw", 0.0)]["converged_frac"] == 1.0


# ------------------------------------------------------------------------------ compare


def _toy_runs(tmp_path):
    """Two toy sweeps of one study, labelled as the two FFW forms (2 seeds each)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from sweep_helpers import toy_models, toy_spec, toy_task

    from noisydeq.sweep import run_sweep

    task = toy_task(n=60, d=8)
    runs = []
    for form in (None, "eq57"):
        models = toy_models(task, seed=0) + toy_models(task, seed=1)
        spec = toy_spec(snr_db="0,inf", chips=1, seeds=[0, 1], ffw_form=form)
        runs.append(run_sweep(spec, tmp_path / f"run-{form}", task=task, models=models,
                              progress=False, plots=False, jobs=1))
    return runs


def test_compare_pairs_deq_with_each_ffw_form(tmp_path, capsys):
    from noisydeq.compare import cells, comparison, load_run, markdown, verdict

    res = _toy_runs(tmp_path)
    runs = [load_run(r.run_dir.path) for r in res]
    assert [r.form for r in runs] == ["eq57x", "eq57"]
    data = comparison(runs, 0.0)
    assert set(data["ffw"]) == {"eq57x", "eq57"} and data["notes"] == []
    deq = cells(res[0].rows, "deq", 0.0)
    ffw = cells(res[0].rows, "ffw", 0.0)
    for key, d in deq.items():  # per-seed values are the table's rows, mean over chips
        for seed, value in d.by_seed.items():
            want = [r["value"] for r in res[0].rows if r["kind"] == "deq"
                    and r["snr_db"] == 0.0 and r["depth"] == key[1] and r["seed"] == seed]
            assert value == pytest.approx(sum(want) / len(want))
        diffs = [d.by_seed[s] - ffw[key].by_seed[s] for s in d.by_seed]
        expect = ("DEQ" if min(diffs) > 0 else "FFW" if max(diffs) < 0
                  else "equal" if min(diffs) == max(diffs) == 0 else "mixed")
        assert verdict(d, ffw[key], higher_is_better=True) == expect
    text = markdown(data)
    assert "FFW eq57x accuracy" in text and "FFW eq57 accuracy" in text
    assert text.count("| ∞ |") == 2  # one row per (training SNR, depth)
    assert main(["compare", str(res[0].run_dir.path), str(res[1].run_dir.path), "--json"]) is None
    out = json.loads(capsys.readouterr().out)
    assert set(out["ffw"]) == {"eq57x", "eq57"} and out["metric"] == "accuracy"


def test_compare_tables_text_is_pinned():
    """The comparison tables' SNR texts ('∞', '12.5 dB', 'train 12.5 dB − train ∞'), byte
    for byte as before they were written through summary.fmt_db."""
    from noisydeq.compare import Cell, markdown

    def c(width, vals):
        return Cell(width, dict(enumerate(vals)), [1.0, 0.5])

    deq = {(math.inf, 2): c(10, [0.8, 0.9]), (12.5, 2): c(10, [0.7, 0.75]),
           (-3.0, 1): c(8, [0.4, 0.5])}
    ffw = {"eq57x": {(math.inf, 2): c(0, [0.6, 0.95]), (12.5, 2): c(0, [0.6, 0.6])}}
    text = markdown({"metric": "accuracy", "snr_db": 2.5, "deq": deq, "ffw": ffw,
                     "notes": ["n"]})
    assert text == (
        "accuracy at 2.5 dB inference SNR; mean ± sample std over seeds (per seed)\n\n"
        "| training SNR | FFW depth | DEQ width | DEQ accuracy | DEQ converged "
        "| FFW eq57x accuracy | DEQ − FFW eq57x | better (every seed) |\n"
        "|---|---|---|---|---|---|---|---|\n"
        "| ∞ | 2 | 10 | 0.850 ± 0.071 (0.800, 0.900) | 0.75 "
        "| 0.775 ± 0.247 (0.600, 0.950) | +0.075 | mixed |\n"
        "| 12.5 dB | 2 | 10 | 0.725 ± 0.035 (0.700, 0.750) | 0.75 "
        "| 0.600 ± 0.000 (0.600, 0.600) | +0.125 | DEQ |\n"
        "| -3 dB | 1 | 8 | 0.450 ± 0.071 (0.400, 0.500) | 0.75 | - | - | - |\n\n"
        "change of the accuracy by training noise (paired by seed)\n\n"
        "| model | depth | train 12.5 dB − train ∞ | train -3 dB − train ∞ |\n"
        "|---|---|---|---|\n"
        "| DEQ | 2 | -0.125 (every seed) | - |\n"
        "| FFW eq57x | 2 | -0.175 | - |\n"
        "note: n")


def test_compare_bad_input_is_one_line(tmp_path, capsys):
    res = _toy_runs(tmp_path)
    a = str(res[0].run_dir.path)
    assert "not a finished sweep run" in _one_line(capsys, ["compare", str(tmp_path)])
    assert "no results at 5 dB" in _one_line(capsys, ["compare", a, "--snr", "5"])
    assert "two runs hold FFWs of form eq57x" in _one_line(capsys, ["compare", a, a])
    assert "--snr" in _one_line(capsys, ["compare", a, "--snr", "x"])


def test_a_noise_free_only_sweep_plots_without_the_depth_figure(tmp_path):
    """A grid of ∞ alone (e.g. to locate a family for the analyses) has no fixed-SNR panel."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from sweep_helpers import toy_models, toy_spec, toy_task

    from noisydeq.sweep import run_sweep

    task = toy_task(n=40)
    res = run_sweep(toy_spec(snr_db="inf", chips=1), tmp_path / "inf", task=task,
                    models=toy_models(task), progress=False, jobs=1)
    names = {p.name for p in res.figures}
    assert "metric_vs_snr.png" in names and "metric_vs_depth.png" not in names
