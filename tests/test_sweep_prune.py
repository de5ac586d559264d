"""Cell files outside a sweep's plan: never read into a table, and deleted — with one line
saying how many and why — at the end of a completed sweep whose plan is the spec's whole
grid (``run_sweep(prune=...)``, :meth:`noisydeq.sweep.plan.CellRunner.prune`)."""

from __future__ import annotations

import pytest

from noisydeq import store
from noisydeq.results import CELL_FORMAT, RunDir
from noisydeq.sweep import run_sweep
from tests.sweep_helpers import toy_models, toy_spec, toy_task

SPEC = dict(snr_db="0,5,10,inf", chips=2, max_rows=100)  # 2 chunks of 2 levels: 16 cells
#: a value no cell of the toy sweep can hold (accuracies are multiples of 1/48)
PLANTED = 0.123456789


def _run(out, task, prune=None, models=None, jobs=None, **kw):
    said: list[str] = []
    res = run_sweep(toy_spec(**{**SPEC, **kw}), out, task=task,
                    models=toy_models(task) if models is None else models, progress=False,
                    plots=False, echo=said.append, prune=prune, jobs=jobs)
    return res, said


def _cells(out):
    return sorted((out / "cells").glob("*.json"))


def _plant(out, source, key, **row):
    """A signed cell file of key ``key`` holding ``source``'s rows with ``row`` set and the
    planted value: a file a sweep of another plan could have written."""
    record = store.read_signed_json(source)
    record["key"] = key
    record["rows"] = [{**r, **row, "value": PLANTED} for r in record["rows"]]
    path = out / "cells" / RunDir.cell_file_name(key)
    store.write_signed_json(path, record)
    return path


def _with(key, **parts):
    """``key`` with some of its ``|`` parts replaced (0 version, 1 model id, 2 weights,
    3 chip, 4 levels, 5 content)."""
    fields = key.split("|")
    for i, value in parts.items():
        fields[int(i[1:])] = value
    return "|".join(fields)


def test_cells_outside_the_plan_never_reach_the_table_and_are_pruned(tmp_path):
    task, out = toy_task(), tmp_path / "run"
    first, _ = _run(out, task)
    csv = (out / "results.csv").read_bytes()
    source = _cells(out)[0]
    key = store.read_signed_json(source)["key"]
    planted = [
        _plant(out, source, _with(key, p1="deq-d9-w99-s0-tinf"), model_id="deq-d9-w99-s0-tinf"),
        _plant(out, source, _with(key, p3="chip7"), chip=7),
        _plant(out, source, _with(key, p4="0,5,10")),  # another chunking
        _plant(out, source, _with(key, p5="00112233445566778899")),  # replaced, not removed
        _plant(out, source, _with(key, p0="v1")),  # an older cell-key format
        _plant(out, source, "|".join(key.split("|")[:5])),  # a key of five parts
    ]
    damaged = out / "cells" / "0123456789abcdef0123.json"
    damaged.write_text('{"not": "a cell"}\n')
    # given models: the plan may be part of what the directory holds, so nothing goes, and
    # no reader picks a planted file up
    again, said = _run(out, task)
    assert again.computed_cells == 0 and again.rows == first.rows and not said
    assert (out / "results.csv").read_bytes() == csv
    assert PLANTED not in [r["value"] for r in again.rows]
    assert str(PLANTED) not in csv.decode()
    assert again.pruned_cells == 0 and all(p.is_file() for p in planted)
    # the spec's whole plan: the planted files go, the damaged one stays, both said
    pruned, said = _run(out, task, prune=True)
    assert pruned.computed_cells == 0 and pruned.rows == first.rows
    assert (out / "results.csv").read_bytes() == csv
    assert pruned.pruned_cells == 6 and not any(p.exists() for p in planted)
    assert damaged.is_file() and len(_cells(out)) == 17
    assert said == [
        f"note: removed 6 cell files from {out / 'cells'} that no cell of this sweep reads "
        "(2 of an older cell format; 1 of models the sweep no longer holds; 1 of chips the "
        "sweep does not hold; 1 of another chunking of the SNR levels (another max_rows; the "
        "plan's cells hold their rows); 1 replaced by the plan's cell of the same model, "
        "chip and levels (a recompute stopped before removing them)); results.csv never "
        "held them, and a run directory only grows, so no resume of it reads them",
        f"note: 1 file in {out / 'cells'} is no readable cell file of this noisydeq: left "
        "as it is (never read)"]
    assert not _run(out, task, prune=True)[1][:-1]  # only the damaged file's line again


def test_another_max_rows_recomputes_and_prunes_the_old_chunks(tmp_path):
    task, out = toy_task(), tmp_path / "run"
    first, _ = _run(out, task, prune=True)
    assert first.computed_cells == 16 and first.pruned_cells == 0
    old = set(_cells(out))
    wider, said = _run(out, task, prune=True, max_rows=200)  # one chunk of 4 levels
    assert (wider.computed_cells, wider.pruned_cells) == (8, 16)
    assert wider.rows == first.rows  # the same table, cut into other cells
    assert not old & set(_cells(out)) and len(_cells(out)) == 8
    assert len(said) == 1 and "16 of another chunking of the SNR levels" in said[0]
    # extending keeps every cell it holds: the new level's chunk is added, nothing pruned
    ext, said = _run(out, task, prune=True, max_rows=200, snr_db="0,5,10,inf,20")
    assert (ext.computed_cells, ext.pruned_cells, len(_cells(out))) == (8, 0, 16)
    assert not said
    # asking for fewer levels or chips runs the union: nothing is pruned either
    fewer, said = _run(out, task, prune=True, max_rows=200, snr_db="0", chips=1)
    assert (fewer.computed_cells, fewer.pruned_cells, len(_cells(out))) == (0, 0, 16)


def test_a_sweep_of_the_specs_models_prunes_by_default(tmp_path, monkeypatch):
    from noisydeq.sweep import write

    task, out = toy_task(), tmp_path / "run"
    monkeypatch.setattr(write, "family_models", lambda spec, task, progress=True:
                        toy_models(task))
    _run(out, task)
    source = _cells(out)[0]
    key = store.read_signed_json(source)["key"]
    stray = _plant(out, source, _with(key, p4="0,5,10"))
    res, said = _run(out, task, models=write.family_models, jobs=1)
    assert res.pruned_cells == 1 and not stray.exists() and len(said) == 1


@pytest.mark.parametrize("format_", ["noisydeq-cell/2", CELL_FORMAT])
def test_a_stopped_sweep_prunes_nothing(tmp_path, format_):
    task, out = toy_task(), tmp_path / "run"
    _run(out, task)
    source = _cells(out)[0]
    record = store.read_signed_json(source)
    stray = _plant(out, source, _with(record["key"], p1="ffw-d9-w9-s0-tinf"))
    data = store.read_signed_json(stray)
    data["format"] = format_
    store.write_signed_json(stray, data)
    source.unlink()  # one cell of the plan missing: computed again, then stopped

    def stop(n):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(toy_spec(**SPEC), out, task=task, models=toy_models(task), progress=False,
                  plots=False, on_cell=stop, echo=lambda s: None, prune=True)
    assert stray.is_file()
