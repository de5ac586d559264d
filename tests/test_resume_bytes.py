"""A resume that computes nothing leaves every file of its run directory byte for byte as it
was: ``meta.json`` (it counted the resume and took this run's package versions) and so
``SHA256SUMS``; a study's ``results.csv`` (its served rows came back in the sorted column
order of their signed cell file). A resume that computes cells records itself as before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from noisydeq import store
from noisydeq.sweep import run_sweep
from tests.sweep_helpers import toy_models, toy_spec, toy_task


def files(out: Path) -> dict[str, bytes]:
    """Every file below ``out`` (its lock file included) by relative path: its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file()}


def changed(a: dict[str, bytes], b: dict[str, bytes]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def test_a_sweep_resume_that_computes_nothing_rewrites_nothing(tmp_path):
    task = toy_task()
    out = tmp_path / "run"

    def sweep():
        return run_sweep(toy_spec(snr_db="0,inf", chips=1), out, task=task,
                         models=toy_models(task, depths=(1,)), progress=False, plots=True)

    first = sweep()
    assert first.computed_cells == 4 and first.figures
    before = files(out)
    assert "meta.json" in before and "SHA256SUMS" in before
    again = sweep()
    assert again.computed_cells == 0
    assert changed(before, files(out)) == []
    meta = json.loads((out / "meta.json").read_text())
    assert "resumed" not in meta
    # a resume that computes a cell counts itself, keeps the first start, seals again
    victim = sorted((out / "cells").iterdir())[0]
    victim.unlink()
    third = sweep()
    assert third.computed_cells == 1
    after = files(out)
    assert changed(before, after) == ["SHA256SUMS", "meta.json"]
    new = json.loads((out / "meta.json").read_text())
    assert new["resumed"] == 1 and new["started"] == meta["started"]
    assert "meta.json" in store.verify_manifest(out)
    assert sweep().computed_cells == 0 and changed(after, files(out)) == []


def test_an_attack_resume_that_computes_nothing_rewrites_nothing(tmp_path, capsys):
    from tests.analysis.analysis_family import tiny_sweep
    from tests.cli_helpers import run_cli

    with tiny_sweep(tmp_path, "--depths", "1", "--snr", "inf", "--chips", "1", "--device",
                    "ideal", "--noise-site", "signal", "--jobs", "1") as family:
        out = tmp_path / "attack"
        argv = ["attack", "--family", str(family), "--attacks", "pgd-eps,speckle", "--eps",
                "0,0.3", "--pgd-steps", "2", "--sigma", "0,1", "--samples", "8",
                "--val-samples", "8", "--threads", "1", "--quiet", "--out", str(out)]
        code, _, err = run_cli(argv, capsys)
        assert code == 0, err
        before = files(out)
        assert {"meta.json", "SHA256SUMS", "whitebox.csv"} <= set(before)
        code, stdout, err = run_cli(argv, capsys)
        assert code == 0, err
        assert "0 computed" in stdout
        assert changed(before, files(out)) == []


def test_a_study_resume_that_computes_nothing_rewrites_nothing(tmp_path):
    from noisydeq.studies import run_study
    from tests.test_studies import tiny

    spec = tiny(train_snr_db=["inf"], test_snr_db=["inf", 0.0], shifts=[4, 8])
    out = tmp_path / "run"
    first = run_study(spec, out, plots=True)
    assert first.figures
    before = files(out)
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header.startswith("task,model,kind,")  # the order the rows were made in
    again = run_study(spec, out, plots=True)
    assert (again.trained, again.loaded, again.served) == (0, 0, 2)
    assert changed(before, files(out)) == []
    # one model evaluated again: its rows and the served ones in the same column order
    (out / "cells" / "ffw-s0-tinf.json").unlink()
    third = run_study(spec, out, plots=True)

    def untimed(rows):
        return [{k: v for k, v in r.items() if k != "eval_seconds"} for r in rows]

    assert third.served == 1 and untimed(third.rows) == untimed(first.rows)
    assert [list(r) for r in third.rows] == [list(r) for r in first.rows]
    assert (out / "results.csv").read_text().splitlines()[0] == header
    assert json.loads((out / "meta.json").read_text())["resumed"] == 1


def test_a_study_cell_whose_rows_are_not_its_columns_is_refused(tmp_path):
    from noisydeq.errors import CorruptArtefact
    from noisydeq.studies.rundir import StudyDir

    run = StudyDir(tmp_path)
    run.cells.mkdir(parents=True)
    rows = [{"model": "m", "seed": 0, "value": 1.0}]
    run.save_cell("m", rows)
    expect = [{"model": "m", "seed": 0}]
    assert list(run.load_cell("m", expect)[0]) == ["model", "seed", "value"]
    path = run.cell_path("m")
    data = store.read_signed_json(path, "cell file")
    store.write_signed_json(path, {**data, "columns": ["model", "seed"]})
    with pytest.raises(CorruptArtefact, match="columns are not its columns"):
        run.load_cell("m", expect)


@pytest.mark.parametrize("computed,served,old,want", [
    (5, 0, None, "attack run: 3 s"),
    (2, 3, None, "attack run: 3 s (this run computed 2 of 5 cells, an earlier run the "
                 "others)"),
    (0, 5, "# t\n\nattack run: 41 s\n", "attack run: 41 s"),  # nothing computed: as before
    (0, 5, None, "attack run: 3 s (this run computed 0 of 5 cells, an earlier run the "
                 "others)"),
    (1, 4, "# t\n\nattack run: 41 s\n", "attack run: 3 s (this run computed 1 of 5 cells, "
                                        "an earlier run the others)")])
def test_the_adversarial_report_s_timing_line(tmp_path, computed, served, old, want):
    from noisydeq.analysis.adversarial_report import timing_line

    md = tmp_path / "summary.md"
    if old is not None:
        md.write_text(old)
    assert timing_line(3.2, computed, served, md) == want


def test_a_certify_resume_that_computes_nothing_rewrites_nothing(tmp_path, capsys,
                                                                 monkeypatch):
    """Certify's cells (one per model and ε) are served with the ``seconds`` their run
    measured: table, table2.md, figures, meta.json and SHA256SUMS of a table2 experiment
    (which trains its own models) come back byte for byte."""
    from tests.cli_helpers import run_cli

    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    exp = tmp_path / "t2.toml"
    exp.write_text(
        'name = "t2"\nkind = "table2"\neps_train = [0.05]\nparams = ["ibp"]\n'
        '[family]\ntask = "digits"\nkinds = ["mondeq", "ffw_relu"]\nhidden = 8\n'
        '[train]\nepochs = 1\nbatch_size = 64\n[ibp]\nwarmup_epochs = 0\nramp_epochs = 1\n'
        '[certify]\neps = [0.02, 0.05]\nn_test = 30\npgd_steps = 2\n', encoding="utf-8")
    out = tmp_path / "t2"
    argv = ["certify", str(exp), "--out", str(out), "--threads", "1", "--quiet"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "cells: 4 computed" in stdout
    before = files(out)
    assert {"meta.json", "SHA256SUMS", "results.csv", "table2.md"} <= set(before)
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert f"cells: 0 computed, 4 served from {out}" in stdout
    assert changed(before, files(out)) == []


def test_a_certify_resume_of_a_family_rewrites_nothing(tmp_path, capsys):
    from tests.certify.test_certify_resume import ARGS, tiny_family
    from tests.cli_helpers import run_cli

    run = tmp_path / "run"
    argv = ["certify", str(tiny_family(tmp_path)), "--out", str(run), *ARGS, "--eps",
            "0.02,0.05"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    before = files(run)
    assert {"meta.json", "SHA256SUMS", "results.csv", "results.parquet"} <= set(before)
    assert any(k.startswith("figures/") for k in before)
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0 and "cells: 0 computed, 4 served" in stdout, err
    assert changed(before, files(run)) == []
    assert json.loads((run / "meta.json").read_text())["run"] == "certify"


def test_a_study_resume_that_stops_leaves_no_stale_seal(tmp_path, monkeypatch):
    """A study resume that computed a cell (and so rewrote meta.json) and then stopped
    before its tables left the old SHA256SUMS over the new meta.json: the run read as
    damaged although the same command resumes it. Opening a study for more work unseals
    it, as a sweep's run."""
    from noisydeq.studies import run_study
    from noisydeq.studies.rundir import StudyDir
    from tests.test_studies import tiny

    spec = tiny(train_snr_db=["inf"], test_snr_db=["inf"], shifts=[4])
    out = tmp_path / "run"
    run_study(spec, out, plots=False)
    assert (out / "SHA256SUMS").exists()
    (out / "cells" / "ffw-s0-tinf.json").unlink()

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(StudyDir, "write_tables", stop)
        with pytest.raises(KeyboardInterrupt):
            run_study(spec, out, plots=False)
    assert (out / "cells" / "ffw-s0-tinf.json").exists()
    assert json.loads((out / "meta.json").read_text())["resumed"] == 1
    assert not (out / "SHA256SUMS").exists()
    run_study(spec, out, plots=False)
    assert "meta.json" in store.verify_manifest(out)
