"""A sweep resumed after a change of code (or of a model's weights) computes its cells
again — their keys hold both — and says so in one line before any work; each old cell file
is removed once its cell is written again, so ``cells/`` holds the reachable cells only. The
same code and weights serve every cell; an extended run keeps the cells it holds."""

from __future__ import annotations

import torch

from noisydeq import store
from noisydeq.hardware import calibration_store
from noisydeq.sweep import run_sweep
from tests.sweep_helpers import toy_models, toy_spec, toy_task

OTHER = "0123456789abcdef"
SPEC = dict(snr_db="0,5,10,inf", chips=2, max_rows=100)  # 2 chunks of 2 levels: 16 cells


def _run(out, task, models=None, **kw):
    said: list[str] = []
    res = run_sweep(toy_spec(**{**SPEC, **kw}), out, task=task,
                    models=toy_models(task) if models is None else models, progress=False,
                    plots=False, echo=said.append)
    return res, said


def _cells(out):
    return sorted((out / "cells").glob("*.json"))


def _values(rows):
    return [(r["model_id"], r["chip"], r["snr_db"], r["value"]) for r in rows]


def test_cells_of_other_code_are_computed_again_and_replaced(tmp_path, monkeypatch):
    task, out = toy_task(), tmp_path / "run"
    first, said = _run(out, task)
    here = first.run_dir.code
    assert first.computed_cells == 16 and not said
    assert {store.read_signed_json(p)["code"] for p in _cells(out)} == {here}
    again, said = _run(out, task)  # the same code and weights: every cell served
    assert again.computed_cells == 0 and not said and again.rows == first.rows
    old = _cells(out)
    monkeypatch.setattr(calibration_store, "code_fingerprint", lambda *kind: OTHER)
    other, said = _run(out, task)
    assert other.computed_cells == 16 and other.superseded_cells == 16
    assert said == [f"note: 16 of 16 cells in {out} were computed by other noisydeq code: "
                    "they are computed again (edits to comments and docstrings do not count "
                    "as a change); each old file is removed once its cell is written again"]
    assert _values(other.rows) == _values(first.rows)  # only the fingerprint changed
    now = _cells(out)
    assert len(now) == 16 and not set(now) & set(old)  # the old files are gone
    assert {store.read_signed_json(p)["code"] for p in now} == {OTHER}
    # a cell file from before cells recorded their code: unknown code, computed again
    data = store.read_signed_json(now[0])
    del data["code"]
    store.write_signed_json(now[0], data)
    monkeypatch.setattr(calibration_store, "code_fingerprint", lambda *kind: here)
    back, said = _run(out, task)
    assert back.computed_cells == 16 and len(_cells(out)) == 16
    assert len(said) == 1 and "(1 of them before cells recorded their code)" in said[0]


def test_an_interrupted_recompute_keeps_the_old_files_it_has_not_replaced(tmp_path,
                                                                          monkeypatch):
    import pytest

    task, out = toy_task(), tmp_path / "run"
    _run(out, task)
    monkeypatch.setattr(calibration_store, "code_fingerprint", lambda *kind: OTHER)

    def stop(n):
        if n == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(toy_spec(**SPEC), out, task=task, models=toy_models(task), progress=False,
                  plots=False, on_cell=stop, echo=lambda s: None)
    assert len(_cells(out)) == 16  # 5 replaced, 11 old ones still there
    res, said = _run(out, task)
    assert (res.computed_cells, res.skipped_cells) == (11, 5)
    assert said[0].startswith(f"note: 11 of 16 cells in {out} were computed by other")
    assert len(_cells(out)) == 16


def test_other_weights_are_computed_again_and_an_extension_keeps_its_cells(tmp_path):
    task, out = toy_task(), tmp_path / "run"
    first, _ = _run(out, task)
    retrained = toy_models(task)  # the same ids, other weights for one model
    with torch.no_grad():
        next(retrained[0].model.parameters()).add_(0.5)
    res, said = _run(out, task, models=retrained)
    assert res.computed_cells == 4 and len(_cells(out)) == 16  # its 2 chips x 2 chunks
    assert said == [f"note: 4 of 16 cells in {out} were computed on other weights of their "
                    "model: they are computed again; each old file is removed once its cell "
                    "is written again"]
    # extending (more levels): every cell held is kept, the new chunk's computed
    ext, said = _run(out, task, models=retrained, snr_db="0,5,10,inf,20")
    assert (ext.computed_cells, ext.skipped_cells) == (8, 16) and not said
    assert len(_cells(out)) == 24
