"""``noisydeq adversarial`` resumes: which attack cells are served is known before any model
is trained or loaded (the experiment directory records each model's cache entry, weights
digest and training info, :class:`~noisydeq.analysis.adversarial_experiment.GridModels`)."""

from __future__ import annotations

import json
import shutil

import pytest

from noisydeq.errors import NoisyDEQError

SETS = {"family": {"task": "digits", "hidden": 16},
        "grid": {"seeds": [0], "methods": ["pgd"], "defences": ["none", "threshold"]},
        "train": {"epochs": 1, "max_train_samples": 128,
                  "adversarial": {"steps": 2, "val_steps": 2}},
        "evaluations": {"curves": {"samples": 8, "steps": [1], "eps": [0.0, 0.3],
                                   "attacks": ["pgd-eps", "speckle"], "sigma": [0.5],
                                   "estimators": ["backprop"], "transfer_from": "none"},
                        "autoattack": {"samples": 4}}}


def _tables(out) -> dict[str, str]:
    """Every table and report of the experiment directory (figures and the reports' line of
    attack-run seconds left out)."""
    return {str(p.relative_to(out)): "".join(
        line for line in p.read_text().splitlines(True) if not line.startswith("attack run:"))
        for p in sorted(out.rglob("*")) if p.suffix in (".csv", ".md")}


@pytest.mark.slow
def test_a_resume_trains_and_loads_only_the_models_of_cells_to_compute(
        tmp_path, monkeypatch, family_trainings):
    """A resume loaded every model of the grid from the model cache, and retrained all of
    them when the cache had been cleared, only to hash their weights. Now a finished
    resume trains and loads nothing, the cache cleared retrains nothing (each cell served on
    the weights it records), both giving the same tables and report; a checkpoint holding
    other weights has that model loaded and its cells computed again, and only that; a
    transfer cell to compute has its model and its source model trained or loaded."""
    from noisydeq import families, store
    from noisydeq.analysis import adversarial_experiment as ae
    from noisydeq.bundled import find_experiment

    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NOISYDEQ_FIGURE_CACHE", raising=False)
    calls = family_trainings
    exp = ae.load_experiment(find_experiment("adversarial-fig3", "adversarial"))
    res = exp.resolve("quick", **SETS)
    out = tmp_path / "e"

    def run():
        calls.clear()
        lines: list[str] = []
        result = ae.run_experiment(res, out, echo=lines.append, quiet=False)
        return result, _tables(out), list(calls), lines

    first, tables, trained, _ = run()
    assert trained == ["trained"] * 3  # DEQ and FFW without defence, DEQ with the threshold
    models = json.loads((out / ae.MODELS_FILE).read_text())["models"]
    assert sorted(models) == sorted(first.info)
    for mid, rec in models.items():  # the record is what the report said, and the weights
        member = next(m for m in first.members if m.model_id == mid)
        assert rec["weights"] == store.init_hash(member.model)
        assert rec["info"] == first.info[mid]

    figures = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("figures/*"))}
    assert figures
    every = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
             if p.is_file()}

    def no_drawing(*a, **k):
        raise AssertionError("drawn although the figure cache holds these figures")

    import noisydeq.attacks.plots
    from noisydeq.analysis import adversarial_report

    with monkeypatch.context() as m:  # a finished resume copies its figures from the cache
        m.setattr(adversarial_report, "plot_report", no_drawing)
        m.setattr(noisydeq.attacks.plots, "plot_run", no_drawing)
        again, got, trained, lines = run()
    assert {str(p.relative_to(out)): p.read_bytes()
            for p in sorted(out.rglob("figures/*"))} == figures
    for name in ("curves", "autoattack"):
        store.verify_manifest(out / name)
    assert trained == [] and got == tables and again.info == first.info
    assert [m.model_id for m in again.members] == [m.model_id for m in first.members]
    assert sum(line.endswith("(recorded: not loaded)") for line in lines) == 3
    assert all(r.computed_cells == 0 for r in again.evaluations.values())
    # nothing computed: every file as it was (meta.json, the reports' timing lines and so
    # SHA256SUMS were rewritten), the reports listed in SHA256SUMS
    assert {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file()} == every
    assert "summary.md" in store.verify_manifest(out / "curves")

    shutil.rmtree(tmp_path / "cache" / "models")  # every cell served on its recorded weights
    again, got, trained, lines = run()
    assert trained == [] and got == tables
    assert not any(line.startswith("note:") for line in lines)

    # the cache's FFW trained into other weights under its entry: it is loaded, and only
    # its cells are computed again
    from noisydeq.tasks import load_task

    fam = families.train_family(res.cells[0].spec, load_task("digits", seed=0))
    ffw = fam.get("ffw", 1)
    tensors, meta = store.load_tensors(ffw.result.path)
    store.save_checkpoint(ffw.result.path, {k: v + 0.25 if v.is_floating_point() else v
                                            for k, v in tensors.items()},
                          meta["config"], meta["extra"])
    again, got, trained, lines = run()
    assert trained == ["loaded", "loaded"]  # the family of none: FFW and its DEQ twin
    ffw_id = next(m for m in again.members if m.kind == "ffw").model_id
    computed = {k: r.computed_cells for k, r in again.evaluations.items()}
    assert computed["curves"] == sum(1 for r in first.evaluations["curves"].rows
                                     if r["model_id"] == ffw_id)
    assert computed["autoattack"] == 1
    notes = [line for line in lines if line.startswith("note:")]
    assert len(notes) == 2 and all("other weights" in n for n in notes)
    models = json.loads((out / ae.MODELS_FILE).read_text())["models"]
    assert models[ffw_id]["weights"] != store.init_hash(first.members[1].model)
    for name in ("curves", "autoattack"):  # the other models' rows are served unchanged
        old = [r for r in first.evaluations[name].rows if r["model_id"] != ffw_id]
        assert [r for r in again.evaluations[name].rows if r["model_id"] != ffw_id] == old

    # one transfer cell of the threshold DEQ to compute: it is trained again (its cache
    # entry cleared above: into the same weights, so its other cells stay served) and its
    # source, the DEQ trained without a defence, loaded with its family's FFW
    cells = [p for p in (out / "curves" / "cells").iterdir()
             if "transfer-source<" in store.read_signed_json(p)["key"]]
    assert len(cells) == 2  # ε 0 and 0.3, crafted by backprop on the source
    cells[0].unlink()
    last, got, trained, lines = run()
    assert trained == ["trained", "loaded", "loaded"]
    assert {k: r.computed_cells for k, r in last.evaluations.items()} == {
        "curves": 1, "autoattack": 0}
    assert last.evaluations["curves"].rows == again.evaluations["curves"].rows
    assert not any(line.startswith("note:") for line in lines)


@pytest.mark.slow
def test_a_run_stopped_in_its_first_evaluation_has_its_models_record(
        tmp_path, monkeypatch, family_trainings):
    """models.json was written after each evaluation only: a run stopped during its first
    had none, and its resume then trained or loaded every model up front (a cleared cache:
    trained them all again) to learn which cells were served. Now the record is written
    once the first evaluation's directory is opened, before any cell: the resume loads
    only what the cells it computes need, and it records what a run never stopped does."""
    from noisydeq.analysis import adversarial_experiment as ae
    from noisydeq.attacks.runner import AttackRunDir
    from noisydeq.bundled import find_experiment

    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NOISYDEQ_FIGURE_CACHE", raising=False)
    sets = {**SETS, "grid": {**SETS["grid"], "defences": ["none"]},
            "evaluations": {"curves": SETS["evaluations"]["curves"]}}
    res = ae.load_experiment(find_experiment("adversarial-fig3", "adversarial")).resolve(
        "quick", **sets)
    full = ae.run_experiment(res, tmp_path / "full", echo=lambda _: None)
    want = ae.read_models(tmp_path / "full")
    assert sorted(want) == sorted(full.info)
    out = tmp_path / "e"
    with monkeypatch.context() as m:  # stopped before its first cell is written
        def stop(*a, **k):
            raise KeyboardInterrupt

        m.setattr(AttackRunDir, "save_cell", stop)
        with pytest.raises(KeyboardInterrupt):
            ae.run_experiment(res, out, echo=lambda _: None)
    assert not list((out / "curves" / "cells").iterdir())
    assert ae.read_models(out) == want  # the record of the run never stopped
    family_trainings.clear()
    again = ae.run_experiment(res, out, echo=lambda _: None)
    assert family_trainings == ["loaded", "loaded"]  # the cells' models: the cache's
    assert again.evaluations["curves"].rows == full.evaluations["curves"].rows
    assert ae.read_models(out) == want


def test_a_damaged_models_record_is_refused_naming_it(tmp_path):
    from noisydeq.analysis.adversarial_experiment import MODELS_FILE, read_models
    from noisydeq.store import write_signed_json

    assert read_models(tmp_path) == {}
    write_signed_json(tmp_path / MODELS_FILE, {"format": 1, "models": {
        "m": {"entry": "e", "weights": "w", "info": {"kind": "deq"}}}})
    with pytest.raises(NoisyDEQError, match="models.json"):
        read_models(tmp_path)
    (tmp_path / MODELS_FILE).write_text('{"format": 1, "models": {}}\n')
    with pytest.raises(NoisyDEQError, match="models.json"):
        read_models(tmp_path)
