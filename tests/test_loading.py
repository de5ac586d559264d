"""noisydeq.load_results: run directories as one tidy pandas DataFrame."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from sweep_helpers import toy_models, toy_spec, toy_task  # noqa: E402

import noisydeq  # noqa: E402
from noisydeq.errors import CorruptArtefact, NoisyDEQError  # noqa: E402
from noisydeq.results import read_csv  # noqa: E402
from noisydeq.sweep import run_sweep  # noqa: E402

pd = pytest.importorskip("pandas")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    task = toy_task(n=32)
    for name, snr in (("a", "0,inf"), ("b", "10")):
        run_sweep(toy_spec(snr_db=snr, chips=2), root / name, task=task,
                  models=toy_models(task), progress=False, jobs=1)
    return root


def test_one_run_equals_its_table_with_types(runs):
    df = noisydeq.load_results(runs / "a")
    rows = read_csv(runs / "a" / "results.csv")
    assert len(df) == len(rows) == 4 * 2 * 2
    assert df["value"].tolist() == [r["value"] for r in rows]
    assert df["depth"].dtype.kind == "i" and df["snr_db"].dtype.kind == "f"
    assert set(df["snr_db"]) == {0.0, float("inf")}
    assert (df["run"] == "a").all() and (df["chips"] == 2).all()  # a spec field
    assert "depths" not in df.columns  # lists are what the rows enumerate


def test_a_folder_of_runs_and_a_list(runs):
    df = noisydeq.load_results(runs)
    assert sorted(df["run"].unique()) == ["a", "b"] and len(df) == 16 + 8
    both = noisydeq.load_results([runs / "b" / "results.csv", runs / "a"])
    assert len(both) == len(df)
    mean = df[df["snr_db"] == 10.0].groupby(["kind", "depth"])["value"].mean()
    assert len(mean) == 4


def test_bad_paths_and_damaged_tables(runs, tmp_path):
    with pytest.raises(NoisyDEQError, match="not a run directory"):
        noisydeq.load_results(tmp_path / "missing")
    with pytest.raises(NoisyDEQError, match="no results.csv under"):
        noisydeq.load_results(tmp_path)
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(runs / "a", copy)
    text = (copy / "results.csv").read_text()
    (copy / "results.csv").write_text(text.replace(",accuracy,", ",accuracy,9", 1))
    with pytest.raises(CorruptArtefact, match="results.csv"):
        noisydeq.load_results(copy)


def test_without_pandas_one_line(runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(NoisyDEQError, match="pip install pandas"):
        noisydeq.load_results(runs / "a")


# ------------------------------------------------------------------ declared column types

def _cli_sweep(out, cache, *extra):
    """A tiny hardware-aware sweep on digits (one FFW, digital and trained on rram)."""
    from click.testing import CliRunner

    from noisydeq.cli import cli

    res = CliRunner().invoke(cli, [
        "sweep", "--depths", "1", "--kinds", "ffw", "--chips", "1", "--epochs", "1",
        "--set", "max_train_samples=256", "--train-device", "none,rram",
        "--train-device-snr", "10", "--device", "rram", "--noise-site", "device",
        "--digital-layers", "head", "--out", str(out), "--quiet", "--jobs", "1",
        "--threads", "1", *extra], env={"NOISYDEQ_CACHE": str(cache)})
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def hwa_runs(tmp_path_factory, runs):
    """A hardware-aware sweep with the native level, one without, and the plain toy runs."""
    root = tmp_path_factory.mktemp("hwa")
    cache = root / "cache"
    native = _cli_sweep(root / "runs" / "native", cache, "--snr", "0,native")
    plain = _cli_sweep(root / "runs" / "plain", cache, "--snr", "0,10")
    return native, plain, runs


def test_every_sweep_layout_loads_with_the_declared_types(hwa_runs):
    from load_helpers import assert_loads_declared

    from noisydeq.results import COLUMNS, NATIVE_COLUMNS, TRAIN_DEVICE_COLUMNS

    native, plain, toy = hwa_runs
    assert list(assert_loads_declared(native).columns)[2:2 + len(COLUMNS) + 4] == [
        *COLUMNS, *TRAIN_DEVICE_COLUMNS, *NATIVE_COLUMNS]
    df = assert_loads_declared(plain)  # HWA columns, no native column
    assert "native" not in df.columns and df["train_device_snr_db"].isna().any()
    # digital rows are nan: grouping and arithmetic on the SNR work
    means = df.groupby("train_device_snr_db", dropna=False)["value"].mean()
    assert len(means) == 2 and (df["train_device_snr_db"] + 1).dtype == "float64"
    assert_loads_declared(toy / "a")


def test_runs_of_different_layouts_concatenate_without_object_columns(hwa_runs):
    from load_helpers import dtypes

    from noisydeq.loading import declared_columns

    native, plain, toy = hwa_runs
    df = noisydeq.load_results([native, plain, toy / "a"])
    types, want = declared_columns(), dtypes(pd)
    for c in df.columns:
        if c in types and types[c] != "str":
            assert df[c].dtype != object, c
    for c, t in types.items():
        if c in df.columns and t in ("int", "float"):
            assert str(df[c].dtype) == want[t], c  # every run has them: plain numpy dtypes
    # the native column only the first run has: nullable bool, missing elsewhere
    assert str(df["native"].dtype) == "boolean"
    assert df["native"].isna().sum() == len(df) - len(noisydeq.load_results(native))
    assert int(df["native"].sum()) == 2  # the native level of two models on one chip
    # an HWA column the toy runs lack stays a float column; the table's int columns ints
    assert df["train_device_snr_db"].dtype == "float64" and df["chip"].dtype == "int64"
    assert df.groupby(["run", "snr_db"])["value"].mean().notna().all()


def test_pandas_csv_and_parquet_round_trip_keeps_the_types(hwa_runs, tmp_path):
    native = hwa_runs[0]
    df = noisydeq.load_results(native)
    df.to_parquet(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), df)
    df.to_csv(tmp_path / "t.csv", index=False)
    back = pd.read_csv(tmp_path / "t.csv")
    assert dict(back.dtypes) == dict(df.dtypes)
    pd.testing.assert_frame_equal(back, df)


def _resealed(src, dst, text):
    """A copy of the run ``src`` at ``dst`` whose results.csv is ``text`` (resealed)."""
    import shutil

    from noisydeq import store

    shutil.copytree(src, dst)
    (dst / "results.csv").write_text(text)
    store.write_manifest(dst, [dst / "results.csv"])
    return dst


def test_a_column_no_writer_declares_is_typed_by_its_values(runs, tmp_path):
    lines = (runs / "a" / "results.csv").read_text().splitlines()
    extra = [lines[0] + ",extra_count,extra_word,extra_gap"] + [
        f"{line},{i},w{i},{'' if i == 1 else i / 2}" for i, line in enumerate(lines[1:])]
    run = _resealed(runs / "a", tmp_path / "extra", "\n".join(extra) + "\n")
    df = noisydeq.load_results(run)
    assert df["extra_count"].dtype == "int64" and df["extra_count"].tolist()[:3] == [0, 1, 2]
    assert df["extra_word"].tolist()[0] == "w0" and df["extra_word"].dtype.kind in "OT"
    assert df["extra_gap"].dtype.kind in "OT"  # an empty cell: text, as before
    assert df["depth"].dtype == "int64" and df["snr_db"].dtype == "float64"  # declared


def test_an_older_table_with_empty_cells_loads(runs, tmp_path):
    from noisydeq.results import COLUMNS

    lines = (runs / "a" / "results.csv").read_text().splitlines()
    header = lines[0] + ",train_device,train_device_snr_db,train_noise_mode"
    body = [line + (",none,," if i % 2 else ",rram,10,physical")
            for i, line in enumerate(lines[1:])]
    chip = list(COLUMNS).index("chip")
    cells = body[1].split(",")
    cells[chip] = ""  # an empty integer cell
    body[1] = ",".join(cells)
    run = _resealed(runs / "a", tmp_path / "old", "\n".join([header, *body]) + "\n")
    df = noisydeq.load_results(run)
    assert df["train_device_snr_db"].dtype == "float64"
    assert df["train_device_snr_db"].isna().sum() == len(body) // 2
    assert str(df["chip"].dtype) == "Int64" and df["chip"].isna().sum() == 1
    assert noisydeq.load_results([run, runs / "b"])["chip"].dtype == "Int64"


def test_a_declared_column_holding_other_text_is_one_error(runs, tmp_path):
    text = (runs / "a" / "results.csv").read_text()
    lines = text.splitlines()
    lines[3] = lines[3].replace(",accuracy,", ",accuracy,high", 1)
    run = _resealed(runs / "a", tmp_path / "bad", "\n".join(lines) + "\n")
    with pytest.raises(CorruptArtefact, match="line 4: column value holds 'high"):
        noisydeq.load_results(run)


def test_the_declarations_are_the_writers_own_with_one_type_per_name():
    from noisydeq.analysis.certified import COLUMNS as CERTIFY
    from noisydeq.attacks.runner import ATTACK_COLUMNS, POSITION_COLUMNS
    from noisydeq.loading import _merge, declared_columns
    from noisydeq.results import SWEEP_TABLE_COLUMNS
    from noisydeq.studies.merge import COLUMNS as STUDY

    types = declared_columns()
    for table in (SWEEP_TABLE_COLUMNS, ATTACK_COLUMNS, POSITION_COLUMNS, CERTIFY, STUDY):
        assert {c: types[c] for c in table} == table
    assert set(types.values()) == {"str", "int", "float", "bool"}
    with pytest.raises(NoisyDEQError, match="column seed is declared int and float"):
        _merge(dict(types), {"other": {"seed": "float"}})


def test_a_sweep_table_alone_does_not_import_torch(runs):
    import subprocess

    code = ("import sys, noisydeq; noisydeq.load_results(sys.argv[1]); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, str(runs / "a")], check=True)
