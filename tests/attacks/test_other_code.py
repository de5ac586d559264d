"""A resumed attack run never serves a cell other noisydeq code computed without saying so:
cells record the code fingerprint; cells of other code (or of none: written before cells
recorded it) are computed again, or served with ``keep_other_code`` and said; with the same
code every cell is served."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from noisydeq import fingerprint, store
from noisydeq.attacks import runner as runner_mod
from noisydeq.attacks.runner import SOLVE_COLUMNS_FILL, run_attacks
from noisydeq.sweep import SweepModel
from tests.attacks.helpers import small_deq

OTHER = "0123456789abcdef"
MARK = 0.123456789  # a value no cell of this grid computes (32 samples: k/32)


@pytest.fixture()
def grid():
    """A float64 DEQ, its task and a two-cell grid (ε 0 and 0.05) judged by the final and
    the early state (n chosen on 8 validation inputs: one early-state selection)."""
    from noisydeq.attacks.grid import AttackRunSpec
    from noisydeq.config import build

    m = small_deq()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    task = SimpleNamespace(name="toy", kind="classification", x_test=x, y_test=y,
                           x_train=x[:8], out_features=3)
    spec = build(AttackRunSpec, {"family": "x", "attacks": "pgd-eps", "eps": "0,0.05",
                                 "pgd_steps": [2], "samples": 32, "val_samples": 8,
                                 "estimators": ["backprop"], "defences": ["final", "early"]})
    return spec, SweepModel(m, "deq", 1, 12, 64), task


def _run(grid, out, monkeypatch, **kw):
    """The run and its echoed lines; counts the cells and early selections computed."""
    spec, member, task = grid
    counts = {"cells": 0, "early": 0}
    compute, early = runner_mod.Runner.compute, runner_mod.state_record

    def counting(self, cell):
        counts["cells"] += 1
        return compute(self, cell)

    def counting_early(*a, **k):
        counts["early"] += 1
        return early(*a, **k)

    monkeypatch.setattr(runner_mod.Runner, "compute", counting)
    monkeypatch.setattr(runner_mod, "state_record", counting_early)
    said: list[str] = []
    res = run_attacks(spec, [member], task, out, progress=False, plots=False,
                      echo=said.append, **kw)
    return res, said, counts


def _mark(out) -> None:
    """Rewrite every attack cell of ``out`` (same code record) with ``value`` = MARK."""
    for p in (out / "cells").iterdir():
        data = store.read_signed_json(p)
        if data["key"].startswith("cell|"):
            data["rows"] = [{**r, "value": MARK} for r in data["rows"]]
            store.write_signed_json(p, data)


def _codes(out) -> set:
    return {store.read_signed_json(p).get("code") for p in (out / "cells").iterdir()}


def test_same_code_serves_every_cell(grid, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    first, said, n = _run(grid, out, monkeypatch)
    assert n == {"cells": 2, "early": 1} and first.computed_cells == 2
    # each cell records its code: the attack cells' kind, not the whole package's
    assert _codes(out) == {fingerprint.code_fingerprint("attacks")}
    assert fingerprint.code_fingerprint("attacks") != fingerprint.code_fingerprint()
    _mark(out)
    again, said, n = _run(grid, out, monkeypatch)
    assert n == {"cells": 0, "early": 0} and again.skipped_cells == 2
    assert again.other_code_cells == 0 and not any("other noisydeq code" in s for s in said)
    assert {r["value"] for r in again.rows} == {MARK}  # served, not recomputed


def test_other_code_recomputes_and_says_so(grid, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    first, _, _ = _run(grid, out, monkeypatch)
    _mark(out)
    monkeypatch.setattr(fingerprint, "code_fingerprint", lambda *kind: OTHER)
    again, said, n = _run(grid, out, monkeypatch)
    assert n == {"cells": 2, "early": 1}  # every cell and the early selection
    assert again.computed_cells == 2 and again.skipped_cells == 0
    assert again.other_code_cells == 3
    assert MARK not in {r["value"] for r in again.rows}
    assert again.rows == first.rows  # the same code computation, the same numbers
    (note,) = [s for s in said if "other noisydeq code" in s]
    assert note.startswith("note: 3 of 3 cells and early-state selections in ")
    assert "computed again" in note and "--keep-other-code" in note
    assert _codes(out) == {OTHER}  # rewritten in place: no stale file left beside them
    assert len(list((out / "cells").iterdir())) == 3
    # and resumed with that code again: every cell served
    third, said, n = _run(grid, out, monkeypatch)
    assert n == {"cells": 0, "early": 0} and third.other_code_cells == 0


def test_keep_other_code_serves_them_and_says_so(grid, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    _run(grid, out, monkeypatch)
    _mark(out)
    monkeypatch.setattr(fingerprint, "code_fingerprint", lambda *kind: OTHER)
    kept, said, n = _run(grid, out, monkeypatch, keep_other_code=True)
    assert n == {"cells": 0, "early": 0} and {r["value"] for r in kept.rows} == {MARK}
    (note,) = [s for s in said if "other noisydeq code" in s]
    assert "kept (--keep-other-code)" in note and "mixes" in note
    assert OTHER not in _codes(out)  # kept cells keep their own record


def test_cells_from_before_the_code_record_load(grid, tmp_path, monkeypatch) -> None:
    """Cells written before cells recorded their code — of today's schema and of the
    schema before the solve columns — are computed by unknown code: computed again and
    said; kept, they still load through the legacy loaders."""
    out = tmp_path / "run"
    first, _, _ = _run(grid, out, monkeypatch)
    legacy = 1  # attack cells to write in the schema before the solve columns
    for p in sorted((out / "cells").iterdir()):
        data = store.read_signed_json(p)
        del data["code"]
        if data["key"].startswith("cell|") and legacy:
            legacy -= 1
            data["rows"] = [{k: v for k, v in r.items()
                             if k != "bwd_unconverged" and k not in SOLVE_COLUMNS_FILL}
                            for r in data["rows"]]
        store.write_signed_json(p, data)
    saved = {p.name: p.read_bytes() for p in (out / "cells").iterdir()}
    kept, said, n = _run(grid, out, monkeypatch, keep_other_code=True)
    assert n == {"cells": 0, "early": 0} and kept.skipped_cells == 2
    (note,) = [s for s in said if "other noisydeq code" in s]
    # the early selection is not read: no cell needs it (its n is in the kept cells' rows)
    assert note.startswith("note: 2 of 3 ") and "(all of them before cells recorded" in note
    old = [r for r in kept.rows if r["bwd_unconverged"] == -1]
    assert old and all(math.isnan(r["fwd_residual"]) for r in old)
    assert {(r["eps"], r["defence"], r["value"]) for r in kept.rows} == {
        (r["eps"], r["defence"], r["value"]) for r in first.rows}
    assert {p.name: p.read_bytes() for p in (out / "cells").iterdir()} == saved
    again, said, n = _run(grid, out, monkeypatch)
    assert n == {"cells": 2, "early": 1} and again.rows == first.rows
    assert any("computed again" in s and "before cells recorded" in s for s in said)
    assert _codes(out) == {fingerprint.code_fingerprint("attacks")}


def test_other_weights_recompute_even_when_keeping_other_code(grid, tmp_path,
                                                              monkeypatch) -> None:
    """A model retrained under the same id (other weights) is never served its old cells:
    they record the weights digest they were computed on (as the sweep's keys hold it)."""
    spec, member, task = grid
    out = tmp_path / "run"
    first, _, _ = _run(grid, out, monkeypatch)
    digest = store.init_hash(member.model)
    assert {store.read_signed_json(p)["weights"] for p in (out / "cells").iterdir()} == {
        digest}
    _mark(out)
    retrained = SweepModel(copy.deepcopy(member.model), "deq", 1, 12, 64)
    with torch.no_grad():
        next(retrained.model.parameters()).add_(0.25)
    for keep in (True, False):
        again, said, n = _run((spec, retrained, task), out, monkeypatch, keep_other_code=keep)
        assert n == {"cells": 2, "early": 1} and again.computed_cells == 2
        assert MARK not in {r["value"] for r in again.rows}
        if keep:
            assert again.other_weights_cells == 3 and again.other_code_cells == 0
            assert said[0] == (f"note: 3 of 3 cells and early-state selections in {out} were "
                               "computed on other weights of their model: they are computed "
                               "again (--keep-other-code keeps other code's cells, never "
                               "other weights')")
        else:  # computed on the retrained weights by the first pass: served
            assert again.other_weights_cells == 3
        member = retrained  # the second pass: back to the first weights
        retrained = SweepModel(grid[1].model, "deq", 1, 12, 64)
    assert again.rows == first.rows


def test_cells_without_weights_count_as_unknown_code(grid, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    first, _, _ = _run(grid, out, monkeypatch)
    for p in (out / "cells").iterdir():  # written after the code record, before weights'
        data = store.read_signed_json(p)
        del data["weights"]
        store.write_signed_json(p, data)
    _mark(out)
    kept, said, n = _run(grid, out, monkeypatch, keep_other_code=True)
    assert n == {"cells": 0, "early": 0} and {r["value"] for r in kept.rows} == {MARK}
    (note,) = said[:1]
    assert "(all of them before cells recorded their code and weights)" in note
    assert "kept (--keep-other-code)" in note
    again, said, n = _run(grid, out, monkeypatch)
    assert n == {"cells": 2, "early": 1} and again.rows == first.rows
    assert again.other_code_cells == 3 and again.other_weights_cells == 0
    third, said, n = _run(grid, out, monkeypatch)  # recorded now: served
    assert n == {"cells": 0, "early": 0} and not said


def test_a_model_given_by_its_digest_is_materialised_only_for_cells_to_compute(
        grid, tmp_path, monkeypatch) -> None:
    """``weights`` + ``materialise``: a member holding its initial model (same architecture)
    is judged on the digest given; it is materialised only when a cell of its is computed,
    and a trained model of other weights than the digest has every cell judged again."""
    spec, member, task = grid
    out = tmp_path / "run"
    first, _, _ = _run(grid, out, monkeypatch)
    trained, digest = member.model, store.init_hash(member.model)
    initial = copy.deepcopy(trained)
    with torch.no_grad():
        for p in initial.parameters():
            p.mul_(-1.0)  # not the trained weights: served cells never look at them
    _mark(out)
    calls: list[str] = []

    def materialise(m):
        calls.append(m.model_id)
        m.model = trained

    lazy = SweepModel(initial, "deq", 1, 12, 64)
    kw = {"weights": {lazy.model_id: digest}, "materialise": materialise}
    again, said, n = _run((spec, lazy, task), out, monkeypatch, **kw)
    assert calls == [] and n == {"cells": 0, "early": 0}
    assert {r["value"] for r in again.rows} == {MARK} and again.other_weights_cells == 0
    cells = sorted(p for p in (out / "cells").iterdir()
                   if store.read_signed_json(p)["key"].startswith("cell|"))
    cells[0].unlink()  # one cell to compute: the model is materialised for it alone
    lazy = SweepModel(copy.deepcopy(initial), "deq", 1, 12, 64)
    again, said, n = _run((spec, lazy, task), out, monkeypatch, **kw)
    assert calls == [lazy.model_id] and lazy.model is trained
    assert n == {"cells": 1, "early": 0} and again.computed_cells == 1
    assert sorted(r["value"] for r in again.rows).count(MARK) == len(again.rows) // 2
    # materialised into other weights than the digest: every cell is judged again
    other = copy.deepcopy(trained)
    with torch.no_grad():
        next(other.parameters()).add_(0.25)
    cells[0].unlink()
    calls.clear()
    lazy = SweepModel(copy.deepcopy(initial), "deq", 1, 12, 64)
    again, said, n = _run((spec, lazy, task), out, monkeypatch, weights=kw["weights"],
                          materialise=lambda m: (calls.append(m.model_id),
                                                 setattr(m, "model", other)))
    assert calls == [lazy.model_id] and n == {"cells": 2, "early": 1}
    assert again.other_weights_cells == 2  # the served cell and the early selection
    assert MARK not in {r["value"] for r in again.rows}
    assert {store.read_signed_json(p)["weights"] for p in (out / "cells").iterdir()} == {
        store.init_hash(other)}
