"""The analysis commands on the outputs of ``noisydeq sweep`` and ``noisydeq train --depths``."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from analysis_family import make_family, rows, run, tiny_sweep  # noqa: E402

from noisydeq.analysis.family import load_family, load_family_task  # noqa: E402
from noisydeq.analysis.locate import locate  # noqa: E402
from noisydeq.config import SweepSpec, dumps_toml  # noqa: E402
from noisydeq.errors import NoisyDEQError  # noqa: E402
from noisydeq.store import atomic_write_text, sign_text  # noqa: E402

#: the `solvers` options of a fast run on a family's DEQ
QUICK_SOLVERS = ["--solvers", "unroll", "--snr", "10", "--max-iter", "6", "--width", "8",
                 "--batch", "2", "--inputs", "8", "--count-snr", "10", "--window", "3",
                 "--threshold", "6", "--no-floors", "--accuracy-snr", "10",
                 "--accuracy-solvers", "unroll", "--accuracy-max-iter", "5"]


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    """A tiny sweep (digits, depths 1,3, SNR 0,10, one chip, one epoch) and its cache."""
    root = tmp_path_factory.mktemp("sweep")
    with tiny_sweep(root, "--depths", "1,3", "--snr", "0,10", "--chips", "1", "--device",
                    "ideal", "--noise-site", "signal") as run_dir:
        yield run_dir, root / "cache"


@pytest.mark.slow
def test_sweep_run_dir_resolves_to_the_models_the_sweep_trained(sweep_run):
    run_dir, cache = sweep_run
    src = locate(run_dir)
    assert src.origin == "sweep"
    assert sorted(src.checkpoints) == sorted(cache.rglob("model.safetensors"))
    members = load_family(run_dir)
    assert sorted((m.kind, m.depth) for m in members) == [
        ("deq", 1), ("deq", 3), ("ffw", 1), ("ffw", 3)]
    # the sweep's own table reports the same widths
    table = rows(run_dir / "results.csv")
    widths = {(r["kind"], int(r["depth"])): int(r["width"]) for r in table}
    assert {(m.kind, m.depth): m.width for m in members} == widths
    # with another --cache nothing is found: one clear line, nothing trained
    with pytest.raises(NoisyDEQError, match="not in the cache"):
        locate(run_dir, cache_dir=cache.parent / "elsewhere")


@pytest.mark.slow
def test_three_commands_run_on_a_sweep_run_dir(sweep_run, capsys):
    run_dir, _ = sweep_run
    code, out, err = run(["sensitivity", "--family", str(run_dir), "--samples", "20",
                          "--inputs", "2", "--precision", "0.5"], capsys)
    assert code == 0, err
    table = rows(run_dir / "analysis" / "sensitivity" / "sensitivity.csv")
    assert [int(r["depth"]) for r in table] == [1, 3]
    assert all(float(r["ratio"]) > 0 for r in table)

    code, out, err = run(["spectrum", "--family", str(run_dir), "--inputs", "2"], capsys)
    assert code == 0, err
    assert len(rows(run_dir / "analysis" / "spectrum" / "spectrum.csv")) == 4

    code, out, err = run(["solvers", "--family", str(run_dir), "--solvers", "unroll",
                          "--snr", "10", "--max-iter", "10", "--width", "8", "--batch", "2",
                          "--inputs", "16", "--count-snr", "10", "--window", "3",
                          "--threshold", "10", "--accuracy-snr", "10",
                          "--accuracy-solvers", "unroll", "--accuracy-max-iter", "5"], capsys)
    assert code == 0, err
    solv = run_dir / "analysis" / "solvers"
    assert {r["stop"] for r in rows(solv / "iterations.csv")} == {"rel", "mean_rel"}
    assert len(rows(solv / "accuracy.csv")) == 1 and (solv / "floors.png").is_file()
    assert "width 28" in out  # the deepest DEQ of the family (matched to the 3-layer FFW)


@pytest.mark.slow
def test_commands_run_on_train_depths_output(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "unused"))
    out = tmp_path / "fam"
    code, _, err = run(["train", "--task", "digits", "--depths", "1,3", "--width", "8",
                        "--epochs", "1", "--quiet", "--out", str(out)], capsys)
    assert code == 0, err
    assert len(locate(out).checkpoints) == 4
    code, stdout, err = run(["spectrum", "--family", str(out), "--inputs", "2"], capsys)
    assert code == 0, err
    assert len(rows(out / "analysis" / "spectrum" / "spectrum.csv")) == 4
    assert not (tmp_path / "unused").exists()


def test_sweep_models_missing_from_the_cache_is_one_line(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    spec = SweepSpec(task="digits", depths=[1], hidden=4, device="ideal", snr_db=[0.0],
                     epochs=1)
    atomic_write_text(run_dir / "config.toml", sign_text(dumps_toml(spec)))  # as a sweep does
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "empty"))
    code, _, err = run(["spectrum", "--family", str(run_dir)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "2 model(s) of the sweep trained with 1 torch thread(s) are not in the cache" in err
    assert "--cache" in err and "NOISYDEQ_THREADS" in err
    assert not (run_dir / "analysis").exists() and not (tmp_path / "empty").exists()


def test_a_missing_device_trained_member_is_named_as_the_analyses_name_it(tmp_path, capsys,
                                                                          monkeypatch):
    """The missing member's training device reads as the trained_on column does
    (noisydeq.specs.device.trained_on: noise mode included), one wording for both."""
    from noisydeq.analysis.family import trained_on

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    spec = SweepSpec(task="digits", depths=[1], hidden=4, device="ideal", snr_db=[0.0],
                     epochs=1, train_device=["rram"], train_device_snr_db=[10.0],
                     train_noise_mode="dynamic")
    atomic_write_text(run_dir / "config.toml", sign_text(dumps_toml(spec)))
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "empty"))
    code, _, err = run(["spectrum", "--family", str(run_dir)], capsys)
    words = trained_on({"device": "rram", "device_snr_db": 10.0,
                        "device_noise_mode": "dynamic"})
    assert code == 2 and words == "rram 10 dB (dynamic)"
    assert f"(first: deq d1 seed 0 train SNR inf on {words});" in err, err


def test_data_that_differ_from_the_training_data_are_refused(tmp_path):
    fam = make_family(tmp_path / "f", depths=(1,))
    members = load_family(fam)
    assert load_family_task(members).fingerprint == members[0].fingerprint
    members[0].fingerprint = "0" * 32
    with pytest.raises(NoisyDEQError, match="differ from the data the models were trained on"):
        load_family_task(members)


@pytest.mark.slow
def test_solvers_picks_the_family_member_explicitly(tmp_path, capsys, monkeypatch):
    """A family of several seeds and training SNRs: `solvers` uses the lowest seed's
    noise-free DEQ unless told otherwise, says which, and refuses a member it lacks."""
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    run_dir = tmp_path / "run"
    code, _, err = run(["sweep", "--task", "digits", "--depths", "1", "--snr", "10",
                        "--chips", "1", "--epochs", "1", "--device", "ideal", "--noise-site",
                        "signal", "--seed", "0,1", "--train-snr", "10,inf", "--set",
                        "hidden=16", "--set", "max_train_samples=256", "--quiet", "--out",
                        str(run_dir)], capsys)
    assert code == 0, err
    code, out, err = run(["solvers", "--family", str(run_dir), *QUICK_SOLVERS], capsys)
    assert code == 0, err
    assert "seed 0, trained without noise" in out
    code, out, err = run(["solvers", "--family", str(run_dir), "--member-seed", "1",
                          "--member-train-snr", "10", "--out", str(tmp_path / "s1"),
                          *QUICK_SOLVERS], capsys)
    assert code == 0, err
    assert "seed 1, trained at 10 dB" in out
    code, out, err = run(["solvers", "--family", str(run_dir), "--member-seed", "5",
                          "--out", str(tmp_path / "s5"), *QUICK_SOLVERS], capsys)
    assert code != 0 and "the family's seeds are 0, 1" in err and "Traceback" not in err
    code, out, err = run(["solvers", "--family", str(run_dir), "--member-train-snr", "0",
                          "--out", str(tmp_path / "s6"), *QUICK_SOLVERS], capsys)
    assert code != 0 and "training SNRs are 10 dB, no noise" in err


@pytest.mark.slow
def test_a_sweep_trained_on_a_device_is_analysed_per_training_device(tmp_path, capsys):
    """`--train-device none,rram`: the analysis commands find both families in the cache
    (not only the digitally trained one), pair each DEQ with the FFW trained in the same
    place, and `solvers` picks the member by training device on request."""
    with tiny_sweep(tmp_path, "--depths", "1", "--snr", "10", "--chips", "1", "--device",
                    "ideal", "--noise-site", "signal", "--train-device", "none,rram",
                    "--train-device-snr", "10") as run_dir:
        src = locate(run_dir)
        assert sorted(src.checkpoints) == sorted((tmp_path / "cache").rglob("model.safetensors"))
        members = load_family(run_dir)
        assert [(m.trained_on, m.kind) for m in members] == [
            ("digital", "deq"), ("digital", "ffw"), ("rram 10 dB", "deq"), ("rram 10 dB", "ffw")]
        code, out, err = run(["sensitivity", "--family", str(run_dir), "--samples", "10",
                              "--inputs", "2", "--precision", "0.9"], capsys)
        assert code == 0, err
        table = rows(run_dir / "analysis" / "sensitivity" / "sensitivity.csv")
        assert [r["trained_on"] for r in table] == ["digital", "rram 10 dB"]
        code, out, err = run(["spectrum", "--family", str(run_dir), "--inputs", "2"], capsys)
        assert code == 0, err
        spec_rows = rows(run_dir / "analysis" / "spectrum" / "spectrum.csv")
        assert sorted((r["trained_on"], r["kind"]) for r in spec_rows) == [
            ("digital", "deq"), ("digital", "ffw"), ("rram 10 dB", "deq"), ("rram 10 dB", "ffw")]
        code, out, err = run(["solvers", "--family", str(run_dir), *QUICK_SOLVERS], capsys)
        assert code == 0, err
        assert "trained without noise" in out and "rram" not in out
        code, out, err = run(["solvers", "--family", str(run_dir), "--member-train-device",
                              "rram", "--out", str(tmp_path / "s1"), *QUICK_SOLVERS], capsys)
        assert code == 0, err
        assert "trained on rram 10 dB" in out
        code, out, err = run(["solvers", "--family", str(run_dir), "--member-train-device",
                              "photonic", "--out", str(tmp_path / "s2"), *QUICK_SOLVERS], capsys)
        assert code != 0 and "Traceback" not in err
        assert "is not one of the family's training devices (none; rram 10 dB)" in err


def test_a_cache_clear_while_the_family_loads_skips_the_model_being_read(tmp_path,
                                                                         monkeypatch):
    """``noisydeq cache clear`` run (another process) while the first member is read: the
    entry being read is skipped (its lock is held), the other member's is removed, and the
    load says so in one line, as a miss (not a damaged or unfound checkpoint)."""
    import os
    import subprocess

    from noisydeq.analysis import family

    with tiny_sweep(tmp_path, "--depths", "1", "--snr", "0", "--chips", "1", "--device",
                    "ideal", "--noise-site", "signal", "--jobs", "1") as run_dir:
        paths = locate(run_dir).checkpoints
        assert len(paths) == 2
        real, cleared = family.load_member, []

        def clear_first(path, check=None):
            if not cleared:
                cli = Path(sys.executable).with_name("noisydeq")
                cleared.append(subprocess.run(
                    [str(cli), "cache", "clear", "--kind", "models", "--json"],
                    capture_output=True, text=True, env=dict(os.environ), check=True).stdout)
            return real(path, check)

        monkeypatch.setattr(family, "load_member", clear_first)
        with pytest.raises(NoisyDEQError, match=r"cached model .* was removed \(by another "
                                                r"process.*after it was found") as err:
            load_family(run_dir)
        assert str(paths[1]) in str(err.value) and "\n" not in str(err.value)
        assert paths[0].is_file() and not paths[1].exists()
        assert "in use by another process" in cleared[0]
