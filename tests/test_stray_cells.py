"""``RunDir.stray_cells``: the one scan of ``cells/`` for files no current key reads that a
sweep's prune and a certify run's count of other cells share. It names the readable cells
(any cell version, with their records, in name order) and counts the rest; it removes and
writes nothing."""

from __future__ import annotations

from noisydeq import store
from noisydeq.results import CELL_FORMAT, RunDir


def test_stray_cells_names_readable_cells_counts_the_rest_and_writes_nothing(tmp_path):
    run = RunDir(tmp_path / "run")
    run.cells.mkdir(parents=True)
    kept = run.cell_path("current")
    store.write_signed_json(kept, {"format": CELL_FORMAT, "key": "current", "rows": []})
    older = run.cell_path("older")
    store.write_signed_json(older, {"format": "noisydeq-cell/1", "key": "older", "rows": []})
    other = run.cell_path("other")
    store.write_signed_json(other, {"format": CELL_FORMAT, "key": "other", "rows": []})
    (run.cells / "damaged.json").write_text("{not json")
    store.write_signed_json(run.cells / "foreign.json", {"format": "x/1", "key": "k"})
    store.write_signed_json(run.cells / "keyless.json", {"format": CELL_FORMAT})
    (run.cells / "notes.txt").write_text("not a .json file: never looked at")
    before = {p.name: p.read_bytes() for p in run.cells.iterdir()}

    cells, unreadable = run.stray_cells({kept.name})

    assert [p for p, _ in cells] == sorted([older, other])
    assert {r["key"] for _, r in cells} == {"older", "other"}
    assert unreadable == 3  # damaged, foreign format, no key
    assert {p.name: p.read_bytes() for p in run.cells.iterdir()} == before
    # nothing known: the current cell is a stray too; a missing cells/ has none
    assert len(run.stray_cells(set())[0]) == 3
    assert RunDir(tmp_path / "none").stray_cells(set()) == ([], 0)
