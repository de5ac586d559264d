"""Device sweeps: every preset on the default family, noise modes on the CLI, identity by
content (an edited preset is a new run), unreachable targets refused before any cell."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from noisydeq.cli import cli
from noisydeq.config import SweepSpec, build
from noisydeq.errors import NoisyDEQError
from noisydeq.hardware import preset_names
from noisydeq.results import LAYER_COLUMNS, read_csv
from noisydeq.sweep import run_sweep
from tests.sweep_helpers import toy_models, toy_spec, toy_task

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_runs_the_default_family(tmp_path, preset):
    """`noisydeq sweep --device <preset> --snr 0:30:10 --chips 1` on the default family runs
    to completion: finite metrics, every level reported with its parts and the mode."""
    spec = build(SweepSpec, dict(device=preset, snr_db="0:30:10", chips=1))
    res = run_sweep(spec, tmp_path / preset, progress=False, plots=False, jobs=1)
    assert res.computed_cells == 8 and len(res.rows) == 8 * 4
    for r in res.rows:
        assert math.isfinite(r["value"]) and r["noise_mode"] == "physical"
        if preset != "ideal":
            assert math.isfinite(r["total_snr_db"]) and math.isfinite(r["measured_snr_db"])
            assert r["measured_snr_db"] == r["total_snr_db"]
    if preset != "ideal":
        layers = read_csv(res.run_dir.layers_path, LAYER_COLUMNS)
        assert {r["layer"] for r in layers} >= {"head", "cell.W", "layers.0.W"}
        # the default FFW form (eq57x, z0 = x~) feeds every layer: every part is defined
        assert all(math.isfinite(r["total_snr_db"]) for r in layers)


def test_layer_without_signal_in_a_sweep_is_nan_never_a_traceback(tmp_path):
    """An FFW of form eq57 (z0 = 0: its first hidden layer only ever sees zeros) on the
    photonic device, whose mid-rise DAC makes that layer's output non-zero (SNR -inf): the
    sweep completes, the layer reports nan and is left out of the row's SNR."""
    import torch

    from noisydeq.models import FFW
    from noisydeq.sweep import SweepModel

    task = toy_task(n=40)
    torch.manual_seed(7)
    ffw = FFW(task.in_features, 6, 2, task.out_features, form="eq57").eval()
    models = [SweepModel(ffw, "ffw", 2, 6, ffw.parameter_count(), 0, math.inf)]
    spec = toy_spec(device="photonic", noise_site="device", snr_db="0,10,inf", chips=1,
                    max_rows=400)
    res = run_sweep(spec, tmp_path / "run", task=task, models=models, progress=False,
                    plots=False)
    layers = read_csv(res.run_dir.layers_path, LAYER_COLUMNS)
    zero = [r for r in layers if r["layer"] == "layers.0.W"]
    assert zero and all(math.isnan(r["total_snr_db"]) for r in zero)
    finite = [r for r in res.rows if math.isfinite(r["snr_db"])]
    assert all(abs(r["total_snr_db"] - r["snr_db"]) < 3.0 for r in finite)


def _toy(tmp_path, name, preset, **kw):
    task = toy_task(n=40)
    spec = toy_spec(device=str(preset), noise_site="device", snr_db="0,10,inf", chips=1,
                    max_rows=400, **kw)
    return run_sweep(spec, tmp_path / name, task=task, models=toy_models(task), progress=False,
                     plots=False)


def test_rows_carry_mode_and_parts_per_mode(tmp_path):
    for mode in ("dynamic", "static", "both"):
        rows = _toy(tmp_path, mode, "snr", noise_mode=mode).rows
        part = {"dynamic": "dynamic", "static": "static", "both": "total"}[mode]
        for r in rows:
            assert r["noise_mode"] == mode
            assert r["measured_snr_db"] == r[f"{part}_snr_db"]
            if math.isinf(r["snr_db"]):
                assert r["total_snr_db"] == math.inf
        if mode == "dynamic":  # the snr preset has no static part
            assert all(r["static_snr_db"] == math.inf for r in rows)


def test_edited_preset_is_a_new_run_or_one_clear_line(tmp_path):
    """Identity by content: the same --out with a preset edited under the same path is
    refused naming the changed field; cell keys change, so no stale row is ever reused."""
    preset = tmp_path / "mine.toml"
    preset.write_text('kind = "snr"\nsnr_db = 20.0\n')
    first = _toy(tmp_path, "run", preset)
    assert first.computed_cells > 0
    assert _toy(tmp_path, "run", preset).computed_cells == 0  # unchanged: resumed
    preset.write_text('kind = "snr"\nsnr_db = 20.0\nstatic_snr_db = 12.0\n')
    with pytest.raises(NoisyDEQError, match="differs in: device preset static_snr_db"):
        _toy(tmp_path, "run", preset)
    again = _toy(tmp_path, "other", preset)  # a new run directory computes afresh
    assert again.computed_cells == first.computed_cells
    assert [r["static_snr_db"] for r in again.rows] != [r["static_snr_db"] for r in first.rows]
    from noisydeq.results import spec_hash

    spec = toy_spec(device=str(preset))
    h1 = spec_hash(spec)
    preset.write_text('kind = "snr"\nsnr_db = 21.0\n')
    assert spec_hash(spec) != h1  # the default --out follows the content


def _main(*args: str, capsys) -> tuple[int, str]:
    """The console entry point in-process: (exit code, stderr)."""
    from noisydeq.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as stop:
        code = int(stop.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [(["--noise-mode", "dynamc"], "did you mean 'dynamic'"),
     (["--noise-mode", "static", "--noise-site", "signal"], "sets part of a device's noise"),
     (["--snr=-80,0"], "below what device 'rram' (its reference MVM)"),
     (["--snr", "0,90"], "above what device 'rram' (its reference MVM)")],
)
def test_bad_noise_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, args,
                                                        message):
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    code, err = _main("sweep", "--device", "rram", "--depths", "1", "--epochs", "0", "--chips",
                      "1", "--set", "hidden=8", "--set", "max_test_samples=20", "--quiet",
                      "--jobs", "1", "--out", str(out), *args, capsys=capsys)
    err = err.strip()
    assert code != 0 and "Traceback" not in err
    assert len(err.splitlines()) == 1 and message in err, err
    if "what" in message:
        assert "reachable: minimum" in err and "-inf" not in err
    assert not out.exists()


def test_cli_noise_mode_reaches_the_table(tmp_path):
    out = tmp_path / "r"
    res = CliRunner().invoke(cli, [
        "sweep", "--device", "snr", "--noise-mode", "static", "--depths", "1", "--epochs", "0",
        "--chips", "1", "--snr", "5,inf", "--set", "hidden=8", "--set", "max_test_samples=20",
        "--quiet", "--out", str(out), "--jobs", "1"])
    assert res.exit_code == 0, res.output
    assert "noise mode static" in res.output and "static SNR" in res.output
    rows = read_csv(out / "results.csv")
    assert {r["noise_mode"] for r in rows} == {"static"}
    finite = [r for r in rows if math.isfinite(r["snr_db"])]
    assert all(abs(r["static_snr_db"] - 5.0) < 1.5 for r in finite)
    assert (out / "identity.json").is_file() and (out / "layers.csv").is_file()


def test_target_a_trained_layer_cannot_reach_is_refused_before_any_cell(tmp_path, monkeypatch,
                                                                        capsys):
    """The second check: a target inside the device's reference range (here: any, the
    reference range widened) that a trained layer cannot reach is one line naming model,
    layer and range, after training and before any cell; the new run directory is removed."""
    import math as _m

    from noisydeq.hardware.base import Device

    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(Device, "snr_range", lambda self: (-_m.inf, _m.inf))
    out = tmp_path / "run"
    code, err = _main("sweep", "--device", "rram", "--depths", "1", "--epochs", "0", "--chips",
                      "1", "--set", "hidden=8", "--set", "max_test_samples=20", "--quiet",
                      "--jobs", "1", "--out", str(out), "--snr=-80,0", capsys=capsys)
    err = err.strip()
    assert code != 0 and len(err.splitlines()) == 1, err
    assert "below what layer" in err and "reachable: minimum" in err and "-inf" not in err
    assert not out.exists()


def test_table_command_prints_the_paired_table_and_refuses_bad_input(tmp_path, capsys):
    res = _toy(tmp_path, "t", "snr", noise_mode="dynamic")
    out = CliRunner().invoke(cli, ["table", str(res.run_dir.path), "--snr", "0"])
    assert out.exit_code == 0, out.output
    assert "noise mode dynamic" in out.output and "| training SNR | FFW depth |" in out.output
    lines = [ln for ln in out.output.splitlines() if ln.startswith("| ∞ dB |")]
    assert len(lines) == 2  # depths 1 and 3
    for args, needle in ((["--snr", "5"], "no level 5 dB"), (["--snr", "0,10"], "one level"),
                         ([], None)):
        target = str(res.run_dir.path) if needle else str(tmp_path / "none")
        code, err = _main("table", target, *args, capsys=capsys)
        err = err.strip()
        assert code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert (needle or "no results.csv") in err


def test_plot_command_redraws_a_finished_run_from_its_table(tmp_path, capsys):
    """``noisydeq plot RUN`` draws the sweep's figures from results.csv alone (the toy
    models are not in any cache, so loading or computing anything would fail); the run's
    SHA256SUMS then lists them with their digests; --out leaves the run untouched."""
    import csv
    import statistics

    from noisydeq import store

    res = _toy(tmp_path, "p", "snr", noise_mode="dynamic")
    run = res.run_dir.path
    assert not (run / "figures" / "metric_vs_snr.png").exists()  # plots=False
    out = CliRunner().invoke(cli, ["plot", str(run), "--title", "toy"])
    assert out.exit_code == 0, out.output
    names = store.verify_manifest(run)
    for stem in ("metric_vs_snr", "metric_vs_depth"):
        for ext in ("png", "svg", "csv"):
            assert f"figures/{stem}.{ext}" in names
    # the plotted points are the table's: mean over chips of each model at each level
    table = read_csv(run / "results.csv")
    with open(run / "figures" / "metric_vs_snr.csv", newline="") as fh:
        points = list(csv.DictReader(fh))
    assert points
    for p in points:
        vals = [r["value"] for r in table if r["kind"] == p["kind"]
                and r["depth"] == int(p["depth"]) and r["snr_db"] == float(p["snr_db"])]
        assert float(p["mean"]) == pytest.approx(statistics.fmean(vals))
    before = (run / "SHA256SUMS").read_text()
    other = tmp_path / "figs"
    out = CliRunner().invoke(cli, ["plot", str(run), "--out", str(other)])
    assert out.exit_code == 0, out.output
    assert (other / "metric_vs_snr.png").is_file()
    assert (run / "SHA256SUMS").read_text() == before
    code, err = _main("plot", str(tmp_path / "none"), capsys=capsys)
    err = err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "not a finished sweep run directory" in err


def test_plot_of_a_read_only_run_says_so_and_suggests_out(tmp_path, capsys, monkeypatch):
    """A read-only run directory was one line naming its lock file
    ('<run>/.noisydeq.lock: Read-only file system'), no word of --out."""
    import errno
    import os

    run = _toy(tmp_path, "ro", "snr", noise_mode="dynamic").run_dir.path
    real_open = os.open
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def read_only(path, flags, *args, **kwargs):
        if flags & writes and Path(path).resolve().is_relative_to(run.resolve()):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    code, err = _main("plot", str(run), capsys=capsys)
    err = err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"cannot write in {run} (Read-only file system)" in err and "--out DIR" in err, err
    assert not (run / "figures").exists()


def test_plot_command_redraws_with_the_runs_own_title(tmp_path, monkeypatch):
    """An experiment run's figures carry its title ("<title> [variant]"); `noisydeq plot RUN`
    redraws them with the same one (meta.json records it, a resume without a title keeps
    it), --title still replaces it."""
    import noisydeq.plots

    task = toy_task(n=40)
    spec = toy_spec(device="snr", noise_site="device", snr_db="0,inf", chips=1, max_rows=400)
    run = tmp_path / "exp"
    run_sweep(spec, run, task=task, models=toy_models(task), progress=False, plots=False,
              title="Fig. 1a [quick]")
    run_sweep(spec, run, task=task, models=toy_models(task), progress=False, plots=False)
    drawn = []

    def plot_sweep(rows, out, spec, native, title=""):
        out.mkdir(parents=True, exist_ok=True)
        drawn.append(title)
        return []

    monkeypatch.setattr(noisydeq.plots, "plot_sweep", plot_sweep)
    for args in ([], ["--title", "mine"], ["--out", str(tmp_path / "figs")]):
        out = CliRunner().invoke(cli, ["plot", str(run), *args])
        assert out.exit_code == 0, out.output
    assert drawn == ["Fig. 1a [quick]", "mine", "Fig. 1a [quick]"]


def test_table_refusal_names_the_whole_grid(tmp_path, capsys):
    from noisydeq import store

    """A level the run lacks listed the first 12 of its levels only (`0, 1, …, 11` for a
    0:30 run: as if the run stopped at 11 dB); the refusal names the grid as --snr gives it."""
    run = tmp_path / "run"
    run.mkdir()
    rows = "".join(f"{v},0.5\n" for v in [*range(31), "inf"])
    (run / "results.csv").write_text("snr_db,value\n" + rows)
    store.write_manifest(run, [run / "results.csv"])
    code, err = _main("table", str(run), "--snr", "7.5", capsys=capsys)
    err = err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "no level 7.5 dB in its results (0:30,inf)" in err, err
