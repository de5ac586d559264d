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


def test_another_max_rows_serves_the_old_chunks_and_keeps_them(tmp_path):
    """max_rows only cuts the levels into other cells (the rows are the same, bitwise): a
    sweep resumed with another max_rows takes every level from the cells it holds instead
    of computing them all again, and prune keeps the files it took them from. Tables and
    layers byte-equal to a fresh run of that max_rows."""
    task, out = toy_task(), tmp_path / "run"
    kw = dict(device="snr", noise_site="device")  # cells with per-layer rows
    first, _ = _run(out, task, prune=True, **kw)
    assert first.computed_cells == 16 and first.pruned_cells == 0
    old = set(_cells(out))
    fresh = {}
    for max_rows in (200, 144, 48):  # one chunk of 4 levels; [0, 5, 10] + [inf]; one each
        res, said = _run(out, task, prune=True, max_rows=max_rows, **kw)
        assert (res.computed_cells, res.pruned_cells, said) == (0, 0, [])
        assert res.skipped_cells == 8 * {200: 1, 144: 2, 48: 4}[max_rows]
        assert set(_cells(out)) == old
        ref, _ = _run(tmp_path / f"fresh{max_rows}", task, max_rows=max_rows, **kw)
        fresh[max_rows] = ref
        for name in ("results.csv", "results.parquet", "layers.csv"):
            assert (out / name).read_bytes() == (tmp_path / f"fresh{max_rows}" / name
                                                 ).read_bytes(), (max_rows, name)
    # extending with another max_rows: the held levels served, the new one computed
    ext, said = _run(out, task, prune=True, max_rows=200, snr_db="0,5,10,inf,20", **kw)
    assert (ext.computed_cells, ext.pruned_cells, len(_cells(out))) == (8, 0, 24)
    assert not said
    # asking for fewer levels or chips runs the union: nothing is pruned either
    fewer, said = _run(out, task, prune=True, max_rows=200, snr_db="0", chips=1, **kw)
    assert (fewer.computed_cells, fewer.pruned_cells, len(_cells(out))) == (0, 0, 24)


def test_a_level_no_cell_holds_is_computed_and_the_cells_not_read_are_pruned(tmp_path):
    """A chunk of the new max_rows is served only when every one of its levels is held; one
    lacking a level is computed whole, and the old cells of its other levels, now read by
    no cell, are pruned as another chunking's."""
    task, out = toy_task(), tmp_path / "run"
    first, _ = _run(out, task, prune=True)  # chunks [0, 5] and [10, inf]
    key = {store.read_signed_json(p)["key"]: p for p in _cells(out)}
    lost = next(p for k, p in key.items() if k.split("|")[4] == "0,5")
    kept = next(p for k, p in key.items() if k.split("|")[4] == "10,inf"
                and k.split("|")[:4] == store.read_signed_json(lost)["key"].split("|")[:4])
    lost.unlink()
    res, said = _run(out, task, prune=True, max_rows=200)  # one chunk of 4 levels
    assert (res.computed_cells, res.pruned_cells) == (1, 1) and not kept.exists()
    assert res.rows == first.rows
    assert len(said) == 1 and "1 of another chunking of the SNR levels" in said[0]
    assert len(_cells(out)) == 15  # 14 old chunks served from, the new one


@pytest.mark.parametrize("damage", ["digest", "rows"])
def test_a_damaged_cell_of_another_chunking_is_not_served(tmp_path, damage):
    """A cell of another chunking that fails its digest, or whose rows are not the ones its
    key promises (another level), is not served: its chunk is computed. A file that is no
    readable cell is left as it is; a readable one no cell reads is pruned."""
    task, out = toy_task(), tmp_path / "run"
    first, _ = _run(out, task)
    victim = _cells(out)[0]
    record = store.read_signed_json(victim)
    if damage == "digest":
        victim.write_text(victim.read_text().replace('"value":', '"value":1+', 1))
    else:
        record["rows"] = [{**r, "snr_db": 20.0} for r in record["rows"]]
        store.write_signed_json(victim, record)
    res, said = _run(out, task, prune=True, max_rows=200)
    assert res.computed_cells == 1 and res.rows == first.rows
    assert victim.exists() == (damage == "digest")
    # the other chunk of the victim's (model, chip), read by no cell now, pruned too
    if damage == "digest":
        assert len(said) == 2 and "(1 of another chunking" in said[0]
        assert "1 file in" in said[1] and "no readable cell file" in said[1]
    else:
        assert len(said) == 1 and "(2 of another chunking" in said[0]


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
