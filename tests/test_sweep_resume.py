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
