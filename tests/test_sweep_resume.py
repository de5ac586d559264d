"""Resume: a sweep killed part-way finishes the remaining cells only, with identical results."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from noisydeq.sweep import run_sweep
from tests.sweep_helpers import toy_models, toy_spec, toy_task

ROOT = Path(__file__).resolve().parents[1]
SPEC = dict(snr_db="0,5,10,inf", chips=2, max_rows=100)  # 48 rows/level: 2 levels per cell


def _full(tmp_path):
    task = toy_task()
    return run_sweep(toy_spec(**SPEC), tmp_path / "full", task=task, models=toy_models(task),
                     progress=False, plots=False)


def test_injected_interrupt_then_resume(tmp_path):
    task = toy_task()
    full = _full(tmp_path)
    total = full.computed_cells
    assert total == 4 * 2 * 2

    def stop(n):
        if n == 3:
            raise KeyboardInterrupt

    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(toy_spec(**SPEC), out, task=task, models=toy_models(task), progress=False,
                  plots=False, on_cell=stop)
    assert not (out / "results.csv").exists()  # the table is only written once complete
    assert len(list((out / "cells").glob("*.json"))) == 3
    res = run_sweep(toy_spec(**SPEC), out, task=task, models=toy_models(task), progress=False,
                    plots=False)
    assert (res.skipped_cells, res.computed_cells) == (3, total - 3)
    assert res.rows == full.rows
    assert (out / "results.csv").read_text() == full.run_dir.csv_path.read_text()
    again = run_sweep(toy_spec(**SPEC), out, task=task, models=toy_models(task), progress=False,
                      plots=False)
    assert again.computed_cells == 0 and again.rows == full.rows


def test_each_cell_file_is_read_once_per_run(tmp_path, monkeypatch):
    """A run reads each saved cell once, rows and per-layer rows together: a finished cell
    found while planning is not read again for the table; a cell computed in the run is read
    back once. The tables are those of the first run."""
    from noisydeq import store

    reads = []

    def counting(path, what, *a, **k):
        if what == "cell file":
            reads.append(Path(path).name)
        return real(path, what, *a, **k)

    real = store.read_signed_json
    monkeypatch.setattr(store, "read_signed_json", counting)
    task = toy_task()
    spec = dict(SPEC, device="snr", noise_site="device")  # cells with per-layer rows
    first = run_sweep(toy_spec(**spec), tmp_path / "r", task=task, models=toy_models(task),
                      progress=False, plots=False)
    cells = sorted(p.name for p in (tmp_path / "r" / "cells").glob("*.json"))
    assert first.computed_cells == len(cells) == 16 and sorted(reads) == cells
    layers = (tmp_path / "r" / "layers.csv").read_text()
    assert layers.count("\n") > 1
    reads.clear()
    again = run_sweep(toy_spec(**spec), tmp_path / "r", task=task, models=toy_models(task),
                      progress=False, plots=False)
    assert again.computed_cells == 0 and sorted(reads) == cells
    assert again.rows == first.rows and (tmp_path / "r" / "layers.csv").read_text() == layers


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    full = _full(tmp_path)
    out = tmp_path / "killed"
    script = textwrap.dedent(
        f"""
        import os, signal
        from noisydeq.sweep import run_sweep
        from tests.sweep_helpers import toy_models, toy_spec, toy_task
        task = toy_task()
        def kill(n):
            if n == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        run_sweep(toy_spec(**{SPEC!r}), {str(out)!r}, task=task, models=toy_models(task),
                  progress=False, plots=False, on_cell=kill)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert len(list((out / "cells").glob("*.json"))) == 2
    assert not (out / "results.csv").exists()
    task = toy_task()
    res = run_sweep(toy_spec(**SPEC), out, task=task, models=toy_models(task), progress=False,
                    plots=False)
    assert res.skipped_cells == 2 and res.computed_cells == full.computed_cells - 2
    assert (out / "results.csv").read_text() == full.run_dir.csv_path.read_text()
    keys = [(r["model_id"], r["chip"], r["snr_db"]) for r in res.rows]
    assert len(keys) == len(set(keys))  # no duplicates
