"""`noisydeq sweep` / `noisydeq run`: bad input is one line, non-zero exit, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "NOISYDEQ_CACHE": str(cwd / "cache"), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "noisydeq.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


BAD = [
    (["--snr", "30:0"], "start 30 is above stop 0"),
    (["--snr", "0:30:0"], "step must be positive"),
    (["--snr", "0:30:-2"], "step must be positive"),
    (["--snr", "abc"], "not a number"),
    (["--train-snr", "x"], "--train-snr"),
    (["--task", "digitz"], "did you mean 'digits'"),
    (["--device", "rrm-wan2022"], "did you mean"),
    (["--depths", "0,3"], "depth '0' is not a positive integer"),
    (["--depths", "1,x"], "depth 'x' is not a positive integer"),
    (["--chips", "0"], "--chips"),
    (["--epochs", "-1"], "--epochs"),
    (["--data-dir", "/nonexistent/mnist"], "no such directory"),
    (["--seed", "a"], "--seed"),
    (["--torch-device", "tpu9"], "--torch-device"),
    (["--set", "chipz=2"], "did you mean 'chips'"),
    (["--jobs", "0"], "jobs '0'"),
    (["--jobs", "two"], "jobs 'two'"),
    # pydantic said "kinds.1: Input should be 'deq', 'ffw', …": one line naming the kind
    (["--kinds", "deq,cnn"],
     "kinds: unknown model kind 'cnn' (allowed: deq, ffw, mondeq, ffw_relu, lyadeq)"),
    (["--kinds", "deq,fw"], "kinds: unknown model kind 'fw'; did you mean 'ffw'?"),
    (["--kinds", ","], "kinds must not be empty"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line(tmp_path, args, message):
    out = tmp_path / "run"
    proc = _cli("sweep", "--device", "snr", "--out", str(out), "--quiet", *args, cwd=tmp_path)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr
    assert len(err.splitlines()) == 1, err
    assert message in err, err
    assert not out.exists()  # nothing written


def test_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = _cli("sweep", "--device", "snr", "--out", str(blocker / "sub"), "--quiet",
                cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--out" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_missing_experiment_file(tmp_path):
    proc = _cli("run", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "file not found" in proc.stderr


def test_run_rejects_bad_threads_before_work(tmp_path):
    proc = _cli("run", "noisydeq/experiments/fig1-mnist.toml", "--threads", "two", "--out",
                str(tmp_path / "r"), cwd=ROOT)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "threads" in proc.stderr and not (tmp_path / "r").exists()


def test_experiment_with_typo_is_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[sweep]\ntask = "digits"\n[quick]\nchipz = 2\n')
    proc = _cli("run", str(bad), cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "did you mean 'chips'" in proc.stderr


def test_other_config_in_out_is_refused(tmp_path):
    out = tmp_path / "r"
    common = ["sweep", "--device", "snr", "--noise-site", "signal", "--depths", "1",
              "--snr", "0,inf", "--epochs", "0", "--quiet", "--out", str(out),
              "--set", "max_test_samples=50", "--set", "hidden=8"]
    first = _cli(*common, "--chips", "1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = (out / "results.csv").read_text()
    second = _cli(*common, "--chips", "1", "--train-snr", "10", cwd=tmp_path)
    assert second.returncode != 0 and "different config" in second.stderr
    assert "differs in: train_snr_db" in second.stderr  # more chips would extend the run
    assert "Traceback" not in second.stderr
    assert (out / "results.csv").read_text() == before  # untouched


@pytest.mark.slow
def test_sweep_end_to_end_json_and_resume(tmp_path):
    """A tiny real sweep (digits, 0 training epochs) through the CLI: JSON, files, resume."""
    args = ["sweep", "--device", "snr", "--snr", "0:10:5,inf", "--depths", "1,3",
            "--epochs", "1", "--chips", "2", "--set", "hidden=16",
            "--set", "max_train_samples=200"]
    proc = _cli(*args, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)
    assert Path(tmp_path, rep["results_csv"]).is_file()
    assert Path(tmp_path, rep["results_parquet"]).is_file()
    assert any(f.endswith("metric_vs_snr.png") for f in rep["figures"])
    assert rep["cells_computed"] > 0 and rep["cells_resumed"] == 0
    kinds = {(r["kind"], r["depth"]) for r in rep["summary"]}
    assert kinds == {("deq", 1), ("ffw", 1), ("deq", 3), ("ffw", 3)}
    again = _cli(*args, "--json", cwd=tmp_path)  # same command → same default run dir → all resumed
    rep2 = json.loads(again.stdout)
    assert rep2["cells_computed"] == 0 and rep2["cells_resumed"] == rep["cells_computed"]
    assert rep2["summary"] == rep["summary"]
    text = _cli(*args, "--quiet", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "results:" in text.stdout and "figures:" in text.stdout
    assert "DEQ" in text.stdout and "FFW" in text.stdout


def test_kinds_selects_the_family_members(tmp_path):
    out = tmp_path / "run"
    proc = _cli("sweep", "--device", "snr", "--snr", "10", "--depths", "1,3", "--kinds", "deq",
                "--epochs", "0", "--chips", "1", "--set", "max_test_samples=32", "--jobs", "1",
                "--threads", "1", "--out", str(out), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    from noisydeq.results import read_csv

    rows = read_csv(out / "results.csv")
    assert {r["kind"] for r in rows} == {"deq"} and {r["depth"] for r in rows} == {1, 3}


def test_the_summary_says_each_photonic_device_s_adc_gain(tmp_path):
    """The printed summary names the photonic ADC gain of the inference device and of each
    training device (no table column holds it: one setting per device and sweep); a
    photonic sweep through the CLI prints it after the native SNR."""
    from noisydeq.specs.base import build
    from noisydeq.specs.sweep import SweepSpec, adc_gain_lines

    fixed = tmp_path / "fixed.toml"
    fixed.write_text('kind = "photonic"\nadc_gain = "fixed"\nadc_full_scale = 3.0\n')
    assert adc_gain_lines(build(SweepSpec, {"device": "rram"})) == []
    assert adc_gain_lines(build(SweepSpec, {"device": str(fixed)})) == [
        f"device {fixed}: ADC gain fixed (full scale ±3·R·P·√n_in)"]
    calibrated = ("ADC gain calibrated per layer (1.25 × its largest output on its calibration "
                  "inputs)")
    lines = adc_gain_lines(build(SweepSpec, {
        "device": "ideal", "noise_site": "signal", "train_device": ["rram", "photonic", "none"],
        "train_adc_gain": "epoch"}))
    assert lines == [f"training device photonic: {calibrated}; training measured it once per "
                     "epoch's chip (train_adc_gain = epoch)"]
    lines = adc_gain_lines(build(SweepSpec, {"device": "photonic",
                                             "train_device": [str(fixed), "photonic"]}))
    assert lines == [f"device photonic: {calibrated}",
                     f"training device {fixed}: ADC gain fixed (full scale ±3·R·P·√n_in)",
                     f"training device photonic: {calibrated}; training measured it with "
                     "every step's weights"]
    proc = _cli("sweep", "--device", "photonic", "--snr", "10", "--depths", "1", "--kinds",
                "deq", "--epochs", "0", "--chips", "1", "--set", "hidden=4", "--set",
                "max_test_samples=32", "--jobs", "1", "--threads", "1", "--out",
                str(tmp_path / "run"), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"device photonic: {calibrated}\n" in proc.stdout
