"""The native level of a device sweep (``--snr 0:30,native``): the device at its own knobs,
checked against deploying the model at ``snr None`` directly on the same chip; the same
device in every noise mode; the grid's cells and keys unchanged by it; resumable and
extendable; its table loadable as it is; refused where it has no meaning."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from noisydeq import hardware
from noisydeq.hardware.modes import TARGET_PART
from noisydeq.noise import NoiseStream, derive_seed
from noisydeq.results import COLUMNS, read_csv
from noisydeq.sweep import run_sweep
from noisydeq.sweep.plan import CALIBRATION_INPUTS
from tests.cli_helpers import refused_writing_nothing
from tests.sweep_helpers import count_cell_saves, toy_models, toy_spec, toy_task


def _task(n: int = 48):
    """The toy task with training inputs (the chips are calibrated on them)."""
    task = toy_task(n=n)
    g = torch.Generator().manual_seed(5)
    return SimpleNamespace(**vars(task), x_train=torch.randn(96, task.in_features, generator=g))


def _sweep(tmp_path, name, task, snr="0,10,native", **kw):
    spec = toy_spec(device=kw.pop("device", "rram"), noise_site="device", snr_db=snr,
                    chips=2, max_rows=kw.pop("max_rows", 400), **kw)
    return run_sweep(spec, tmp_path / name, task=task, models=toy_models(task), progress=False,
                     plots=False)


def _direct_native(sm, task, preset: str, chip: int) -> float:
    """Accuracy of ``sm`` deployed at ``snr None`` (the preset's own knobs) on the sweep's
    chip ``chip`` — deploy, calibrate on the sweep's calibration inputs, one forward of the
    test set — with each layer's reads drawn from the stream the sweep keys the native
    level's by (model, chip, 'native', layer, test-sample index): no sweep machinery."""
    device = hardware.get_device(preset, snr_db=None).new_chip(derive_seed(sm.seed, "chip", chip))
    deployed = device.deploy(sm.model).eval()
    hardware.calibrate(deployed, task.x_train[:CALIBRATION_INPUTS])
    level = derive_seed(sm.seed, sm.model_id, "native", chip)
    rows = torch.arange(task.x_test.shape[0])
    for name, layer in hardware.device_layers(deployed).items():
        assert layer.sample_snr is None and layer.device_model.target_snr_db is None
        layer.stream = NoiseStream.from_seed(derive_seed(level, "layer", name), samples=rows)
    with torch.no_grad():
        out = deployed(task.x_test, None, return_solution=True)
    logits = getattr(out, "logits", out)
    correct = (logits.argmax(dim=1) == task.y_test) & torch.isfinite(logits).all(dim=1)
    return float(correct.double().mean())


@pytest.mark.parametrize("preset", ["rram", "photonic"])
def test_native_row_is_the_model_deployed_at_its_native_knobs(tmp_path, preset):
    task = _task()
    res = _sweep(tmp_path, preset, task, device=preset)
    native = [r for r in res.rows if r["native"]]
    models = {sm.model_id: sm for sm in toy_models(task)}
    assert len(native) == len(models) * 2 and len(res.rows) == 3 * len(native)
    values = []
    for r in native:
        assert r["snr_db"] == round(res.native_parts["total"], 4)
        assert r["value"] == _direct_native(models[r["model_id"]], task, preset, r["chip"])
        values.append(r["value"])
    # not a constant: the chips and models differ, and the grid's rows are other numbers
    assert len(set(values)) > 1
    assert all(r["native"] is False for r in res.rows if r["snr_db"] in (0.0, 10.0))


def test_native_is_the_same_device_in_every_noise_mode(tmp_path):
    """Native = the preset's own static (programming) and dynamic (read) noise, whatever
    part the mode sweeps: the same numbers in every mode; the row's snr_db is the native
    SNR of the part the mode sets and measured_snr_db that part as measured."""
    task = _task()
    by_mode = {}
    for mode in ("physical", "static", "dynamic", "both"):
        res = _sweep(tmp_path, mode, task, snr="10,native", noise_mode=mode)
        part = TARGET_PART[mode]
        rows = [r for r in res.rows if r["native"]]
        for r in rows:
            assert r["noise_mode"] == mode
            assert r["snr_db"] == round(res.native_parts[part], 4)
            assert r["measured_snr_db"] == r[f"{part}_snr_db"]
        by_mode[mode] = [{k: v for k, v in r.items()
                          if k not in ("noise_mode", "snr_db", "measured_snr_db")}
                         for r in rows]
    assert all(v == by_mode["physical"] for v in by_mode.values())
    # rram: programming noise and reads both present, the total below either part
    for r in by_mode["physical"]:
        s, d, t = r["static_snr_db"], r["dynamic_snr_db"], r["total_snr_db"]
        assert math.isfinite(s) and math.isfinite(d) and t < min(s, d)


def test_grid_cells_keys_and_table_do_not_change_with_native(tmp_path, monkeypatch):
    """A sweep with native holds exactly the cells of the same sweep without it (same keys,
    same rows) plus one native cell per (model, chip); its table is the other one's rows
    with native = False, then the native rows; resumed, nothing is computed."""
    task = _task()
    plain = _sweep(tmp_path, "plain", task, snr="0,10")
    with_native = _sweep(tmp_path, "native", task)
    assert "native" not in plain.rows[0]
    assert plain.run_dir.csv_path.read_text().splitlines()[0] == ",".join(COLUMNS)
    cells = {p.name: p.read_bytes() for p in plain.run_dir.cells.glob("*.json")}
    cells_n = {p.name: p.read_bytes() for p in with_native.run_dir.cells.glob("*.json")}
    assert cells.items() <= cells_n.items()
    assert len(cells_n) - len(cells) == len(toy_models(task)) * 2
    grid = [{k: v for k, v in r.items() if k != "native"} for r in with_native.rows
            if not r["native"]]
    assert grid == plain.rows
    saved = count_cell_saves(monkeypatch)
    again = _sweep(tmp_path, "native", task)
    assert saved == [] and again.rows == with_native.rows


def test_native_extends_a_run_and_stays(tmp_path, monkeypatch):
    task = _task()
    first = _sweep(tmp_path, "run", task, snr="0,10")
    saved = count_cell_saves(monkeypatch)
    grown = _sweep(tmp_path, "run", task, snr="native")  # a run directory only grows
    assert len(saved) == len(toy_models(task)) * 2  # only the native cells
    assert grown.extended == {"snr_db": ["native"]}
    assert [{k: v for k, v in r.items() if k != "native"} for r in grown.rows
            if not r["native"]] == first.rows
    again = _sweep(tmp_path, "run", task, snr="0,10")  # asked without it: kept
    assert len(saved) == len(toy_models(task)) * 2 and again.rows == grown.rows
    assert 'snr_db = [\n    0.0,\n    10.0,\n    "native",\n]' in \
        grown.run_dir.config_path.read_text()


def test_another_max_rows_serves_grid_and_native_cells(tmp_path):
    """A resume with another max_rows takes the grid's levels from the old chunking's cells
    and the native cell as it is (its own chunk whatever max_rows): nothing computed, nothing
    pruned, the table byte-equal to a fresh run of that max_rows."""
    task = _task()
    _sweep(tmp_path, "run", task, snr="0,5,10,inf,native", max_rows=100)
    cells = sorted((tmp_path / "run" / "cells").glob("*.json"))
    for max_rows in (400, 48):
        spec = toy_spec(device="rram", noise_site="device", snr_db="0,5,10,inf,native",
                        chips=2, max_rows=max_rows)
        said: list[str] = []
        res = run_sweep(spec, tmp_path / "run", task=task, models=toy_models(task),
                        progress=False, plots=False, prune=True, echo=said.append)
        assert (res.computed_cells, res.pruned_cells, said) == (0, 0, [])
        assert sorted((tmp_path / "run" / "cells").glob("*.json")) == cells
        _sweep(tmp_path, f"fresh{max_rows}", task, snr="0,5,10,inf,native", max_rows=max_rows)
        for name in ("results.csv", "layers.csv"):
            assert (tmp_path / "run" / name).read_bytes() == \
                (tmp_path / f"fresh{max_rows}" / name).read_bytes(), (max_rows, name)


def test_native_alone(tmp_path):
    task = _task()
    res = _sweep(tmp_path, "alone", task, snr="native")
    assert len(res.rows) == len(toy_models(task)) * 2 and all(r["native"] for r in res.rows)


def test_native_table_loads_typed(tmp_path):
    pd = pytest.importorskip("pandas")
    import noisydeq

    task = _task()
    res = _sweep(tmp_path, "load", task)
    df = noisydeq.load_results(res.run_dir.path)
    assert df["native"].dtype == bool and int(df["native"].sum()) == len(df) // 3
    raw = pd.read_csv(res.run_dir.csv_path)
    assert raw["native"].dtype == bool
    assert raw.loc[raw["native"], "value"].tolist() == df.loc[df["native"], "value"].tolist()
    pq = pd.read_parquet(res.run_dir.parquet_path)
    assert pq["native"].dtype == bool and pq["native"].tolist() == raw["native"].tolist()
    back = read_csv(res.run_dir.csv_path)
    assert [r["native"] for r in back] == [r["native"] for r in res.rows]
    # the grid's aggregate is unchanged by the native row: a row apart, filtered by a flag
    assert df.loc[~df["native"], "snr_db"].isin([0.0, 10.0]).all()


@pytest.mark.parametrize("args, says", [
    (["--snr", "0,10,native", "--noise-site", "signal", "--device", "ideal"],
     "snr_db 'native': the device at its own knobs is a level of device noise"),
    (["--snr", "native", "--device", "ideal"], "--snr native: device 'ideal' is ideal"),
])
def test_native_without_knobs_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys,
                                                             args, says):
    refused_writing_nothing(["sweep", *args, "--depths", "1", "--chips", "1", "--quiet"],
                            tmp_path, monkeypatch, capsys, says)


def test_table_command_at_the_native_level(tmp_path, capsys):
    from noisydeq.cli import main

    task = _task()
    res = _sweep(tmp_path, "table", task)
    main(["table", str(res.run_dir.path), "--snr", "native"])
    text = capsys.readouterr().out
    level = next(r["snr_db"] for r in res.rows if r["native"])
    assert f"native level ({level:.1f} dB" in text
    deq = [r["value"] for r in res.rows if r["native"] and r["kind"] == "deq" and r["depth"] == 1]
    assert f"{sum(deq) / len(deq):.3f}" in text.splitlines()[-2]
    plain = _sweep(tmp_path, "plain", task, snr="0,10")
    with pytest.raises(SystemExit) as stop:
        main(["table", str(plain.run_dir.path), "--snr", "native"])
    assert stop.value.code != 0 and "no native level" in capsys.readouterr().err


def test_summary_and_figure_name_the_native_level(tmp_path, monkeypatch):
    import csv

    from noisydeq.summary import summary_json, summary_table

    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    task = _task()
    spec = toy_spec(device="rram", noise_site="device", snr_db="0,10,native", chips=2,
                    max_rows=400)
    res = run_sweep(spec, tmp_path / "fig", task=task, models=toy_models(task),
                    progress=False, plots=True)
    native = [r for r in res.rows if r["native"]]
    level = native[0]["snr_db"]
    text = summary_table(res.rows)
    head, _, *lines = text.splitlines()
    assert head.split()[-3:] == ["native", f"{level:.1f}", "dB"] and "0 dB" in head
    for sm in toy_models(task):  # each model's line ends with its native mean
        vals = [r["value"] for r in native if r["model_id"] == sm.model_id]
        line = next(ln for ln in lines if ln.split()[:3] == [sm.kind.upper(), str(sm.depth),
                                                             str(sm.width)])
        assert line.split()[-1].rstrip("~*") == f"{sum(vals) / len(vals):.3f}"
    records = summary_json(res.rows)
    assert [r["snr_db"] for r in records if r["native"]] == [level] * len(toy_models(task))
    assert all(r["snr_db"] in (0.0, 10.0) for r in records if not r["native"])
    points = list(csv.DictReader(open(res.run_dir.figures / "metric_vs_snr.csv")))
    assert {p["native"] for p in points} == {"True", "False"}
    assert all(float(p["snr_db"]) == level for p in points if p["native"] == "True")
    depth = list(csv.DictReader(open(res.run_dir.figures / "metric_vs_depth.csv")))
    assert {float(p["snr_db"]) for p in depth} <= {0.0, 10.0}  # the grid's levels only


def test_native_in_an_experiment_file_and_the_python_api():
    from noisydeq.config import SweepSpec, build
    from noisydeq.specs.experiment import ExperimentSpec
    from noisydeq.specs.toml import dumps_toml, loads_toml

    text = ('name = "x"\ntitle = "x"\ndescription = "x"\n[sweep]\ndevice = "rram"\n'
            '[quick]\nsnr_db = [0, 10, "native"]\n[full]\nsnr_db = "0:30:10,native"\n')
    exp = loads_toml(ExperimentSpec, text)
    quick, full = exp.resolve("quick"), exp.resolve("full")
    assert quick.snr_native and quick.snr_db == [0.0, 10.0]
    assert full.snr_native and full.snr_db == [0.0, 10.0, 20.0, 30.0]
    api = build(SweepSpec, {"snr_db": [0, 10, "native"]})
    assert api == quick and loads_toml(SweepSpec, dumps_toml(api)) == api
    plain = build(SweepSpec, {"snr_db": [0, 10]})
    assert "native" not in dumps_toml(plain) and "snr_native" not in dumps_toml(api)


def test_runs_listing_names_the_native_level(tmp_path):
    from noisydeq.commands.runs import describe

    task = _task()
    assert describe(_sweep(tmp_path, "a", task).run_dir.path)["snr_db"] == "0,10,native"
    assert describe(_sweep(tmp_path, "b", task, snr="native").run_dir.path)["snr_db"] == "native"
    assert describe(_sweep(tmp_path, "c", task, snr="0,10").run_dir.path)["snr_db"] == "0,10"


def test_native_sharing_a_grid_level_is_refused_before_any_write(tmp_path):
    from noisydeq.errors import NoisyDEQError

    task = _task()
    with pytest.raises(NoisyDEQError, match="native total SNR of device 'rram' is 21.2473 dB"):
        _sweep(tmp_path, "clash", task, snr="0,21.2473,native")
    assert not (tmp_path / "clash").exists()


def test_compare_command_at_the_native_level(tmp_path, capsys):
    import json

    from noisydeq.cli import main

    task = _task()
    res = _sweep(tmp_path, "compare", task)
    main(["compare", str(res.run_dir.path), "--snr", "native"])
    text = capsys.readouterr().out
    level = next(r["snr_db"] for r in res.rows if r["native"])
    assert f"at the native level ({level:.1f} dB" in text
    deq = [r["value"] for r in res.rows if r["native"] and r["kind"] == "deq" and r["depth"] == 1]
    mean = sum(deq) / len(deq)
    assert f"{mean:.3f}" in text or f"{mean:.4g}" in text, text
    main(["compare", str(res.run_dir.path), "--snr", "native", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["native"] is True and data["snr_db"] == level
    cell = next(c for c in data["deq"] if c["depth"] == 1)
    assert cell["mean"] == pytest.approx(mean)
    main(["compare", str(res.run_dir.path), "--snr", "10", "--json"])
    assert json.loads(capsys.readouterr().out)["native"] is False
    plain = _sweep(tmp_path, "plain", task, snr="0,10")
    with pytest.raises(SystemExit) as stop:
        main(["compare", str(plain.run_dir.path), "--snr", "native"])
    err = capsys.readouterr().err
    assert stop.value.code != 0 and "no native level" in err and len(err.strip().splitlines()) == 1
