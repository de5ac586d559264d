"""The figure cache (noisydeq/figure_cache.py): a repeated sweep copies its figures from the
cache instead of drawing them — the same files, bytes and order as drawing gives — and any
change to what they are drawn from, or a damaged entry, draws them again."""

from __future__ import annotations

import json

import noisydeq.plots
from noisydeq import figure_cache, store
from noisydeq.cachedir.inventory import scan
from noisydeq.sweep import run_sweep
from tests.sweep_helpers import toy_models, toy_spec, toy_task

SPEC = dict(snr_db="0,10,inf", chips=1, max_rows=400)


def _figures(run):
    return {p.name: p.read_bytes() for p in sorted((run / "figures").iterdir())}


def test_second_sweep_copies_the_drawn_figures(tmp_path, private_cache, monkeypatch):
    task = toy_task(n=40)
    first = run_sweep(toy_spec(**SPEC), tmp_path / "a", task=task, models=toy_models(task),
                      progress=False)
    assert first.figures and len(list((private_cache / "figures").glob("*.json"))) == 1
    drawn = _figures(tmp_path / "a")

    def no_drawing(*a, **k):
        raise AssertionError("drawn although the cache holds these figures")

    monkeypatch.setattr(noisydeq.plots, "plot_sweep", no_drawing)
    again = run_sweep(toy_spec(**SPEC), tmp_path / "b", task=task, models=toy_models(task),
                      progress=False)
    assert [p.name for p in again.figures] == [p.name for p in first.figures]
    assert [p.parent for p in again.figures] == [tmp_path / "b" / "figures"] * len(again.figures)
    assert _figures(tmp_path / "b") == drawn
    checked = store.verify_manifest(tmp_path / "b")  # the copies are sealed like drawings
    assert {f"figures/{p.name}" for p in again.figures} <= set(checked)
    # drawing again with the cache off gives the same bytes as the copy
    monkeypatch.undo()
    monkeypatch.setenv("NOISYDEQ_CACHE", str(private_cache))
    monkeypatch.setenv(figure_cache.ENV, "off")
    run_sweep(toy_spec(**SPEC), tmp_path / "c", task=task, models=toy_models(task),
              progress=False)
    assert _figures(tmp_path / "c") == drawn


def test_other_inputs_draw_again(tmp_path, private_cache, monkeypatch):
    task = toy_task(n=40)
    run_sweep(toy_spec(**SPEC), tmp_path / "a", task=task, models=toy_models(task),
              progress=False)
    calls = []
    real = noisydeq.plots.plot_sweep

    def counting(*a, **k):
        calls.append(k.get("title"))
        return real(*a, **k)

    monkeypatch.setattr(noisydeq.plots, "plot_sweep", counting)
    run_sweep(toy_spec(**SPEC), tmp_path / "t", task=task, models=toy_models(task),
              progress=False, title="another title")
    run_sweep(toy_spec(**dict(SPEC, snr_db="0,5,10,inf")), tmp_path / "s", task=task,
              models=toy_models(task), progress=False)
    assert calls == ["another title", ""]
    assert len(list((private_cache / "figures").glob("*.json"))) == 3


def _draw_into(out, calls, content=b"png bytes"):
    def draw():
        calls.append(1)
        out.mkdir(parents=True, exist_ok=True)
        a, b = out / "f.png", out / "f.csv"
        a.write_bytes(content)
        b.write_text("x\n1\n")
        return [a, b]

    return draw


def test_damaged_entry_is_reported_and_drawn_again(tmp_path, private_cache, capsys):
    calls = []
    inputs = {"rows": [{"a": 1.5}], "title": ""}
    first = figure_cache.cached_figures(inputs, tmp_path / "o1", _draw_into(tmp_path / "o1",
                                                                              calls), private_cache)
    (entry,) = (private_cache / "figures").glob("*.json")
    data = json.loads(entry.read_text())
    data["files"][0]["data"] = "AAAA"  # other bytes, digest not updated
    entry.write_text(json.dumps(data))
    again = figure_cache.cached_figures(inputs, tmp_path / "o2", _draw_into(tmp_path / "o2",
                                                                              calls), private_cache)
    assert len(calls) == 2 and [p.name for p in again] == [p.name for p in first]
    assert "drawing the figures again" in capsys.readouterr().err
    # the entry was replaced: a third run copies it
    third = figure_cache.cached_figures(inputs, tmp_path / "o3", _draw_into(tmp_path / "o3",
                                                                              calls), private_cache)
    assert len(calls) == 2 and (tmp_path / "o3" / "f.png").read_bytes() == b"png bytes"
    assert [p.name for p in third] == ["f.png", "f.csv"]


def test_entry_whose_file_does_not_match_its_digest_is_not_used(tmp_path, private_cache, capsys):
    calls = []
    inputs = {"rows": [], "title": "t"}
    figure_cache.cached_figures(inputs, tmp_path / "o1", _draw_into(tmp_path / "o1", calls),
                                private_cache)
    (entry,) = (private_cache / "figures").glob("*.json")
    data = store.read_signed_json(entry)
    data["files"][0]["sha256"] = "0" * 64
    store.write_signed_json(entry, data)  # signed again: only the file's own digest is off
    figure_cache.cached_figures(inputs, tmp_path / "o2", _draw_into(tmp_path / "o2", calls),
                                private_cache)
    assert len(calls) == 2 and "not matching its SHA-256" in capsys.readouterr().err


def test_off_draws_and_stores_nothing(tmp_path, private_cache, monkeypatch):
    monkeypatch.setenv(figure_cache.ENV, "off")
    calls = []
    for i in range(2):
        out = tmp_path / f"o{i}"
        figure_cache.cached_figures({"rows": []}, out, _draw_into(out, calls), private_cache)
    assert len(calls) == 2 and not (private_cache / "figures").exists()


def test_key_follows_the_matplotlibrc_and_the_code(tmp_path, private_cache, monkeypatch):
    inputs = {"rows": [{"a": 1}]}
    base = figure_cache.figure_key(inputs)
    rc = tmp_path / "rc"
    rc.write_text("lines.linewidth: 3\n")
    monkeypatch.setenv("MATPLOTLIBRC", str(rc))
    with_rc = figure_cache.figure_key(inputs)
    rc.write_text("lines.linewidth: 4\n")
    assert len({base, with_rc, figure_cache.figure_key(inputs)}) == 3
    monkeypatch.delenv("MATPLOTLIBRC")
    assert figure_cache.figure_key(inputs) == base
    monkeypatch.setattr(figure_cache, "code_fingerprint", lambda *kind: "other code")
    assert figure_cache.figure_key(inputs) != base


def test_noisydeq_cache_lists_and_prunes_figure_entries(tmp_path, private_cache, monkeypatch):
    calls = []
    figure_cache.cached_figures({"rows": []}, tmp_path / "o", _draw_into(tmp_path / "o", calls),
                                private_cache)
    inv = scan(private_cache)
    (entry,) = inv.of("figures")
    assert entry.status == "current" and entry.size > 0
    (path,) = (private_cache / "figures").glob("*.json")
    data = store.read_signed_json(path)
    data["env"]["code"] = "0" * 16  # written by other code: no run of this one hits it
    store.write_signed_json(path, data)
    (entry,) = scan(private_cache).of("figures")
    assert entry.status == "stale"
    from click.testing import CliRunner

    from noisydeq.cli import cli

    out = CliRunner().invoke(cli, ["cache", "prune", "--stale", "--kind", "figures"])
    assert out.exit_code == 0, out.output
    assert not list((private_cache / "figures").glob("*.json"))
