"""A LyaDEQ as a citizen of the framework: deployed on every device, trained by
``train_model`` (cosine schedule, solver checks), a kind of families and sweeps, the train
and lyapunov CLIs, and the attack/device experiment driver end to end (tiny)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from noisydeq import hardware
from noisydeq.cli import cli
from noisydeq.config import FamilySpec, SolverSpec, SweepSpec, TrainSpec, build
from noisydeq.errors import NoisyDEQError
from noisydeq.families import train_family
from noisydeq.models import build_model
from noisydeq.tasks import load_task
from noisydeq.train import epoch_lr, train_model

SPEC = {"kind": "lyadeq", "in_features": 64, "out_features": 10, "width": 16,
        "lyapunov": {"icnn_hidden": [8]}}


def _model(variant: str = "both", seed: int = 0):
    torch.manual_seed(seed)
    return build_model({**SPEC, "lyapunov": {"variant": variant, "icnn_hidden": [8]}}).eval()


@pytest.mark.parametrize("preset", hardware.preset_names())
def test_deploys_on_every_device_with_the_certificate_digital(preset):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dev = hardware.get_device(preset).deploy(model)
    layers = hardware.device_layers(dev)
    assert set(layers) == {"cell.proj.U", "cell.W1", "cell.W2", "head"}
    assert not any(isinstance(m, hardware.DeviceLayer) for m in dev.lyapunov.modules())
    W = model.head.weight.detach()
    assert torch.equal(layers["head"].weight, W)  # programmed with the orthogonal value
    x = torch.rand(8, 64)
    with torch.no_grad():
        y = dev(x)
        assert torch.isfinite(y).all()
        if preset == "ideal":
            assert torch.allclose(y, model(x), atol=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_parametrised_conv_deq_deploys_too():
    """The weight-normed conv DEQ (a parametrised Conv2d) maps onto a device as well."""
    torch.manual_seed(0)
    m = build_model({"kind": "deq", "cell": "conv", "in_features": 64, "out_features": 3,
                     "width": 4}).eval()
    dev = hardware.get_device("ideal").deploy(m)
    assert "cell.W" in hardware.device_layers(dev)
    x = torch.rand(2, 64)
    with torch.no_grad():
        assert torch.allclose(dev(x), m(x), atol=1e-5)


def test_cosine_schedule_matches_torch():
    spec = TrainSpec(epochs=7, lr=3e-3, lr_schedule="cosine")
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7)
    for epoch in range(7):
        assert math.isclose(epoch_lr(spec, epoch), opt.param_groups[0]["lr"], rel_tol=1e-12)
        opt.step()
        sched.step()
    assert epoch_lr(TrainSpec(epochs=7, lr=3e-3), 5) == 3e-3


def test_train_model_trains_a_lyadeq_and_refuses_what_it_cannot_do(tmp_path):
    task = load_task("digits")
    spec = TrainSpec.preset("quick", "lyadeq", epochs=2, lr=1e-2, max_train_samples=512)
    assert spec.lr_schedule == "cosine" and spec.solver.name == "anderson"
    res = train_model(_model("plain"), task, spec)
    assert res.test_metric > 0.4  # ten classes: well above chance after 16 steps
    res = train_model(_model("both"), task, spec)
    W = res.model.head.weight.detach()
    assert (W @ W.T - torch.eye(10)).abs().max() <= 1e-5
    bad = TrainSpec.preset("quick", "lyadeq", epochs=1,
                           solver=SolverSpec(name="anderson", random_threshold=True))
    with pytest.raises(NoisyDEQError, match="random_threshold"):
        train_model(_model(), task, bad, out_dir=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    on_device = TrainSpec.preset("quick", "lyadeq", epochs=1, device="rram")
    with pytest.raises(NoisyDEQError, match="parametrised weights"):
        train_model(_model(), task, on_device)
    train_model(_model("lyapunov"), task, TrainSpec.preset(
        "quick", "lyadeq", epochs=1, device="rram", max_train_samples=64))


def test_family_and_sweep_specs_take_lyadeq_members():
    fam = build(FamilySpec, {"kinds": ["lyadeq", "ffw"], "lyapunov": {"variant": "plain"}})
    assert fam.train_spec("lyadeq").solver.name == "anderson"
    with pytest.raises(NoisyDEQError, match="'lyadeq' is not in kinds"):
        build(SweepSpec, {"kinds": ["deq"], "lyapunov": {"variant": "both"}})
    with pytest.raises(NoisyDEQError, match="did you mean 'both'"):
        build(SweepSpec, {"kinds": ["lyadeq"], "lyapunov": {"variant": "bth"}})


@pytest.mark.slow
def test_sweep_runs_lyadeq_deq_and_ffw_on_a_device(tmp_path):
    from noisydeq.sweep import run_sweep

    spec = build(SweepSpec, {
        "kinds": ["lyadeq", "deq", "ffw"], "depths": [1], "hidden": 16, "epochs": 1,
        "max_train_samples": 128, "max_test_samples": 64, "device": "rram",
        "snr_db": [10.0, math.inf], "chips": 1, "lyapunov": {"icnn_hidden": [8]},
    })
    res = run_sweep(spec, tmp_path / "run", progress=False, jobs=1)
    kinds = {r["kind"] for r in res.rows}
    assert kinds == {"lyadeq", "deq", "ffw"}
    ly = [r for r in res.rows if r["kind"] == "lyadeq"]
    assert len(ly) == 2 and all(0.0 <= r["value"] <= 1.0 for r in ly)
    assert any(p.name == "metric_vs_depth.png" for p in res.figures)
    from tests.load_helpers import assert_loads_declared

    assert_loads_declared(tmp_path / "run")  # noisydeq.load_results: declared types
    # the family members come from the cache on a second call (same hash)
    fam = train_family(build(FamilySpec, {
        "kinds": ["lyadeq"], "depths": [1], "hidden": 16, "lyapunov": {"icnn_hidden": [8]},
        "train": {"epochs": 1, "max_train_samples": 128}}))
    assert fam.members[0].cached


def test_train_cli_lyadeq_variant(tmp_path):
    runner = CliRunner()
    out = tmp_path / "m"
    res = runner.invoke(cli, ["train", "--kind", "lyadeq", "--variant", "lyapunov",
                              "--width", "16", "--epochs", "1", "--out", str(out),
                              "--json", "--quiet"], catch_exceptions=False,
                        standalone_mode=False)
    assert res.exit_code == 0, res.output
    row = json.loads(res.output)[0]
    assert row["kind"] == "lyadeq" and 0 <= row["value"] <= 1
    meta = json.loads((out / "model.json").read_text())
    assert "lyapunov" in json.dumps(meta)


@pytest.mark.parametrize(("args", "message"), [
    (["train", "--kind", "lyadeq", "--variant", "orthogonl"], "did you mean 'orthogonal'"),
    (["train", "--kind", "deq", "--variant", "both"], "only --kind lyadeq"),
    (["lyapunov", "missing.toml"], "file not found"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, message, capsys):
    from noisydeq.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_lyapunov_experiment_validation(tmp_path):
    from noisydeq.analysis.lyapunov_experiment import load_experiment

    for name in ("lyapunov-table1.toml", "lyapunov-device.toml"):
        from pathlib import Path

        shipped = Path(__file__).resolve().parents[1] / "noisydeq" / "experiments"
        spec = load_experiment(shipped / name)
        assert spec.seeds == [0, 1, 2]
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[attack]\nvariants = ["plian"]\n')
    with pytest.raises(NoisyDEQError, match="did you mean 'plain'"):
        load_experiment(bad)
    bad.write_text('name = "x"\n[lyapunov]\nc = -1\n[attack]\n')
    with pytest.raises(NoisyDEQError, match="c: must be > 0, got -1"):
        load_experiment(bad)
    bad.write_text('name = "x"\n')
    with pytest.raises(NoisyDEQError, match=r"\[attack\] or a \[device\]"):
        load_experiment(bad)


@pytest.mark.parametrize(("tables", "variant"), [
    ('[attack]\nvariants = ["plain", "both"]\n', "both"),
    ('[device]\nsnr_db = "10"\n[device.groups]\nrram = ["lyadeq-orthogonal", "ffw"]\n',
     "orthogonal"),
])
def test_an_orthogonal_head_wider_than_hidden_is_one_line_writing_nothing(
        tmp_path, monkeypatch, capsys, tables, variant):
    """The model refused it as it was built, after the run directory (its config.toml)
    was made: the corrected file was then refused too ('holds another experiment')."""
    from noisydeq import families
    from noisydeq.cli import main

    monkeypatch.setattr(families, "train_family", lambda *a, **k: pytest.fail("trained"))
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    exp = tmp_path / "lya.toml"
    exp.write_text(f'name = "lya"\ntask = "digits"\nseeds = [0]\nhidden = 8\n{tables}')
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        main(["lyapunov", str(exp), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1, err
    assert (f"lyapunov variant '{variant}': an orthogonal head needs the task's 10 outputs "
            "<= hidden (Z^T Z = I), got hidden = 8; set hidden >= 10") in err
    assert not out.exists() and not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_lyapunov_command_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NOISYDEQ_FIGURE_CACHE", raising=False)
    exp = tmp_path / "exp.toml"
    exp.write_text(
        'name = "tiny"\ntask = "digits"\nhidden = 16\ntrain_preset = "quick"\n'
        'train = {epochs = 1, max_train_samples = 128}\n[lyapunov]\nicnn_hidden = [8]\n'
        '[attack]\nvariants = ["plain", "both"]\neps_255 = [2, 8]\nmax_test_samples = 40\n'
        '[device]\nsnr_db = "20,inf"\nchips = 1\ndepths = [1]\nbaseline_epochs = 1\n'
        'max_test_samples = 40\n[device.groups]\nrram = ["lyadeq", "deq", "ffw"]\n'
        'photonic = ["lyadeq"]\n'
    )
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["lyapunov", str(exp), "--out", str(out), "--json"]
    res = runner.invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert {p.rsplit("/", 1)[-1] for p in report["figures"]} >= {"attack.png", "device.png"}
    rows = (out / "attack.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * (1 + 2 * 2)  # header + variants × (clean + attacks × ε)
    text = (out / "report.md").read_text()
    assert "I-FGSM" in text and "*96.59*" in text and "rram" in text
    cells = sorted(p.name for p in (out / "attack").iterdir())
    assert cells == ["both-s0.json", "plain-s0.json"]
    figures = {p.name: p.read_bytes() for p in (out / "figures").iterdir()}
    every = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
             if p.is_file()}
    from noisydeq.analysis import lyapunov_report

    def no_drawing(*a, **k):
        raise AssertionError("drawn although the figure cache holds these figures")

    with monkeypatch.context() as m:  # resumes: nothing recomputed, the figures copied
        m.setattr(lyapunov_report, "plot_attack", no_drawing)
        m.setattr(lyapunov_report, "plot_device", no_drawing)
        again = runner.invoke(cli, args, catch_exceptions=False)
    assert again.exit_code == 0
    assert (out / "attack.csv").read_text().splitlines() == rows
    assert {p.name: p.read_bytes() for p in (out / "figures").iterdir()} == figures
    # nothing computed: every file as it was (the device sweeps' meta.json and SHA256SUMS
    # were rewritten)
    assert {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file()} == every
    # a damaged cell is refused naming it; deleting it recomputes that cell
    cell = out / "attack" / "plain-s0.json"
    cell.write_text(cell.read_text().replace('"accuracy": ', '"accuracy": 1 +', 1))
    res = runner.invoke(cli, args)
    assert res.exit_code != 0 and "plain-s0.json" in str(res.exception or res.output)
    cell.unlink()
    again = runner.invoke(cli, args, catch_exceptions=False)
    assert again.exit_code == 0

    def accuracies(text: list[str]) -> list[tuple[str, ...]]:
        head = text[0].split(",")
        cols = [head.index(c) for c in ("variant", "attack", "eps_255", "accuracy")]
        return [tuple(line.split(",")[c] for c in cols) for line in text[1:]]

    assert accuracies((out / "attack.csv").read_text().splitlines()) == accuracies(rows)
    other = tmp_path / "other.toml"
    other.write_text(exp.read_text().replace('name = "tiny"', 'name = "other"'))
    res = runner.invoke(cli, ["lyapunov", str(other), "--out", str(out)])
    assert res.exit_code != 0 and "another experiment" in str(res.exception or res.output)


def test_attack_cell_rows_and_step_override():
    from noisydeq.analysis.lyapunov_experiment import AttackGrid, attack_cell

    model = _model("plain")
    x, y = torch.rand(12, 64), torch.randint(0, 10, (12,))
    rows = attack_cell(model, x, y, AttackGrid(eps_255=[2, 8], batch_size=5), seed=0)
    assert [(r["attack"], r["eps_255"], r["steps"]) for r in rows] == [
        ("none", 0.0, 0), ("ifgsm", 2.0, 2), ("ifgsm", 8.0, 10), ("pgd", 2.0, 2),
        ("pgd", 8.0, 10)]
    strong = attack_cell(model, x, y, AttackGrid(attacks=["pgd"], eps_255=[8], steps=3,
                                                 alpha_255=2.0), seed=0)
    assert [r["steps"] for r in strong] == [0, 3]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows + strong)
    # robust = right clean and attacked (noisydeq.attacks.robust): never above clean
    assert all(r["accuracy"] <= rows[0]["accuracy"] for r in rows + strong)


def test_a_seed_subset_gets_its_own_default_folder(tmp_path, monkeypatch):
    """`lyapunov EXP --seeds 0` (the help's example) wrote runs/<name>, so the documented
    full run was then refused there ('holds another experiment'): a subset of the seeds
    now defaults to runs/<name>-seeds-<seeds>; the plain command keeps runs/<name>."""
    from noisydeq.analysis import lyapunov_experiment

    seen, kept = [], []
    monkeypatch.setattr(lyapunov_experiment, "run_experiment",
                        lambda spec, out, **kw: seen.append(out) or kept.append(
                            kw["keep_other_code"]) or {
                            "markdown": "", "report": "r", "figures": []})
    monkeypatch.chdir(tmp_path)
    exp = tmp_path / "exp.toml"
    exp.write_text('name = "tiny"\ntask = "digits"\nhidden = 16\ntrain_preset = "quick"\n'
                   '[attack]\nvariants = ["plain"]\neps_255 = [2]\n')
    for extra in ([], ["--seeds", "0"], ["--seeds", "0,2", "--keep-other-code"]):
        res = CliRunner().invoke(cli, ["lyapunov", str(exp), *extra], catch_exceptions=False)
        assert res.exit_code == 0, res.output
    assert [str(p) for p in seen] == ["runs/tiny", "runs/tiny-seeds-0", "runs/tiny-seeds-0-2"]
    assert kept == [False, False, True]  # --keep-other-code reaches the attack table


def test_each_variant_s_training_line_names_the_variant(tmp_path, monkeypatch):
    """The four Table 1 models all printed 'lyadeq d1 w64: accuracy …': the family's line
    names kind, depth and width, which the variants share. Each line now names the variant
    and seed it belongs to."""
    from types import SimpleNamespace

    from noisydeq import families
    from noisydeq.analysis.lyapunov_experiment import ExperimentDir, load_experiment, run_attacks

    class Stop(Exception):
        pass

    def fake_train(spec, task, log=None, **kw):
        log("lyadeq d1 w16: accuracy 0.5000 (trained in 0.1 s)")
        raise Stop

    monkeypatch.setattr(families, "train_family", fake_train)
    monkeypatch.setattr(families, "cached_weights", lambda *a, **k: ("entry", None))
    exp = tmp_path / "exp.toml"
    exp.write_text('name = "tiny"\ntask = "digits"\nhidden = 16\ntrain_preset = "quick"\n'
                   '[attack]\nvariants = ["orthogonal"]\neps_255 = [2]\n')
    lines = []
    task = SimpleNamespace(x_test=torch.zeros(2, 64), y_test=torch.zeros(2))
    with pytest.raises(Stop), ExperimentDir(tmp_path / "out") as run:
        run_attacks(load_experiment(exp, seeds=[2]), run, task, lines.append)
    assert lines == ["orthogonal seed 2: lyadeq d1 w16: accuracy 0.5000 (trained in 0.1 s)"]


@pytest.mark.slow
def test_a_resume_tells_served_cells_without_training_a_model(tmp_path, monkeypatch,
                                                               family_trainings):
    """A resume loaded every (variant, seed) model from the family cache — retrained it
    when the cache had been cleared — only to hash its weights. Now the weights digest
    comes from the cache entry's checkpoint (digest-checked) or, the entry cleared, from
    the cell that records that entry (a cell is tied to the weights it was computed on):
    a finished table resumes without loading a model, and with its cache cleared without
    training one; an entry holding other weights still has its cell computed again."""
    import shutil

    from noisydeq import families, store
    from noisydeq.analysis.lyapunov_experiment import load_experiment, run_experiment

    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    calls = family_trainings
    exp = tmp_path / "exp.toml"
    exp.write_text(
        'name = "tiny"\ntask = "digits"\nhidden = 16\ntrain_preset = "quick"\n'
        'train = {epochs = 1, max_train_samples = 128}\n[lyapunov]\nicnn_hidden = [8]\n'
        '[attack]\nvariants = ["plain", "both"]\nattacks = ["pgd"]\neps_255 = [2]\n'
        'max_test_samples = 20\n')
    spec = load_experiment(exp)
    out = tmp_path / "out"

    def run():
        said: list[str] = []
        calls.clear()
        run_experiment(spec, out, only="attack", progress=False, log=said.append)
        return (out / "attack.csv").read_text(), said, list(calls)

    table, _, trained = run()
    assert trained == ["trained", "trained"]
    entries = {v: store.read_signed_json(out / "attack" / f"{v}-s0.json")["entry"]
               for v in ("plain", "both")}
    task = load_task("digits", seed=0)
    for v in ("plain", "both"):  # the digest read from the checkpoint is the model's
        fam = families.train_family(spec.family_spec(0, v), task)
        assert families.cached_weights(spec.family_spec(0, v), task, "lyadeq", 1) == (
            entries[v], store.init_hash(fam.members[0].model))
    again, said, trained = run()
    assert trained == [] and again == table  # nothing loaded, let alone trained
    assert sum(s.endswith(": done before") for s in said) == 2
    shutil.rmtree(tmp_path / "cache")
    again, said, trained = run()  # the cache cleared: every cell still served
    assert trained == [] and again == table
    assert not any(s.startswith("note:") for s in said)
    # the plain model trained again into other weights under its entry: its cell computed
    fam = families.train_family(spec.family_spec(0, "plain"), task)
    ckpt = fam.members[0].result.path
    assert ckpt.parent.name == entries["plain"]
    tensors, meta = store.load_tensors(ckpt)
    store.save_checkpoint(ckpt, {k: v + 0.25 if v.is_floating_point() else v
                                 for k, v in tensors.items()}, meta["config"], meta["extra"])
    again, said, trained = run()
    assert trained == ["loaded"]  # the plain model only, to attack it; both's cell served
    assert [s for s in said if s.startswith("note:")] == [
        f"note: 1 of 2 attack cells in {out / 'attack'} were computed on other weights of "
        "their model: they are computed again (--keep-other-code keeps other code's cells, "
        "never other weights')"]
    assert again.splitlines()[0] == table.splitlines()[0]
