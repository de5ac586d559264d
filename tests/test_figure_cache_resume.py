"""Resumes serve their figures from the figure cache (noisydeq/figure_cache.py): a finished
study or attack run resumed draws nothing, writes the same figure bytes as a fresh drawing
(the cache turned off), seals them in SHA256SUMS; ``noisydeq plot`` still draws."""

from __future__ import annotations

import pytest

import noisydeq.attacks.plots
import noisydeq.studies.plots
from noisydeq import figure_cache, store
from noisydeq.cli import cli
from tests.analysis.analysis_family import tiny_sweep
from tests.cli_helpers import run_cli as run
from tests.test_studies import tiny

GRID = {"shifts": [4, 8], "budgets": ["train"], "train_snr_db": ["inf"],
        "test_snr_db": ["inf"], "seeds": [0]}


def _figures(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _no_drawing(*a, **k):
    raise AssertionError("drawn although the figure cache holds these figures")


def test_a_resumed_study_copies_its_figures_and_plot_still_draws(tmp_path, private_cache,
                                                                  monkeypatch):
    from click.testing import CliRunner

    from noisydeq.studies.runner import run_study

    out = tmp_path / "run"
    first = run_study(tiny(**GRID), out, plots=True)
    assert first.figures and len(list((private_cache / "figures").glob("*.json"))) == 1
    drawn = _figures(out / "figures")
    for p in first.figures:
        p.unlink()  # the resume writes them again, from the cache
    with monkeypatch.context() as m:
        m.setattr(noisydeq.studies.plots, "plot_study", _no_drawing)
        again = run_study(tiny(**GRID), out, plots=True)
    assert [p.name for p in again.figures] == [p.name for p in first.figures]
    assert _figures(out / "figures") == drawn
    assert {f"figures/{p.name}" for p in again.figures} <= set(store.verify_manifest(out))
    # the cache off: the same summary drawn afresh, the same bytes
    monkeypatch.setenv(figure_cache.ENV, "off")
    for p in first.figures:
        p.unlink()
    run_study(tiny(**GRID), out, plots=True)
    assert _figures(out / "figures") == drawn
    # the same summary drawn by other code is drawn again
    monkeypatch.delenv(figure_cache.ENV)
    monkeypatch.setattr(figure_cache, "code_fingerprint", lambda *kind: "other code")
    calls = []
    real = noisydeq.studies.plots.plot_study
    monkeypatch.setattr(noisydeq.studies.plots, "plot_study",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    run_study(tiny(**GRID), out, plots=True)
    assert calls == [1]
    # noisydeq plot draws on demand, the cache holding these figures or not
    calls.clear()
    monkeypatch.undo()
    monkeypatch.setenv("NOISYDEQ_CACHE", str(private_cache))
    monkeypatch.setattr(noisydeq.studies.plots, "plot_study",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    r = CliRunner().invoke(cli, ["plot", str(out)])
    assert r.exit_code == 0, r.output
    assert calls == [1] and _figures(out / "figures") == drawn


@pytest.mark.slow
def test_a_resumed_attack_run_copies_its_figures(tmp_path, capsys, monkeypatch):
    with tiny_sweep(tmp_path / "sweep", "--depths", "1", "--snr", "inf", "--chips", "1",
                    "--device", "ideal", "--jobs", "1") as family:
        argv = ["attack", "--family", str(family), "--attacks", "pgd-eps,speckle", "--eps",
                "0,0.3", "--pgd-steps", "2", "--sigma", "0,1", "--samples", "12",
                "--val-samples", "6", "--quiet"]
        out = tmp_path / "a"
        entries = tmp_path / "sweep" / "cache" / "figures"  # tiny_sweep's cache
        before = set(entries.glob("*.json"))  # the sweep's figures
        code, _, err = run([*argv, "--out", str(out)], capsys)
        assert code == 0, err
        drawn = _figures(out / "figures")
        assert drawn and len(set(entries.glob("*.json")) - before) == 1
        for p in (out / "figures").iterdir():
            p.unlink()
        with monkeypatch.context() as m:
            m.setattr(noisydeq.attacks.plots, "plot_run", _no_drawing)
            code, _, err = run([*argv, "--out", str(out)], capsys)
        assert code == 0, err
        assert _figures(out / "figures") == drawn
        assert {f"figures/{n}" for n in drawn} <= set(store.verify_manifest(out))
        monkeypatch.setenv(figure_cache.ENV, "off")  # drawn afresh: the same bytes
        for p in (out / "figures").iterdir():
            p.unlink()
        code, _, err = run([*argv, "--out", str(out)], capsys)
        assert code == 0, err
        assert _figures(out / "figures") == drawn
