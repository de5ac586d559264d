"""``noisydeq study``: spec validation, the grid of rows, resume, metrics, experiment files."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from noisydeq.cli import cli
from noisydeq.config import build, load_toml
from noisydeq.errors import NoisyDEQError
from noisydeq.studies import StudyFile, StudySpec, run_study
from noisydeq.studies.runner import load_study_task, model_spec
from noisydeq.tasks.base import sample_correct

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted(p for p in (ROOT / "noisydeq" / "experiments").glob("*.toml")
                 if "study" in p.read_text(encoding="utf-8").split("[quick]")[0])
FAST = {"solver": {"name": "unroll", "max_iter": 6, "tol": 1e-30, "stop": "abs", "window": 1},
        "test_solver": {"name": "unroll", "max_iter": 6, "tol": 1e-30, "stop": "abs",
                        "window": 1},
        "gradient": {"name": "bptt"}, "epochs": 1, "batch_size": 32}


def tiny(**over):
    base = {
        "task": "prefix_sums", "task_options": {"length": 8, "n_train": 64, "n_test": 16},
        "shifts": [4, 8, 16], "n_shift": 12, "train": FAST,
        "models": {"deq": {"kind": "deq", "cell": "conv1d", "width": 3, "weight_norm": False},
                   "ffw": {"kind": "ffw", "cell": "conv1d", "width": 3, "depth": 2,
                           "weight_norm": False}},
        "train_snr_db": ["inf", 0.0], "test_snr_db": ["inf", 0.0],
        "budgets": ["train", "scaled"], "budget": {"exponent": 1.0, "cap": 20},
    }
    return build(StudySpec, {**base, **over})


def test_grid_resume_and_metric(tmp_path):
    spec = tiny()
    res = run_study(spec, tmp_path / "run", plots=True)
    # deq: 2 train SNRs x 3 sizes x 2 budgets x 2 test SNRs; ffw: no budgets
    assert len(res.rows) == 2 * 3 * 2 * 2 + 2 * 3 * 2
    assert res.trained == 4 and res.loaded == 0
    from tests.load_helpers import assert_loads_declared

    df = assert_loads_declared(tmp_path / "run")  # load_results: the declared types
    assert df["shift"].dtype == "float64" and df["max_iter"].dtype == "int64"
    caps = {(r["shift"], r["budget"]): r["max_iter"] for r in res.rows if r["kind"] == "deq"}
    assert caps[(16.0, "scaled")] == 12 and caps[(4.0, "scaled")] == 3
    assert caps[(16.0, "train")] == 6
    assert {p.name for p in res.figures} == {"extrapolation.png", "extrapolation.svg",
                                             "extrapolation.csv"}
    # the figure's CSV is the plotted summary rows, exactly (paired train = test SNR)
    plotted = list(csv.DictReader(open(tmp_path / "run" / "figures" / "extrapolation.csv")))
    paired = [r for r in res.summary if r["test_snr_db"] == r["train_snr_db"]]
    assert {(r["model"], float(r["shift"]), float(r["value"])) for r in plotted} == {
        (r["model"], r["shift"], r["value"]) for r in paired}
    # the clean value is the fraction of fully correct strings, recomputed here
    task = load_study_task(spec)
    x, y = task.shifted(16, 12)
    from noisydeq.studies.runner import _build
    from noisydeq.train import train_model

    model = _build(spec, "ffw", task, 0)
    model = train_model(model, task, spec.train_spec("ffw", 0, math.inf),
                        out_dir=tmp_path / "run" / "models" / "ffw-s0-tinf").model
    with torch.no_grad():
        want = float(sample_correct(model.eval()(x), y).double().mean())
    row = next(r for r in res.rows if r["model"] == "ffw" and r["shift"] == 16.0
               and math.isinf(r["train_snr_db"]) and math.isinf(r["test_snr_db"]))
    assert row["value"] == pytest.approx(want)
    again = run_study(spec, tmp_path / "run", plots=False)
    # every evaluation served: no model trained or loaded
    assert (again.trained, again.loaded, again.served) == (0, 0, 4) and again.rows == res.rows
    with pytest.raises(NoisyDEQError, match="different config.*n_shift"):
        run_study(tiny(n_shift=5), tmp_path / "run")


def test_run_dir_is_signed_sealed_and_a_corrupt_cell_is_one_line(tmp_path):
    from noisydeq import store
    from noisydeq.errors import CorruptArtefact

    spec = tiny(shifts=[], budgets=["train"], train_snr_db=["inf"], test_snr_db=["inf"])
    out = tmp_path / "run"
    run_study(spec, out, plots=False)
    listed = store.verify_manifest(out)  # tables, spec and meta data match their digests
    assert {"results.csv", "summary.csv", "study.toml", "meta.json"} <= set(listed)
    assert (out / "study.toml").read_text().startswith(store.TEXT_DIGEST)
    cell = out / "cells" / "deq-s0-tinf.json"
    data = json.loads(cell.read_text())
    data["rows"][0]["value"] = 0.123456  # an edited result no longer matches its digest
    cell.write_text(json.dumps(data))
    with pytest.raises(CorruptArtefact, match="deq-s0-tinf.json.*digest.*delete it"):
        run_study(spec, out, plots=False)
    cell.unlink()  # deleted: that model is evaluated again, the others are loaded
    again = run_study(spec, out, plots=False)
    assert (again.trained, again.loaded, again.served) == (0, 1, 1)
    assert store.verify_manifest(out)
    (out / "study.toml").write_text((out / "study.toml").read_text() + "# edited\n")
    with pytest.raises(NoisyDEQError, match="study.toml"):
        run_study(spec, out, plots=False)


def test_test_noise_does_not_depend_on_the_evaluation_batch():
    from noisydeq.studies.evaluate import score

    spec = tiny()
    task = load_study_task(spec)
    torch.manual_seed(0)
    from noisydeq.models import build_model

    model = build_model(model_spec(spec.models["deq"], task), solver=None)
    x, y = task.shifted(16, 12)
    kw = dict(classification=True, noise=spec.noise(0.0), seed=3)
    a, b = score(model, x, y, batch=12, **kw), score(model, x, y, batch=5, **kw)
    clean = score(model, x, y, batch=12, classification=True, noise=spec.noise(math.inf), seed=3)
    assert a["position_acc"] == b["position_acc"] and a["mean_steps"] == b["mean_steps"]
    assert a["position_acc"] != clean["position_acc"]  # the noise does act


def test_paired_and_solver_grid(tmp_path):
    spec = tiny(paired=True, budgets=["train"], shifts=[], train_snr_db=[0.0],
                test_solvers={"a": {"name": "unroll", "max_iter": 3, "window": 1},
                              "b": {"name": "anderson", "max_iter": 3, "window": 1}})
    rows = run_study(spec, tmp_path / "r", plots=False).rows
    deq = [r for r in rows if r["kind"] == "deq"]
    assert {r["solver"] for r in deq} == {"a", "b"} and {r["test_snr_db"] for r in rows} == {0.0}
    assert all(r["shift"] == 8.0 for r in rows)


@pytest.mark.parametrize("over,match", [
    ({"models": {}}, "at least one model"),
    ({"models": {"a b": {"kind": "deq"}}}, "plain word"),
    ({"models": {"m": {"kind": "deq", "cel": "conv1d"}}}, "cel"),
    ({"models": {"m": {"kind": "deq", "in_features": 3}}}, "comes from the task"),
    ({"budget": None}, "needs a budget"),
    ({"fixed_snr_db": 5.0}, "not in test_snr_db"),
    ({"train": {"epoch": 1}}, "did you mean 'epochs'"),
    ({"seeds": []}, "must not be empty"),
])
def test_bad_specs_are_one_line(over, match):
    with pytest.raises(NoisyDEQError, match=match):
        tiny(**over)


@pytest.mark.parametrize("over,match", [
    ({"task": "mazes", "task_options": {"size": 9, "n_train": 4, "n_test": 2},
      "shifts": [9, 12]}, "odd"),
    ({"task_options": {"length": 0}}, "length"),
    ({"task": "matrix_add", "task_options": {"n_train": 4, "n_test": 2}, "shifts": [1, -2],
      "budgets": ["train"]}, "scale"),
    ({"task": "digits", "task_options": {}, "shifts": []}, "scaled"),
    ({"task": "digits", "task_options": {}, "shifts": [], "budgets": ["train"]},
     "one label per sample"),
])
def test_bad_sizes_fail_before_anything_is_written(tmp_path, over, match):
    with pytest.raises(NoisyDEQError, match=match):
        run_study(tiny(**over), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_errors_are_one_line(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["study", str(tmp_path / "nope.toml")], standalone_mode=False,
                      catch_exceptions=True)
    assert isinstance(r.exception, NoisyDEQError) and "file not found" in str(r.exception)
    path = ROOT / "noisydeq" / "experiments" / "algorithmic-prefix-sums.toml"
    r = runner.invoke(cli, ["study", str(path), "--set", "seedz=[0]"], standalone_mode=False)
    assert isinstance(r.exception, NoisyDEQError) and "did you mean 'seeds'" in str(r.exception)
    r = runner.invoke(cli, ["run", str(path)], standalone_mode=False)
    assert isinstance(r.exception, NoisyDEQError) and "noisydeq study" in str(r.exception)


def test_experiment_files_are_valid_and_complete():
    assert {p.stem for p in STUDIES} >= {"algorithmic-prefix-sums", "algorithmic-mazes",
                                        "algorithmic-matrix-add", "mdeq-mnist"}
    figs = set()
    for p in STUDIES:
        exp = load_toml(StudyFile, p)
        figs |= set(exp.figures)
        quick, full = exp.resolve("quick"), exp.resolve("full")
        assert set(quick.models) == set(full.models)
        assert {m.kind for m in full.models.values()} == {"deq", "ffw"}
        if exp.name.startswith("algorithmic"):
            assert quick.noise_site == "state" and set(full.train_snr_db) == {math.inf, 0.0}
            assert len(full.seeds) == 3 and len(full.shifts) >= 10
    assert {"18a", "18b", "18c", "1e", "6"} <= figs


def test_prefix_sum_ffw_starts_delta_orthogonal_at_its_own_learning_rate():
    """The 32-layer prefix-sum FFW does not train from PyTorch's default initialisation
    (docs/reproduction.md): the file gives it the delta-orthogonal one and lr 1e-3, in both
    variants, and leaves the DEQ at the default initialisation and the study's lr."""
    exp = load_toml(StudyFile, ROOT / "noisydeq" / "experiments" / "algorithmic-prefix-sums.toml")
    for variant in ("quick", "full"):
        spec = exp.resolve(variant)
        assert spec.models["ffw"].model["init"] == "delta_orthogonal"
        assert "init" not in spec.models["deq"].model
        assert spec.train_spec("ffw", 0, math.inf).lr == 1e-3
        assert spec.train_spec("deq", 0, math.inf).lr == 3e-3
        assert spec.train_spec("ffw", 0, math.inf).epochs == spec.train_spec("deq", 0, 0.0).epochs


SCALE = {
    "algorithmic-prefix-sums": ["--set", "task_options={length=8, n_train=48, n_test=8}",
                                "--set", "shifts=[8, 16]"],
    "algorithmic-mazes": ["--set", "task_options={size=5, n_train=32, n_test=8}",
                          "--set", "shifts=[5, 7]"],
    "algorithmic-matrix-add": ["--set", "task_options={n_train=64, n_test=16, side=4}",
                               "--set", "shifts=[1.0, 10.0]"],
    "mdeq-mnist": ["--set", "test_snr_db=[0, 10, inf]", "--set",
                   'test_solvers={broyden={name="broyden", max_iter=4, window=1}, '
                   'stochastic={name="stochastic", max_iter=4, window=2}}'],
}


@pytest.mark.slow
@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_quick_variant_runs_end_to_end(tmp_path, path):
    train = ('train={epochs=1, batch_size=16, max_train_samples=64, solver={name="unroll", '
             'max_iter=4, tol=1e-30, stop="abs", window=1}, test_solver={name="unroll", '
             'max_iter=4, tol=1e-30, stop="abs", window=1}}')
    args = ["study", str(path), "--quick", "--json", "--out", str(tmp_path / "run"),
            "--set", "seeds=[0]", "--set", "n_shift=8", "--set", train,
            *SCALE.get(path.stem, [])]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output[-2000:]
    rep = json.loads(r.output)
    assert rep["summary"] and all(p.endswith((".png", ".svg", ".csv")) for p in rep["figures"])
    assert rep["figures"]


@pytest.mark.slow
def test_analysis_commands_take_a_study_run_dir(tmp_path):
    spec = tiny(train_snr_db=["inf"], test_snr_db=["inf"], budgets=["train"], shifts=[])
    run_study(spec, tmp_path / "run", plots=False)
    runner = CliRunner()
    r = runner.invoke(cli, ["sensitivity", "--family", str(tmp_path / "run"), "--samples", "3",
                            "--inputs", "2", "--precision", "0"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rows = (tmp_path / "run" / "analysis" / "sensitivity" / "sensitivity.csv").read_text()
    # DEQ (depth label 1) and FFW (2 layers) are not a depth pair: one row each
    assert rows.count("\n") == 3 and ",3,60," in rows
    r = runner.invoke(cli, ["spectrum", "--family", str(tmp_path / "run"), "--inputs", "2"],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "deq" in r.output and "ffw" in r.output


@pytest.mark.parametrize("sets,expected", [
    (["seeds=[abc]"], "[quick] --set: seeds: a list, e.g. seeds = [0] (got '[abc]')"),
    (['models={deq={kind="deq", cell="conv1d", widht=3}}'],
     "[quick] --set: models.deq: unknown key 'widht'; did you mean 'width'?"),
    (["train={lr=-1}"],
     "[quick] --set: train: lr: must be > 0, got -1 (allowed: finite, 0 < value ≤ 1000)"),
    (['models={deq={kind="deq", train={lr=-1}}}'],
     "[quick] --set: models.deq.train: lr: must be > 0, got -1 (allowed: finite, 0 < value ≤ "
     "1000)"),
    (["budget=1"], "[quick] --set: budget: must be a table"),
    (["--full", "fixed_snr_db=5"], "[full]: fixed_snr_db 5 is not in test_snr_db"),
])
def test_study_errors_name_fields_not_classes(capsys, sets, expected):
    """A bad study is one line naming the user's keys once — no internal class names
    (StudyFile, StudySpec, BudgetSpec) and no doubled prefixes (``train: train:``)."""
    from tests.cli_helpers import run_cli

    path = ROOT / "noisydeq" / "experiments" / "algorithmic-prefix-sums.toml"
    argv = ["study", str(path)]
    for s in sets:
        argv += [s] if s.startswith("--") else ["--set", s]
    code, _out, err = run_cli(argv, capsys)
    errors = [ln for ln in err.splitlines() if ln.startswith("noisydeq: error:")]
    assert code == 2 and len(errors) == 1, err
    assert expected in errors[0], errors[0]
    for internal in ("StudyFile", "StudySpec", "BudgetSpec", "TrainSpec", "ModelSpec",
                     "train: train", "model: model", "instance of"):
        assert internal not in errors[0], errors[0]


def test_broken_experiment_file_is_one_line_without_class_names(tmp_path, capsys):
    from tests.cli_helpers import run_cli

    text = (ROOT / "noisydeq" / "experiments" / "algorithmic-prefix-sums.toml").read_text(
        encoding="utf-8")
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("seeds = [0, 1, 2]", 'seeds = "x"', 1), encoding="utf-8")
    code, _out, err = run_cli(["study", str(bad), "--quick"], capsys)
    errors = [ln for ln in err.splitlines() if ln.startswith("noisydeq: error:")]
    assert code == 2 and len(errors) == 1, err
    # the bad value is in the base [study] table (the quick variant overrides it)
    assert errors[0] == (f"noisydeq: error: {bad}: [study]: seeds: a list, e.g. seeds = [0] "
                         "(got 'x')")


def test_a_study_whose_grid_draws_no_figure_says_so(tmp_path):
    """One shift, one test SNR, no fixed_snr_db: no figure. `noisydeq plot` of such a study
    printed nothing and exited 0; it (and the study's own report) now says why in a line."""
    from noisydeq.studies.plots import NO_FIGURE, plot_study

    grid = {"shifts": [8], "budgets": ["train"], "train_snr_db": ["inf"],
            "test_snr_db": ["inf"]}
    a = tmp_path / "s0"
    res = run_study(tiny(seeds=[0], **grid), a, plots=False)
    assert plot_study(res.summary, tiny(seeds=[0], **grid), tmp_path / "f") == []
    r = CliRunner().invoke(cli, ["plot", str(a)])
    assert r.exit_code == 0 and r.output.strip() == NO_FIGURE, r.output
    r = CliRunner().invoke(cli, ["plot", str(a), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0 and NO_FIGURE in r.output, r.output
    from tests.fuzz.cases import STUDY  # a tiny study file: one shift, one test SNR

    (tmp_path / "s.toml").write_text(STUDY, encoding="utf-8")
    r = CliRunner().invoke(cli, ["study", str(tmp_path / "s.toml"), "--quiet", "--threads",
                                 "1", "--out", str(tmp_path / "cli")])
    assert r.exit_code == 0 and NO_FIGURE in r.output, r.output
    assert not any(ln.startswith("figure:") for ln in r.output.splitlines()), r.output


def test_study_command_shows_each_models_training_batches(tmp_path, capsys, monkeypatch):
    """A study's models trained with no progress of their own (run_study's progress=False):
    a log of an hours-long quick study held only 'study: M:SS elapsed' heartbeats. The
    command now shows each model's batch count as a sweep's training does; --quiet not."""
    from tests.cli_helpers import run_cli
    from tests.fuzz.cases import STUDY

    monkeypatch.setenv("NOISYDEQ_PROGRESS", "lines")
    monkeypatch.setenv("NOISYDEQ_PROGRESS_EVERY", "0")  # a line per batch: the run is short
    (tmp_path / "s.toml").write_text(STUDY.replace("epochs = 0", "epochs = 1"),
                                     encoding="utf-8")
    argv = ["study", str(tmp_path / "s.toml"), "--threads", "1", "--out"]
    code, _out, err = run_cli([*argv, str(tmp_path / "a")], capsys)
    assert code == 0, err
    assert any(ln.startswith("noisydeq: deq-s0-tinf ") and " batches in " in ln
               for ln in err.splitlines()), err  # the model's closing line
    code, _out, err = run_cli([*argv, str(tmp_path / "b"), "--quiet"], capsys)
    assert code == 0 and "batches" not in err, err


def test_plot_redraws_a_study_and_merges_runs_of_one_seed_each(tmp_path):
    """``noisydeq plot`` draws a study's figures from its table: alone into its own figures/
    (then listed in SHA256SUMS), or several runs of one task (one seed each) as one figure
    whose points are the mean, min and max over the runs' per-seed rows — recomputed here
    from their results.csv. A row two runs hold, a run given twice, another task, a
    non-study among studies and several runs without --out are each one line."""
    import statistics

    from noisydeq import store

    grid = {"shifts": [4, 8], "budgets": ["train"], "train_snr_db": ["inf"],
            "test_snr_db": ["inf"]}
    a, b = tmp_path / "s0", tmp_path / "s1"
    run_study(tiny(seeds=[0], **grid), a, plots=False)
    run_study(tiny(seeds=[1], **grid), b, plots=False)
    runner = CliRunner()
    r = runner.invoke(cli, ["plot", str(a)])
    assert r.exit_code == 0, r.output
    assert "figures/extrapolation.png" in store.verify_manifest(a)
    out = tmp_path / "figs"
    r = runner.invoke(cli, ["plot", str(a), str(b), "--out", str(out), "--title", "toy"])
    assert r.exit_code == 0, r.output
    per_seed = [row for d in (a, b) for row in csv.DictReader(open(d / "results.csv"))]
    plotted = list(csv.DictReader(open(out / "extrapolation.csv")))
    assert {(p["model"], float(p["shift"])) for p in plotted} == {
        (m, s) for m in ("deq", "ffw") for s in (4.0, 8.0)}
    for p in plotted:
        vals = [float(r["value"]) for r in per_seed if r["model"] == p["model"]
                and float(r["shift"]) == float(p["shift"]) and r["budget"] == p["budget"]]
        assert sorted(int(r["seed"]) for r in per_seed if r["model"] == p["model"]
                      and float(r["shift"]) == float(p["shift"])) == [0, 1]
        assert int(p["seeds"]) == 2
        assert float(p["value"]) == pytest.approx(statistics.fmean(vals))
        assert (float(p["value_min"]), float(p["value_max"])) == (min(vals), max(vals))

    def error(*args):
        res = runner.invoke(cli, ["plot", *map(str, args)], standalone_mode=False)
        assert isinstance(res.exception, NoisyDEQError), res.output
        return str(res.exception)

    again = tmp_path / "s0-again"
    run_study(tiny(seeds=[0], **grid), again, plots=False)
    assert "both hold the row of model 'deq', seed 0" in error(a, again, "--out", out)
    assert "given twice" in error(a, b, a, "--out", out)
    assert "into --out DIR only" in error(a, b)
    assert "not a study run directory" in error(a, tmp_path / "none", "--out", out)
    other = tmp_path / "matrix"
    run_study(tiny(task="matrix_add", task_options={"n_train": 32, "n_test": 8},
                   shifts=[1.0, 2.0], budgets=["train"], train_snr_db=["inf"],
                   test_snr_db=["inf"], n_shift=8,
                   models={"ffw": {"kind": "ffw", "cell": "mlp_stack", "width": 8,
                                   "layers": 1, "depth": 1}}),
              other, plots=False)
    assert "only studies of one task" in error(a, other, "--out", out)
    assert not (tmp_path / "figs" / "SHA256SUMS").exists()


def test_study_title_and_labels_say_seed_counts_when_lines_differ():
    """A merged figure whose lines average 2 and 3 seeds: the title gives the range and each
    line's label its own count; one count for every line stays in the title alone."""
    from noisydeq.studies.plots import _seeds_label, study_title

    deq = [{"model": "deq", "seeds": 3, "task": "mazes", "noise_site": "state"}]
    ctrl = [{"model": "deq", "seeds": 2, "task": "mazes", "noise_site": "state"}]
    rows = deq + ctrl
    assert "2-3 per line" in study_title(rows, "t")
    assert _seeds_label(deq, rows) == ", 3 seeds" and _seeds_label(ctrl, rows) == ", 2 seeds"
    assert "over 3 seeds" in study_title(deq, "t") and _seeds_label(deq, deq) == ""
