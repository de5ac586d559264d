"""Certify experiment files: both variants validate; Fig. 2 right reproduces the divergence
of the plain monDEQ's interval iteration on MNIST inputs; a Table-2 run end to end (tiny)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from noisydeq.certify.spec import CertifyExperimentSpec
from noisydeq.config import load_toml
from tests.certify.helpers import run_certify

ROOT = Path(__file__).resolve().parents[2]
MNIST = Path(os.environ.get("NOISYDEQ_TEST_MNIST", ROOT.parent / "shared" / "data" / "mnist"))
FILES = sorted((ROOT / "noisydeq" / "experiments").glob("certify-*.toml"))




@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_experiment_variants_validate(path):
    exp = load_toml(CertifyExperimentSpec, path)
    quick, full = exp.resolve("quick"), exp.resolve("full")
    if exp.kind == "table2":
        assert quick.eps_train == full.eps_train == [0.2, 0.3, 0.4]  # Table 3
        assert full.certify.get("eps", [0.1, 0.2, 0.3, 0.4]) == [0.1, 0.2, 0.3, 0.4]
        assert len(full.seeds) == 3 and full.family["task"] == "mnist10k"
        assert quick.train["epochs"] < full.train["epochs"]


def test_experiment_with_a_typo_is_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nkind = "table2"\n[certify]\nepss = [0.1]\n', encoding="utf-8")
    code, _, err = run_certify(capsys, str(bad), "--out", str(tmp_path / "o"))
    assert code == 2 and "epss" in err and "did you mean 'eps'" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_fig2_right_on_digits(capsys, tmp_path):
    exp = tmp_path / "fig2.toml"
    exp.write_text('name = "f"\nkind = "fig2"\n[fig2]\ntask = "digits"\nwidth = 32\n'
                   'alpha = [0.1, 1.0]\nn_iter = 300\nn_test = 50\n', encoding="utf-8")
    code, out, err = run_certify(capsys, str(exp), "--out", str(tmp_path / "run"))
    assert code == 0, err
    with open(tmp_path / "run" / "fig2.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    last = {(r["param"], float(r["alpha"])): float(r["mean_gap"]) for r in rows
            if int(r["iteration"]) == 300}
    mid = {(r["param"], float(r["alpha"])): float(r["mean_gap"]) for r in rows
           if int(r["iteration"]) == 200}
    for alpha in (0.1, 1.0):
        assert last[("mon", alpha)] > 1e3 * mid[("mon", alpha)]  # still growing
        assert last[("ibp", alpha)] == pytest.approx(mid[("ibp", alpha)], rel=0.01)  # settled
    assert (tmp_path / "run" / "figures" / "fig2_right.png").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not MNIST.is_dir(), reason="official MNIST test files not available")
def test_table2_pipeline_tiny(capsys, tmp_path, monkeypatch):
    """The Table-2 runner end to end on mnist10k, scaled down (width 8, 1 epoch, 100 test
    samples, one training radius): files, table and the certified ≤ PGD ≤ clean order."""
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    exp = tmp_path / "t2.toml"
    exp.write_text(
        'name = "t2"\nkind = "table2"\neps_train = [0.2]\nparams = ["ibp", "lben"]\n'
        '[family]\ntask = "mnist10k"\nkinds = ["mondeq", "ffw_relu"]\nhidden = 8\n'
        '[train]\nepochs = 1\nbatch_size = 256\nmax_train_samples = 1024\n'
        '[ibp]\nwarmup_epochs = 0\nramp_epochs = 1\n'
        '[certify]\neps = [0.1, 0.2]\nn_test = 100\npgd_steps = 3\n', encoding="utf-8")
    code, out, err = run_certify(capsys, str(exp), "--data-dir", str(MNIST),
                          "--out", str(tmp_path / "run"), "--quiet")
    assert code == 0, err
    with open(tmp_path / "run" / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["kind"], r["param"]) for r in rows} == {
        ("mondeq", "ibp"), ("mondeq", "lben"), ("ffw_relu", "")}
    for r in rows:
        assert int(r["violations"]) == 0
        assert float(r["certified_acc"]) <= float(r["pgd_acc"]) <= float(r["clean_acc"])
    table = (tmp_path / "run" / "table2.md").read_text(encoding="utf-8")
    assert "ε = 0.1 (train 0.2)" in table and "mondeq (lben)" in table


@pytest.mark.parametrize("family,quick,place,bad", [
    ('kinds = ["deq", "ffw"]', "", "[family]", "'deq' has"),
    ('kinds = ["mondeq", "lyadeq", "deq"]', "", "[family]", "'lyadeq', 'deq' have"),
    ('kinds = ["mondeq", "ffw"]', '[quick]\nfamily = {kinds = ["deq"]}\n', "[quick.family]",
     "'deq' has")])
def test_a_family_certify_cannot_take_is_refused_before_training(
        capsys, tmp_path, monkeypatch, family, quick, place, bad):
    """A table2 family of a tanh DEQ (or a LyaDEQ) was trained (~5 s on digits) and only
    then refused by the certificate's check of each model: now the file is refused as it
    loads, one line naming the table and the kinds certify takes; nothing trains, nothing
    is written."""
    from noisydeq import families

    def no_training(*a, **k):
        raise AssertionError("trained before the refusal")

    monkeypatch.setattr(families, "train_family", no_training)
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    exp = tmp_path / "t2.toml"
    exp.write_text(f'name = "t2"\nkind = "table2"\n[family]\ntask = "digits"\n{family}\n'
                   f'[certify]\neps = [0.1]\n{quick}', encoding="utf-8")
    code, _, err = run_certify(capsys, str(exp), "--out", str(tmp_path / "run"), "--quiet")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"noisydeq: error: {exp}: {place} kinds: certify needs "
                               "monotone or explicit models (mondeq, ffw_relu, ffw); "
                               f"{bad} no guaranteed interval fixed point"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t2.toml"]


@pytest.mark.parametrize("params,quick,place", [('params = ["ibp", "mon"]\n', "", ""),
                                                ("", '[quick]\nparams = ["mon"]\n', "[quick] ")])
def test_a_convolutional_mon_parameterisation_is_refused_before_training(
        capsys, tmp_path, monkeypatch, params, quick, place):
    """A convolutional monDEQ of param 'mon' was trained and then refused (I − |W| cannot be
    checked for a convolution, whatever the weights): refused as the file loads."""
    from noisydeq import families

    monkeypatch.setattr(families, "train_family", lambda *a, **k: pytest.fail("trained"))
    exp = tmp_path / "t2.toml"
    exp.write_text(f'name = "t2"\nkind = "table2"\n{params}[family]\ntask = "digits"\n'
                   'kinds = ["mondeq", "ffw_relu"]\ncell = "conv"\n[certify]\neps = [0.1]\n'
                   f"{quick}", encoding="utf-8")
    code, _, err = run_certify(capsys, str(exp), "--out", str(tmp_path / "run"), "--quiet")
    assert code == 2 and err.strip() == (
        f"noisydeq: error: {exp}: {place}params 'mon' with a convolutional cell: certify "
        "needs I − |W| ≻ 0, which cannot be checked for a convolution (without it the "
        "interval fixed point need not exist, Lemma 3.4); use 'ibp' or 'lben'"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t2.toml"]


def test_a_table2_family_without_kinds_is_table_2_s_pair():
    """Without kinds the family was the default deq + ffw, whose tanh DEQ certify refuses
    after training it: a table2 experiment's default is the IBP-MonDEQ and its explicit
    ReLU net."""
    from noisydeq.specs.base import build
    from noisydeq.specs.family import FamilySpec

    exp = build(CertifyExperimentSpec, {"name": "x", "family": {"task": "digits"}})
    base = build(FamilySpec, exp.family_base(exp.family)).model_dump()
    assert base["kinds"] == ["mondeq", "ffw_relu"]
    assert [exp.member_family(base, 0, 0.2, j, p)["kinds"] for j, p in
            enumerate(["ibp", "lben"])] == [["mondeq", "ffw_relu"], ["mondeq"]]


def test_the_command_line_s_seed_reaches_an_experiment_and_names_its_folder(capsys, tmp_path,
                                                                            monkeypatch):
    """`certify EXPERIMENT --seed N` was dropped (the options copied over the file's
    [certify] table left out --seed); and a run with options given goes to its own default
    folder, not the plain run's runs/<name>-<variant>."""
    from noisydeq.analysis import certify_experiments
    from noisydeq.analysis.certify_run import CertifyResult

    seen = []
    monkeypatch.setattr(certify_experiments, "run_table2", lambda exp, out, **kw: seen.append(
        (exp.certify, out)) or CertifyResult([], []))
    monkeypatch.chdir(tmp_path)
    exp = tmp_path / "t2.toml"
    exp.write_text('name = "t2"\nkind = "table2"\n[family]\ntask = "digits"\n'
                   '[certify]\neps = [0.1]\nseed = 1\n', encoding="utf-8")
    for argv in ([], ["--seed", "7"]):
        code, _, err = run_certify(capsys, str(exp), "--quiet", *argv)
        assert code == 0, err
    (plain, out0), (seeded, out1) = seen
    assert plain["seed"] == 1 and seeded["seed"] == 7
    assert out0 == Path("runs") / "t2-quick" and out1.name.startswith("t2-quick-")


@pytest.mark.skipif(not (MNIST / "t10k-images-idx3-ubyte.gz").is_file()
                    or (MNIST / "train-images-idx3-ubyte.gz").is_file(),
                    reason="needs an MNIST directory with the test files only")
@pytest.mark.parametrize("flags", [["--quiet"], ["--json"], []])
def test_a_quiet_experiment_still_says_the_task_notice(capsys, tmp_path, flags):
    """``certify EXPERIMENT -q`` hid the task's notice (task mnist, its training files absent:
    mnist10k instead): the user then did not know which data the figure is of. Like attack's
    and the cells-of-other-code lines, it is said on stderr under --quiet and --json too."""
    exp = tmp_path / "fig2.toml"
    exp.write_text('name = "f"\nkind = "fig2"\n[fig2]\ntask = "mnist"\nwidth = 8\n'
                   'alpha = [1.0]\nn_iter = 20\nn_test = 5\n', encoding="utf-8")
    code, out, err = run_certify(capsys, str(exp), "--data-dir", str(MNIST), "--out",
                                 str(tmp_path / "run"), *flags)
    assert code == 0, err
    notes = [ln for ln in err.splitlines() if ln.startswith("note: ")]
    assert len(notes) == 1 and "mnist10k" in notes[0], err
    assert "note:" not in out


def test_a_quiet_table2_run_says_the_task_notice(tmp_path, monkeypatch):
    """run_table2 hands the task's notice to ``notes`` (what --quiet still says), not to
    ``echo`` (silenced by --quiet); without ``notes`` it goes to ``echo`` as before."""
    from dataclasses import replace

    import noisydeq.analysis.certify_experiments as ce
    import noisydeq.tasks
    from noisydeq.certify.spec import CertifyExperimentSpec
    from noisydeq.tasks import load_task

    class Stop(Exception):
        pass

    def no_training(*a, **k):
        raise Stop

    task = replace(load_task("digits", seed=0), notice="digits stands in for mnist")
    monkeypatch.setattr(noisydeq.tasks, "load_task", lambda *a, **k: task)
    monkeypatch.setattr(ce, "train_models", no_training)
    exp = CertifyExperimentSpec.model_validate(
        {"name": "t2", "kind": "table2", "family": {"task": "digits"}}).resolve("quick")
    for notes in (True, False):
        said, echoed = [], []
        with pytest.raises(Stop):
            ce.run_table2(exp, tmp_path / f"run-{notes}", echo=echoed.append,
                          notes=said.append if notes else None)
        assert (said if notes else echoed) == ["note: digits stands in for mnist"]
        assert not (echoed if notes else said)
