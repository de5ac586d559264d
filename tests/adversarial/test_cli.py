"""``noisydeq train --adversarial …`` and ``noisydeq adversarial``: bad input is one line,
nothing written; the experiment end to end at toy scale."""

import csv
import json

import pytest

from tests.cli_helpers import one_line_error as one_line
from tests.cli_helpers import run_cli as run


@pytest.mark.parametrize("argv, needle", [
    (["--adversarial", "pgdd"], "did you mean 'pgd'"),
    (["--adversarial", "pgd", "--adv-eps", "1.5"], "[0, 1]"),
    (["--adversarial", "pgd", "--adv-eps", "-0.1"], "[0, 1]"),
    (["--adversarial", "trades", "--trades-beta", "-1"], "TRADES weight"),
    (["--adversarial", "pgd", "--adv-steps", "0"], "steps"),
    (["--adversarial", "pgd", "--adv-warmup", "-1"], "--adv-warmup: must be ≥ 0"),
    (["--adversarial", "pgd", "--adv-warmup", "inf"], "finite number"),
    (["--adv-eps", "0.1"], "give --adversarial pgd|trades"),
    (["--adversarial", "none", "--adv-eps", "0.1"], "need an adversarial method"),
    (["--kind", "ffw", "--random-threshold"], "a defence for DEQs"),
    (["--kind", "ffw", "--random-state"], "a defence for DEQs"),
    (["--preset", "adversarial-quick", "--random-state"], "training solver to be one of"),
    (["--milestones", "4,x"], "--milestones"),
    (["--kind", "ffw", "--spectral-cap", "0.9"], "caps the single W of a DEQ"),
    (["--cell", "residual", "--spectral-cap", "0.9"], "caps the single W of a DEQ"),
    (["--spectral-cap", "0"], "--spectral-cap: must be > 0, got 0.0"),
    (["--preset", "adversarial-quik"], "did you mean 'adversarial-quick'"),
])
def test_train_bad_input_is_one_line(capsys, tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["train", "--task", "digits", *argv, "--quiet"], capsys)
    one_line(code, err, needle)
    assert not (tmp_path / "runs").exists()


EXP = "noisydeq/experiments/adversarial-fig3.toml"


@pytest.mark.parametrize("sets, needle", [
    (["grid.defences=['none','x-10bd']"], "unknown training defence"),
    (["grid.methods=['pgd','madry']"], "unknown method 'madry'"),
    (["grid.train_preset='adversarail'"], "did you mean 'adversarial'"),
    (["train.adversarial={eps=2.0}"], "[0, 1]"),
    (["evaluations.curves.defences='entropy:tf=0'"], "T_f must be a positive integer"),
    (["evaluations.nope.samples=3"], "no evaluation 'nope'"),
    # a --set typo was labelled [quick.grid], the file's table: name where it was written
    (["grid.x=1"], "--set grid: unknown key 'x' (allowed: methods,"),
    (["grid.kinds=['deq','fw']"],
     "--set grid: kinds: unknown model kind 'fw'; did you mean 'ffw'? (allowed: deq, ffw)"),
    (["evaluations.curves.sampls=3"],
     "--set evaluations.curves: unknown key 'sampls'; did you mean 'samples'?"),
    (["grid.defences=['x-0db','z-0db']", "evaluations.curves.transfer_from='none'"],
     "evaluations.curves.transfer_from: 'none' is not a training defence of the grid "
     "(grid.defences: x-0db, z-0db)"),
])
def test_experiment_bad_input_is_one_line(capsys, tmp_path, sets, needle):
    import pathlib

    exp = str(pathlib.Path(__file__).parents[2] / EXP)
    argv = ["adversarial", exp, "--out", str(tmp_path / "x")]
    for s in sets:
        argv += ["--set", s]
    code, _, err = run(argv, capsys)
    one_line(code, err, needle)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_experiment_end_to_end_on_digits(capsys, tmp_path, monkeypatch):
    """A toy grid (PGD-AT x {none, threshold}, one epoch) trains, attacks, writes its
    tables and figures; a second run loads the models and the cells (same table)."""
    import pathlib

    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    exp = str(pathlib.Path(__file__).parents[2] / EXP)
    argv = ["adversarial", exp, "--out", str(tmp_path / "e"), "--quiet", "--json",
            "--set", "family.task='digits'", "--set", "family.hidden=16",
            "--set", "grid.seeds=[0]", "--set", "grid.methods=['pgd']",
            "--set", "grid.defences=['none','threshold']",
            "--set", "train.epochs=1", "--set", "train.max_train_samples=200",
            "--set", "train.adversarial={steps=2,val_steps=2}",
            "--set", "evaluations.*.samples=12",
            "--set", "evaluations.curves.steps=[1,2]",
            "--set", "evaluations.curves.eps=[0.0,0.3]",
            "--set", "evaluations.curves.defences='final,entropy:r=2,tf=4'"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["models"] == 3  # DEQ and FFW without defence, DEQ with the threshold
    summary = pathlib.Path(report["summary"]["curves"])
    with open(summary) as fh:
        rows = list(csv.DictReader(fh))
    ids = {r["model_id"] for r in rows}
    assert any(i.endswith("-thr-pgd") for i in ids) and any(i.startswith("ffw") for i in ids)
    assert {r["defence"] for r in rows if r["kind"] == "deq"} >= {"final"}
    assert any(r["defence"].startswith("entropy") for r in rows)
    assert all(0.0 <= float(r["clean"]) <= 1.0 for r in rows)
    figs = list((summary.parent / "figures").glob("*.png"))
    assert figs
    from tests.load_helpers import assert_loads_declared

    # every evaluation's attack table, loaded as one frame with the declared types
    df = assert_loads_declared(tmp_path / "e")
    assert df["value"].dtype == "float64" and df["early_n"].dtype == "int64"
    first = summary.read_text()
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert summary.read_text().split("train_seconds")[0] == first.split("train_seconds")[0]


def test_every_adversarial_experiment_resolves():
    import pathlib

    from noisydeq.analysis.adversarial_experiment import load_experiment

    shipped = pathlib.Path(__file__).parents[2] / "noisydeq" / "experiments"
    files = sorted(shipped.glob("adversarial-*.toml"))
    assert len(files) >= 2
    for f in files:
        exp = load_experiment(f)
        for variant in ("quick", "full"):
            res = exp.resolve(variant)
            assert res.cells and all(c.spec.kinds for c in res.cells if c.defence == "none")


def test_documented_small_conv_variant_resolves():
    """The small conv variant of ``adversarial-fig3`` documented in docs/robustness-conv.md
    (``--set`` overrides of the quick variant) gives the conv DEQ/FFW of 8 channels with the
    quick preset shortened to 4 epochs (ε ramp 2, learning rate × 0.1 from epoch 3), the
    Tables 5-6 solver and adversary otherwise."""
    import pathlib

    from noisydeq.analysis.adversarial_experiment import load_experiment
    from noisydeq.commands.adversarial import nested_sets

    exp = load_experiment(pathlib.Path(__file__).parents[2] / EXP)
    sets = ('family.cell="conv"', "family.hidden=8", "train.epochs=4",
            "train.optimizer={amsgrad=true, milestones=[3], gamma=0.1}",
            "train.adversarial.warmup_epochs=2", "grid.seeds=[0]", 'grid.methods=["pgd"]',
            'grid.defences=["none"]')
    res = exp.resolve("quick", **nested_sets(sets, list(exp.evaluations)))
    (cell,) = res.cells
    assert cell.spec.cell.name == "conv" and cell.spec.hidden == 8
    assert cell.spec.kinds == ["deq", "ffw"]
    for kind in cell.spec.kinds:
        t = cell.spec.train_spec(kind)
        assert (t.epochs, t.batch_size) == (4, 64)
        assert t.optimizer.amsgrad and t.optimizer.milestones == [3]
        adv = t.adversarial
        assert (adv.method, adv.eps, adv.step, adv.steps, adv.warmup_epochs) == (
            "pgd", 0.3, 0.1, 10, 2.0)
    deq = cell.spec.train_spec("deq")
    assert (deq.solver.name, deq.solver.max_iter) == ("broyden", 8)
    assert (deq.gradient.name, deq.gradient.phantom_steps) == ("phantom", 9)


def test_documented_conv_budget_variant_resolves():
    """The conv run at a budget where both cells learn (docs/robustness-conv.md): the 8-channel
    conv DEQ/FFW, 4 epochs on the first 5,000 training images at learning rate 5e-3, a
    5-step inner PGD (step 2.5ε/5 = 0.15) after a 1.5-epoch ε warm-up, evaluated by PGD-10
    and PGD-50 at the paper's step 0.1."""
    import pathlib

    from noisydeq.analysis.adversarial_experiment import load_experiment
    from noisydeq.commands.adversarial import nested_sets

    exp = load_experiment(pathlib.Path(__file__).parents[2] / EXP)
    sets = ('family.cell="conv"', "family.hidden=8", "train.epochs=4",
            "train.max_train_samples=5000", "train.lr=0.005",
            "train.optimizer={amsgrad=true, milestones=[3], gamma=0.1}",
            "train.adversarial.warmup_epochs=1.5", "train.adversarial.steps=5",
            "train.adversarial.step=0.15", 'grid.kinds=["deq"]', "grid.seeds=[0]",
            'grid.methods=["pgd"]', 'grid.defences=["none"]',
            'evaluations.curves.attacks=["pgd-eps","pgd-steps"]',
            "evaluations.curves.steps=[10,50]", "evaluations.curves.samples=100",
            "evaluations.autoattack.samples=50")
    res = exp.resolve("quick", **nested_sets(sets, list(exp.evaluations)))
    (cell,) = res.cells
    assert cell.spec.cell.name == "conv" and cell.spec.hidden == 8 and cell.spec.kinds == ["deq"]
    t = cell.spec.train_spec("deq")
    assert (t.epochs, t.batch_size, t.lr, t.max_train_samples) == (4, 64, 0.005, 5000)
    assert t.optimizer.amsgrad and t.optimizer.milestones == [3]
    adv = t.adversarial
    assert (adv.method, adv.eps, adv.step, adv.steps, adv.warmup_epochs, adv.val_steps) == (
        "pgd", 0.3, 0.15, 5, 1.5, 10)
    assert (t.solver.name, t.solver.max_iter, t.gradient.phantom_steps) == ("broyden", 8, 9)
    curves = res.evaluations["curves"]
    assert (curves["steps"], curves["alpha"], curves["samples"]) == ([10, 50], 0.1, 100)


def test_documented_spectral_cap_variant_resolves():
    """The capped conv DEQ of docs/robustness-conv.md ("Keeping the conv DEQ convergent"): the
    budget variant with ``train.spectral_cap=0.9`` reaches the DEQ's spec and is left out of
    an FFW member's (DEQ-only setting)."""
    import pathlib

    from noisydeq.analysis.adversarial_experiment import load_experiment
    from noisydeq.commands.adversarial import nested_sets

    exp = load_experiment(pathlib.Path(__file__).parents[2] / EXP)
    sets = ('family.cell="conv"', "family.hidden=8", "train.spectral_cap=0.9",
            "grid.seeds=[0]", 'grid.methods=["pgd"]', 'grid.defences=["none"]')
    res = exp.resolve("quick", **nested_sets(sets, list(exp.evaluations)))
    (cell,) = res.cells
    assert cell.spec.train_spec("deq").spectral_cap == 0.9
    assert cell.spec.train_spec("ffw").spectral_cap is None


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_documented_conv_defence_grid_resolves(method):
    """The conv grid with the training defences (docs/robustness-conv.md, "The conv variant with
    the training defences" for PGD-AT, "TRADES with the training defences"): the capped conv
    DEQ with noise on x or z at 0 / 10 dB or the random threshold keeps the cap, the budget
    and the method (TRADES: β = 6) in every defence's spec; the conv FFW with noise on z gets
    its noise and no cap; AA-rand is evaluated beside AA."""
    import pathlib

    from noisydeq.analysis.adversarial_experiment import load_experiment
    from noisydeq.commands.adversarial import nested_sets

    exp = load_experiment(pathlib.Path(__file__).parents[2] / EXP)
    budget = ('family.cell="conv"', "family.hidden=8", "train.epochs=4",
              "train.max_train_samples=5000", "train.lr=0.005",
              "train.optimizer={amsgrad=true, milestones=[3], gamma=0.1}",
              "train.adversarial.warmup_epochs=1.5", "train.adversarial.steps=5",
              "train.adversarial.step=0.15", "grid.seeds=[0]", f'grid.methods=["{method}"]',
              'evaluations.autoattack.attacks=["aa","aa-rand"]')
    deq_sets = (*budget, "train.spectral_cap=0.9", 'grid.kinds=["deq"]',
                'grid.defences=["x-0db","x-10db","z-0db","z-10db","threshold"]')
    res = exp.resolve("quick", **nested_sets(deq_sets, list(exp.evaluations)))
    expect = {"x-0db": ("input", 0.0), "x-10db": ("input", 10.0), "z-0db": ("state", 0.0),
              "z-10db": ("state", 10.0), "threshold": ("none", float("inf"))}
    assert sorted(c.defence for c in res.cells) == sorted(expect)
    for cell in res.cells:
        assert cell.spec.kinds == ["deq"] and cell.spec.cell.name == "conv"
        t = cell.spec.train_spec("deq")
        assert t.spectral_cap == 0.9 and (t.epochs, t.lr, t.max_train_samples) == (4, 0.005, 5000)
        assert (t.noise.site, t.noise.snr_db) == expect[cell.defence]
        assert t.solver.random_threshold == (cell.defence == "threshold")
        assert (cell.method, t.adversarial.method, t.adversarial.beta) == (method, method, 6.0)
    assert res.evaluations["autoattack"]["attacks"] == ["aa", "aa-rand"]
    ffw_sets = (*budget, 'grid.kinds=["ffw"]', 'grid.defences=["z-0db","z-10db"]')
    res = exp.resolve("quick", **nested_sets(ffw_sets, list(exp.evaluations)))
    assert sorted(c.defence for c in res.cells) == ["z-0db", "z-10db"]
    for cell in res.cells:
        t = cell.spec.train_spec("ffw")
        assert cell.spec.kinds == ["ffw"] and t.spectral_cap is None
        assert (t.noise.site, t.noise.snr_db) == expect[cell.defence]
        assert t.adversarial.method == method
