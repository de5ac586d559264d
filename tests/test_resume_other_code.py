"""A resumed study or LyaDEQ attack table never serves an evaluation other noisydeq code
computed (:func:`noisydeq.fingerprint.code_fingerprint` changed, monkeypatched here) unless
told to keep it (the LyaDEQ table's ``--keep-other-code``): it is computed again and the log
says so; with the same code every one is served; one written before evaluations recorded
their code counts as other code. (The attack runs' tests:
``tests/attacks/test_other_code.py``.)"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from noisydeq import fingerprint, store
from noisydeq.studies import run_study
from noisydeq.studies import runner as study_runner
from tests.test_studies import tiny

OTHER = "0123456789abcdef"


def _values(rows):
    return [(r["model"], r["shift"], r["budget"], r["test_snr_db"], r["value"]) for r in rows]


def _counting_runs(spec, out, monkeypatch):
    """A function running the study ``spec`` into ``out`` that returns (its result, the
    lines it logged, how many models it evaluated, what it did to each model it trained or
    loaded) — counted through the runner's ``evaluate_model`` and ``train_model``,
    monkeypatched."""
    from noisydeq import train

    evaluate, fit = study_runner.evaluate_model, train.train_model
    n = {"evaluated": 0, "models": []}

    def counting(*a, **k):
        n["evaluated"] += 1
        return evaluate(*a, **k)

    def fitting(*a, **k):
        res = fit(*a, **k)
        n["models"].append("loaded" if res.loaded else "trained")
        return res

    monkeypatch.setattr(study_runner, "evaluate_model", counting)
    monkeypatch.setattr(train, "train_model", fitting)

    def run():
        said: list[str] = []
        n["evaluated"], n["models"] = 0, []
        res = run_study(spec, out, plots=False, log=said.append)
        return res, said, n["evaluated"], list(n["models"])

    return run


def _notes(said):
    return [s for s in said if s.startswith("note:")]


AGAIN = "they are computed again (edits to comments and docstrings do not count as a change)"


def test_study_evaluations_of_other_code_are_computed_again(tmp_path, monkeypatch) -> None:
    """Other code's evaluations: their models loaded and evaluated again, one line saying
    how many (the attack runs' words); the same code's: served, no model loaded."""
    spec = tiny(train_snr_db=["inf"], test_snr_db=["inf"])
    out = tmp_path / "run"
    run = _counting_runs(spec, out, monkeypatch)
    first, _, evaluated, models = run()
    assert evaluated == 2 and first.trained == 2 and models == ["trained", "trained"]
    cells = sorted((out / "cells").iterdir())
    # each records the studies' code (kind "studies": not the whole package's)
    assert {store.read_signed_json(p)["code"] for p in cells} == {
        fingerprint.code_fingerprint("studies")} != {fingerprint.code_fingerprint()}
    again, said, evaluated, models = run()  # the same code: every evaluation served
    assert evaluated == 0 and again.rows == first.rows and models == []
    assert _notes(said) == []
    for p in cells:  # a marked value shows whether a cell is served
        data = store.read_signed_json(p)
        data["rows"] = [{**r, "value": -7.0} for r in data["rows"]]
        store.write_signed_json(p, data)
    monkeypatch.setattr(fingerprint, "code_fingerprint", lambda *kind: OTHER)
    other, said, evaluated, models = run()
    assert evaluated == 2 and other.trained == 0 and other.loaded == 2  # checkpoints kept
    assert models == ["loaded", "loaded"]
    assert -7.0 not in {r["value"] for r in other.rows}
    assert _values(other.rows) == _values(first.rows)
    assert _notes(said) == [f"note: 2 of 2 model evaluations in {out} were computed by other "
                            f"noisydeq code: {AGAIN}"]
    assert {store.read_signed_json(p)["code"] for p in cells} == {OTHER}
    # an evaluation written before evaluations recorded their code: unknown code
    data = store.read_signed_json(cells[0])
    del data["code"]
    store.write_signed_json(cells[0], data)
    old, said, evaluated, models = run()
    assert evaluated == 1 and _values(old.rows) == _values(first.rows) and models == ["loaded"]
    assert _notes(said) == [
        f"note: 1 of 2 model evaluations in {out} were computed by other noisydeq code (all "
        f"of them before cells recorded their code and weights): {AGAIN}"]


def test_lyapunov_attack_cells_of_other_code_are_computed_again(tmp_path,
                                                                 monkeypatch) -> None:
    """The LyaDEQ attack table decides with the attack and study runs' rule
    (:class:`noisydeq.results.LockedDir`) and says so in their one line per reason:
    other code (or a cell from before cells recorded code and weights, or of format 1)
    computed again unless kept, other weights always."""
    from noisydeq import families
    from noisydeq.analysis import lyapunov_experiment as lx
    from noisydeq.specs.toml import dumps_toml

    exp = tmp_path / "exp.toml"
    exp.write_text('name = "tiny"\ntask = "digits"\n[attack]\nvariants = ["plain", "both"]\n'
                   'eps_255 = [2]\nmax_test_samples = 4\n')
    spec = lx.load_experiment(exp)
    calls = {"attacked": 0, "value": 0.25}
    member = SimpleNamespace(params=3, model=torch.nn.Linear(2, 1),
                             result=SimpleNamespace(seconds=1.0, test_metric=0.5))
    monkeypatch.setattr(families, "train_family",
                        lambda *a, **k: SimpleNamespace(members=[member]))
    # the family cache holds the member (its weights digest, read without loading it)
    monkeypatch.setattr(families, "cached_weights",
                        lambda *a, **k: ("entry0", store.init_hash(member.model)))
    monkeypatch.setattr(lx, "readout_stats", lambda *a: {"mean_steps": 1.0,
                                                         "converged_frac": 1.0})

    def attack_cell(model, x, y, grid, seed):
        calls["attacked"] += 1
        return [{"attack": "pgd", "eps_255": 2.0, "steps": 1,
                 "accuracy": calls["value"], "seconds": 0.0}]

    monkeypatch.setattr(lx, "attack_cell", attack_cell)
    task = SimpleNamespace(x_test=torch.zeros(4, 2), y_test=torch.zeros(4))
    out = tmp_path / "out"

    def run(keep: bool):
        said: list[str] = []
        calls["attacked"] = 0
        with lx.ExperimentDir(out) as d:
            d.open(dumps_toml(spec))
            d.keep_other_code = keep
            rows = lx.run_attacks(spec, d, task, said.append)
        return {r["variant"]: r["accuracy"] for r in rows}, said, calls["attacked"]

    cells = out / "attack"

    def resumed(attacked: int, plain: float, both: float, *notes: str, keep: bool = False):
        """Run; check how many cells were attacked, the table's accuracies and the notes."""
        rows, said, n = run(keep)
        assert n == attacked and rows == {"plain": plain, "both": both}
        assert [s for s in said if s.startswith("note:")] == [
            f"note: {text.replace('CELLS', str(cells))}" for text in notes]

    again = ("they are computed again (edits to comments and docstrings do not count as a "
             "change; --keep-other-code keeps them instead)")
    resumed(2, 0.25, 0.25)
    assert store.read_signed_json(cells / "plain-s0.json")["entry"] == "entry0"
    calls["value"] = 0.75  # what a new code computes
    resumed(0, 0.25, 0.25)  # the same code: served
    monkeypatch.setattr(fingerprint, "code_fingerprint", lambda *kind: OTHER)
    resumed(0, 0.25, 0.25, "2 of 2 attack cells in CELLS were computed by other noisydeq "
            "code; kept (--keep-other-code): the table mixes their results with this code's",
            keep=True)  # other code, kept: served, and said
    resumed(2, 0.75, 0.75, f"2 of 2 attack cells in CELLS were computed by other noisydeq "
            f"code: {again}")
    cell = cells / "plain-s0.json"
    data = store.read_signed_json(cell)
    assert data["code"] == OTHER
    del data["code"]  # a cell from before cells recorded their code
    store.write_signed_json(cell, data)
    calls["value"] = 0.5
    older = ("1 of 2 attack cells in CELLS were computed by other noisydeq code (all of them "
             f"before cells recorded their code and weights): {again}")
    resumed(1, 0.5, 0.75, older)
    # a cell of format 1 (robust samples counted by the attacked input only): unknown
    # code, and another robust rule's count — computed again, kept or not
    format_1 = {"format": "noisydeq-lyapunov-cell/1", "variant": "plain", "seed": 0,
                "rows": data["rows"]}
    store.write_signed_json(cell, format_1)
    calls["value"] = 0.625
    resumed(1, 0.625, 0.75, older)
    store.write_signed_json(cell, format_1)
    resumed(1, 0.625, 0.75, "1 of 2 attack cells in CELLS counted robust samples by the "
            "attacked input only (cell format 1): they are computed again (--keep-other-code "
            "keeps other code's cells of this robust rule only)", keep=True)
    # the family trained again since (other weights under the same id): computed again,
    # kept or not
    with torch.no_grad():
        member.model.weight.add_(1.0)
    calls["value"] = 0.125
    resumed(2, 0.125, 0.125, "2 of 2 attack cells in CELLS were computed on other weights "
            "of their model: they are computed again (--keep-other-code keeps other code's "
            "cells, never other weights')", keep=True)
    resumed(0, 0.125, 0.125)  # the same code and weights: served


def test_study_evaluations_of_other_weights_are_computed_again(tmp_path,
                                                                monkeypatch) -> None:
    """A study model trained again under its id (here: its checkpoint's weights changed)
    is evaluated again, whatever code: its cell records the weights it evaluated, and the
    resume reads the checkpoint's digest before loading any model — only that model is
    loaded; a model whose checkpoint is gone is trained again (the run directory holds its
    models), and its cell served when the weights it records come back."""
    import shutil

    spec = tiny(train_snr_db=["inf"], test_snr_db=["inf"])
    out = tmp_path / "run"
    run = _counting_runs(spec, out, monkeypatch)
    first, _, evaluated, _ = run()
    assert evaluated == 2
    assert all("weights" in store.read_signed_json(p) for p in (out / "cells").iterdir())
    again, said, evaluated, models = run()
    assert evaluated == 0 and again.rows == first.rows and models == []
    assert (again.trained, again.loaded, again.served) == (0, 0, 2)
    ckpt, second = sorted((out / "models").glob("*/model.safetensors"))
    tensors, meta = store.load_tensors(ckpt)
    tensors = {k: v + 0.25 if v.is_floating_point() else v for k, v in tensors.items()}
    store.save_checkpoint(ckpt, tensors, meta["config"], meta.get("extra"))
    other, said, evaluated, models = run()
    assert evaluated == 1 and other.trained == 0 and models == ["loaded"]
    assert _notes(said) == [f"note: 1 of 2 model evaluations in {out} were computed on "
                            "other weights of their model: they are computed again"]
    assert other.rows != first.rows
    third, said, evaluated, models = run()
    assert evaluated == 0 and third.rows == other.rows and models == []
    shutil.rmtree(ckpt.parent)  # the checkpoint gone: trained again, into the first weights
    fourth, said, evaluated, models = run()
    assert models == ["trained"] and evaluated == 1  # not the weights its cell records
    assert _notes(said) == [f"note: 1 of 2 model evaluations in {out} were computed on "
                            "other weights of their model: they are computed again"]
    assert _values(fourth.rows) == _values(first.rows)
    shutil.rmtree(second.parent)  # the other's gone: trained again into the weights it records
    fifth, said, evaluated, models = run()
    assert models == ["trained"] and evaluated == 0 and _notes(said) == []
    assert _values(fifth.rows) == _values(first.rows)


def test_study_damaged_checkpoint_is_trained_again_and_its_cell_judged(tmp_path,
                                                                       monkeypatch) -> None:
    """A checkpoint that fails its digest gives no weights digest: the resume trains that
    model again (training reports it) before deciding, and serves its cell when the
    weights come back the same — trained, not counted as served."""
    spec = tiny(train_snr_db=["inf"], test_snr_db=["inf"])
    out = tmp_path / "run"
    run = _counting_runs(spec, out, monkeypatch)
    first, _, _, _ = run()
    ckpt = sorted((out / "models").glob("*/model.safetensors"))[0]
    ckpt.write_bytes(ckpt.read_bytes()[:-8] + b"\0" * 8)
    again, said, evaluated, models = run()
    assert models == ["trained"] and evaluated == 0 and _notes(said) == []
    assert (again.trained, again.loaded, again.served) == (1, 0, 1)
    assert _values(again.rows) == _values(first.rows)
    assert any(s.startswith(f"{ckpt.parent.name}: ") and "trained in" in s for s in said)


def test_study_ray_worker_of_other_code_is_refused(monkeypatch) -> None:
    import pytest

    from noisydeq.errors import NoisyDEQError
    from noisydeq.studies import ray_models

    here = fingerprint.code_fingerprint("studies")
    assert ray_models._checked(("spec", "task", "sets", here)) == ("spec", "task", "sets")
    with pytest.raises(NoisyDEQError, match="other noisydeq code than the driver"):
        ray_models._checked(("spec", "task", "sets", OTHER))


def test_finished_weights_is_the_loaded_models_digest(tmp_path) -> None:
    """train.finished_weights (what a study resume and families.cached_weights read) is
    init_hash of the model train_model loads from the same directory; None for another
    config hash, a damaged file or none."""
    from noisydeq import train
    from noisydeq.studies.runner import _keyed_model, load_study_task

    spec = tiny(train_snr_db=["inf"], test_snr_db=["inf"])
    task = load_study_task(spec)
    model, tspec, chash = _keyed_model(spec, "deq", task, 0, float("inf"),
                                       torch.device("cpu"))
    out = tmp_path / "m"
    assert train.finished_weights(out, chash) is None
    res = train.train_model(model, task, tspec, out_dir=out)
    assert res.config_hash == chash  # the key the resume computes is training's
    again = train.train_model(_keyed_model(spec, "deq", task, 0, float("inf"),
                                           torch.device("cpu"))[0], task, tspec, out_dir=out)
    assert again.loaded and train.finished_weights(out, chash) == store.init_hash(again.model)
    assert train.finished_weights(out, "0" * len(chash)) is None
    path = out / train.MODEL_FILE
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)  # damaged: fails its digest
    assert train.finished_weights(out, chash) is None
