"""`noisydeq runs`: run directories with their specs and status (reads only)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from sweep_helpers import toy_models, toy_spec, toy_task  # noqa: E402

from noisydeq import store  # noqa: E402
from noisydeq.cli import cli as main  # noqa: E402
from noisydeq.sweep import run_sweep  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    task = toy_task(n=32)
    run_sweep(toy_spec(snr_db="0,inf", chips=1), root / "done", task=task,
              models=toy_models(task), progress=False, jobs=1)
    for name in ("partial", "damaged", "busy"):
        shutil.copytree(root / "done", root / name)
    (root / "partial" / "results.csv").unlink()
    cfg = root / "damaged" / "config.toml"
    cfg.write_text(cfg.read_text().replace("chips = 1", "chips = 2"))
    return root


def test_status_of_each_kind_of_run(root):
    with store.DirLock(root / "busy"):
        res = CliRunner().invoke(main, ["runs", str(root), "--json"])
    assert res.exit_code == 0, res.output
    by = {Path(i["run"]).name: i for i in json.loads(res.output)}
    assert by["done"]["status"] == "finished" and by["done"]["cells"] >= 1
    assert by["done"]["snr_db"] == "0,inf" and by["done"]["chips"] == "1"
    assert by["partial"]["status"].startswith("partial")
    assert by["damaged"]["status"].startswith("damaged") and "config.toml" in by["damaged"][
        "status"]
    assert by["busy"]["status"] == "running"
    table = CliRunner().invoke(main, ["runs", str(root)]).output.splitlines()
    assert table[0].startswith("run") and table[5] == ""
    # the status column holds the word; why (a path and a digest message) follows the table,
    # so a damaged run does not push every other column ~200 characters right
    head = table[0]
    assert head.index("cells") - head.index("status") == len("finished") + 2, head
    assert [ln.split(": ")[1] for ln in table[6:]] == ["damaged", "partial"], table
    assert "config.toml" in table[6] and table[7].endswith("again to resume"), table


def test_modified_is_when_the_run_last_changed(root, tmp_path):
    """`modified` was config.toml's time, which a resumed or recomputed run never rewrites:
    a run created long ago and finished now showed its creation time."""
    import os
    import time

    run = tmp_path / "old"
    shutil.copytree(root / "done", run)
    long_ago = time.time() - 30 * 86400
    for p in [run / "config.toml", run / "meta.json", run / "SHA256SUMS", run / "cells",
              *run.glob("cells/*")]:
        os.utime(p, (long_ago, long_ago))
    now = time.time()
    os.utime(run / "results.csv", (now, now))  # written last, e.g. by a resume
    res = CliRunner().invoke(main, ["runs", str(run), "--json"])
    assert res.exit_code == 0, res.output
    (info,) = json.loads(res.output)
    assert info["modified"] == time.strftime("%Y-%m-%d %H:%M", time.localtime(now)), info


def test_bad_directory_is_one_line(tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "noisydeq.cli", "runs", str(tmp_path / "nope")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().endswith("is not a directory")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_resume_that_stops_leaves_a_partial_run_not_a_damaged_one(root, tmp_path):
    """Resuming a finished run rewrites meta.json; a resume that then stops (here on a
    damaged cell) left the old SHA256SUMS over the new meta.json, and `runs` called the run
    damaged although the same command resumes it. Opening a run for more work unseals it."""
    from noisydeq.errors import NoisyDEQError

    run = tmp_path / "resumed"
    shutil.copytree(root / "done", run)
    cell = sorted((run / "cells").glob("*.json"))[0]
    cell.write_text(cell.read_text()[:-20])
    task = toy_task(n=32)
    with pytest.raises(NoisyDEQError):
        run_sweep(toy_spec(snr_db="0,inf", chips=1), run, task=task, models=toy_models(task),
                  progress=False, jobs=1)
    res = CliRunner().invoke(main, ["runs", str(run), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)[0]["status"].startswith("partial"), res.output


@pytest.mark.parametrize("grid", ["0:30", "0:30:5,inf", "0,10,20,inf", "0,inf", "-5:30,inf",
                                  "0:10:0.5", "0:1:0.1", "0,1,2,5", "1.5", "inf", "0,7,30"])
def test_the_snr_grid_is_written_as_short_as_it_reads_back(grid):
    from noisydeq.specs.noise import parse_snr_range, snr_grid_text

    levels = parse_snr_range(grid)
    text = snr_grid_text(levels)
    assert parse_snr_range(text) == levels
    assert len(text) <= len(grid) or "," in grid, (grid, text)


def test_a_31_level_grid_is_one_range_in_the_table(tmp_path):
    """`noisydeq runs` wrote the default sweep's grid as its 31 levels (0,1,2,...,30: the
    widest column by far); it writes the --snr text that gives them."""
    task = toy_task(n=32)
    run_sweep(toy_spec(snr_db="0:30", chips=1), tmp_path / "r", task=task,
              models=toy_models(task), progress=False, jobs=1)
    res = CliRunner().invoke(main, ["runs", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)[0]["snr_db"] == "0:30"


def test_no_runs_folder_yet_is_not_an_error(tmp_path, monkeypatch):
    """`noisydeq runs` (its --help's first example) in a folder where no sweep has run yet
    said 'runs: runs is not a directory' and exited 2; a folder the user names must exist."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["runs"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("no run directories below runs (there is no runs/ here yet")
    res = CliRunner().invoke(main, ["runs", "--json"])
    assert res.exit_code == 0 and json.loads(res.output) == []
    res = CliRunner().invoke(main, ["runs", "elsewhere"])
    assert res.exit_code != 0 and "elsewhere is not a directory" in str(res.exception)
