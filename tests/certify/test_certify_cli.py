"""``noisydeq certify``: one line for bad input (nothing written), and an end-to-end run on
IBP-trained digits models whose certified ≤ PGD ≤ clean accuracy holds sample by sample."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest
import torch

from noisydeq import store
from noisydeq.cli import main
from noisydeq.config import FamilySpec, build
from noisydeq.errors import CorruptArtefact
from tests.certify.helpers import run_certify


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """An IBP-trained mondeq/ffw_relu pair (digits, width 16, 3 epochs) and, next to it,
    a tanh DEQ and a plain monDEQ (param 'mon') trained one epoch each."""
    from noisydeq.families import train_family

    root = tmp_path_factory.mktemp("certify-family")
    torch.manual_seed(0)
    spec = build(FamilySpec, {"task": "digits", "depths": [1], "kinds": ["mondeq", "ffw_relu"],
                              "hidden": 16, "train": {
                                  "epochs": 3, "batch_size": 64, "lr": 3e-3,
                                  "ibp": {"eps": 0.05, "warmup_epochs": 1, "ramp_epochs": 1}}})
    train_family(spec, cache_dir=root / "good")
    bad = build(FamilySpec, {"task": "digits", "depths": [1], "kinds": ["deq"], "hidden": 16,
                             "train": {"epochs": 1}})
    train_family(bad, cache_dir=root / "tanh")
    mon = build(FamilySpec, {"task": "digits", "depths": [1], "kinds": ["mondeq"], "hidden": 16,
                             "monotone": {"param": "mon"}, "train": {"epochs": 1}})
    train_family(mon, cache_dir=root / "mon")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("argv, needle", [
    (["--eps", "-0.1"], "ε must be ≥ 0"),
    (["--eps", "abc"], "'abc' is not a number"),
    (["--device", "snr"], "no finite bound"),
    (["--device", "photonic"], "no finite bound"),
    (["--device", "rram", "--dynamic"], "--read-noise-k"),
    (["--device", "rram-wan2022-1day", "--k", "40"], "too wide"),
    (["--device", "no-such-device"], "unknown device"),
    (["--coverage", "1.5"], "coverage"),
    (["--chip", "3"], "--chip needs --device"),
    (["--threads", "0"], "threads '0': expected auto, N or TRAIN,EVAL"),
])
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, family, argv, needle):
    out = tmp_path / "out"
    code, stdout, err = run_certify(capsys, str(family / "good"), "--out", str(out),
                                    "--n-test", "20", "--quiet", *argv)
    assert code == 2, err
    assert needle in err, err
    assert err.count("\n") == 1 and err.startswith("noisydeq: error: ")
    assert "Traceback" not in err + stdout
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("which, needle", [
    ("tanh", "not a monotone ReLU DEQ"),
    ("mon", "I − |W| is not positive definite"),
])
def test_non_monotone_models_are_refused_with_the_failing_property(capsys, tmp_path, family,
                                                                    which, needle):
    out = tmp_path / "out"
    code, stdout, err = run_certify(capsys, str(family / which), "--out", str(out), "--quiet")
    assert code == 2 and needle in err and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.slow
def test_another_command_without_out_does_not_overwrite_the_first(capsys, tmp_path, family,
                                                                  monkeypatch):
    """The docs run `certify fam --eps ...` and then `certify fam --device rram --chip 0
    --eps ...` (and certify-mnist with and without a chip) without --out: both went to
    runs/certify-<source>, the second overwriting the first's results. Settings given on
    the command line now name their own folder; the plain command keeps its name."""
    monkeypatch.chdir(tmp_path)
    src = str(family / "good")
    runs = [["--n-test", "20", "--eps", "0.1"], ["--n-test", "20", "--eps", "0,0.05"], []]
    for argv in runs:
        code, _, err = run_certify(capsys, src, "--quiet", *argv)
        assert code == 0, err
    dirs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(dirs) == 3 and "certify-good" in dirs, dirs
    eps = {d: sorted({float(r["eps"]) for r in csv.DictReader(
        open(tmp_path / "runs" / d / "results.csv"))}) for d in dirs}
    assert sorted(map(tuple, eps.values())) == [(0.0, 0.05), (0.1,), (0.1, 0.2, 0.3, 0.4)]
    code, _, err = run_certify(capsys, src, "--quiet", "--n-test", "20", "--eps", "0.1")
    assert code == 0 and len(list((tmp_path / "runs").iterdir())) == 3, err  # same folder


def test_missing_source_is_one_line(capsys, tmp_path):
    code, _, err = run_certify(capsys, str(tmp_path / "nothing"), "--out", str(tmp_path / "o"))
    assert code == 2 and "does not exist" in err


def test_a_mistyped_experiment_name_gets_a_suggestion(capsys, tmp_path, monkeypatch):
    """`noisydeq certify certify-mnst` said only "does not exist", where `run`, `study`,
    `adversarial` and `lyapunov` name the bundled experiment meant."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_certify(capsys, "certify-mnst")
    assert code == 2 and err.count("\n") == 1, err
    assert "did you mean 'certify-mnist'?" in err and "certify-fig2" in err, err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_certify_family_digital_and_measured_chip(capsys, tmp_path, family, monkeypatch):
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    out = tmp_path / "cert"
    code, stdout, err = run_certify(capsys, str(family / "good"), "--eps", "0,0.02,0.05",
                             "--n-test", "120", "--device", "rram", "--chip", "2",
                             "--pgd-steps", "10", "--out", str(out), "--json")
    monkeypatch.undo()
    assert code == 0, err
    # the figure names the task, not only the source directory
    assert kept[-1]._suptitle.get_text().startswith("digits: certify good"), kept[-1]._suptitle
    plt.close("all")
    rows = json.loads(stdout)
    assert {(r["kind"], r["envelope"]) for r in rows} == {
        ("mondeq", "none"), ("ffw_relu", "none"), ("mondeq", "rram-wan2022:chip2"),
        ("ffw_relu", "rram-wan2022:chip2")}
    for r in rows:
        assert r["violations"] == 0
        assert r["certified_acc"] <= r["pgd_acc"] <= r["clean_acc"]
        assert r["eps_train"] == pytest.approx(0.05)
        if r["envelope"] != "none":
            assert "chip 2" in r["assumption"]
    by = {(r["kind"], r["envelope"] != "none", r["eps"]): r for r in rows}
    for kind in ("mondeq", "ffw_relu"):
        assert by[(kind, False, 0.0)]["certified_acc"] == by[(kind, False, 0.0)]["clean_acc"]
        assert by[(kind, False, 0.05)]["certified_acc"] > 0.3  # IBP training worked
        for eps in (0.0, 0.02, 0.05):  # an envelope only removes certificates
            assert by[(kind, True, eps)]["certified_acc"] <= by[(kind, False, eps)][
                "certified_acc"]
    mon = [r for r in rows if r["kind"] == "mondeq"]
    assert all(r["interval_margin"] > 0 for r in mon)
    with open(out / "results.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    assert (out / "results.parquet").is_file()
    assert (out / "figures" / "certified_vs_eps.png").is_file()
    from tests.load_helpers import assert_loads_declared

    assert_loads_declared(out)  # noisydeq.load_results: the declared column types
    assert not math.isnan(rows[0]["seconds"])
    listed = store.verify_manifest(out)  # every output digest-listed (sha256sum -c format)
    assert {"results.csv", "results.parquet", "figures/certified_vs_eps.png"} <= set(listed)
    (out / "results.csv").write_text("changed\n")
    with pytest.raises(CorruptArtefact, match="does not match its digest"):
        store.verify_manifest(out)


@pytest.mark.parametrize("m", [0.0, 1.0, -0.2, 1.5])
def test_m_outside_open_unit_interval_is_one_line(capsys, tmp_path, monkeypatch, m):
    monkeypatch.chdir(tmp_path)
    code = 0
    try:
        main(["train", "--kind", "mondeq", "--monotone", f"m={m}", "--quiet"])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "m: must lie in the open interval (0, 1)" in err
    assert err.count("\n") == 1 and list(tmp_path.iterdir()) == []


def test_negative_eps_in_the_api_is_one_error():
    from noisydeq.certify import bounds
    from noisydeq.errors import NoisyDEQError
    from tests.certify.helpers import small_model

    model = small_model(warm=False)
    x = torch.rand(2, 16, dtype=torch.float64)
    with pytest.raises(NoisyDEQError, match="eps: must be ≥ 0"):
        bounds(model, x, torch.zeros(2, dtype=torch.long), -0.1)


@pytest.mark.skipif(not os.path.isdir("/sys"), reason="needs Linux's /sys")
def test_unwritable_out_is_refused_before_any_work(capsys, family, monkeypatch):
    """--out in a directory nobody may write into (root included, whom os.access trusts):
    one line before the models are even loaded."""
    import noisydeq.analysis.family as fam

    def no_work(*a, **k):
        raise AssertionError("loaded models before checking --out")

    monkeypatch.setattr(fam, "load_family", no_work)
    code, _, err = run_certify(capsys, str(family / "good"), "--out", "/sys/noisydeq-certify")
    assert code == 2 and "--out /sys/noisydeq-certify: cannot write in /sys" in err, err
    assert err.count("\n") == 1


@pytest.mark.slow
def test_a_damaged_or_missing_sidecar_does_not_turn_eps_train_into_nan(capsys, family, tmp_path):
    """eps_train was read from the model.json sidecar: a missing or damaged one gave nan in
    the table, silently. The checkpoint's own metadata (the authoritative copy) holds it."""
    import shutil

    src = tmp_path / "good"
    shutil.copytree(family / "good", src)
    sides = sorted(src.rglob("*.json"))
    sides = [p for p in sides if p.with_suffix(".safetensors").is_file()]
    assert len(sides) == 2, sides
    sides[0].unlink()
    sides[1].write_text("{broken")
    code, stdout, err = run_certify(capsys, str(src), "--eps", "0.05", "--n-test", "20",
                                    "--pgd-steps", "2", "--out", str(tmp_path / "o"), "--json")
    assert code == 0, err
    rows = json.loads(stdout)
    assert rows and all(r["eps_train"] == pytest.approx(0.05) for r in rows), rows
