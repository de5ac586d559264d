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
