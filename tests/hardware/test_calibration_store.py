"""Calibration cache: a repeated sweep loads the controls, with the results of a fresh search."""

from __future__ import annotations

import json

import pytest

from noisydeq.hardware.calibration import KnobTable
from noisydeq.sweep import run_sweep
from tests.sweep_helpers import toy_models, toy_spec, toy_task

# 40 rows per level, 100 rows per forward: two levels per cell, so a resumed run first
# needs the later levels
SPEC = dict(device="rram", noise_site="device", snr_db="0,4,8,12,inf", chips=1, max_rows=100)


@pytest.fixture
def probes(monkeypatch):
    """Counts the SNR measurements of every calibration search."""
    count = [0]
    original = KnobTable._memo

    def memo(self, knob):
        if knob not in self.measured:
            count[0] += 1
        return original(self, knob)

    monkeypatch.setattr(KnobTable, "_memo", memo)
    return count


def _sweep(tmp_path, name, **kw):
    task = toy_task(n=40)
    return run_sweep(toy_spec(**SPEC), tmp_path / name, task=task, models=toy_models(task),
                     progress=False, plots=False, **kw)


def test_second_sweep_loads_controls_and_gets_identical_results(tmp_path, monkeypatch, probes):
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    first = _sweep(tmp_path, "a")
    searched = probes[0]
    assert searched > 0
    files = list((tmp_path / "cache" / "calibration").glob("*.json"))
    assert len(files) == 4  # one per (model, chip): 2 DEQs and 2 FFWs on one chip
    second = _sweep(tmp_path, "b")
    assert probes[0] == searched  # no measurement: every control came from the cache
    assert second.rows == first.rows
    # without a cache the search gives the same controls, hence the same table
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "empty"))
    assert _sweep(tmp_path, "c").rows == first.rows


def test_unreadable_or_foreign_cache_files_are_searched_again(tmp_path, monkeypatch, probes):
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    first = _sweep(tmp_path, "a")
    files = sorted((tmp_path / "cache" / "calibration").glob("*.json"))
    files[0].write_text("{not json")
    record = json.loads(files[1].read_text())
    record["key"] = "another"
    files[1].write_text(json.dumps(record))
    before = probes[0]
    again = _sweep(tmp_path, "b")
    assert probes[0] > before  # two (model, chip) pairs were calibrated again
    assert again.rows == first.rows
    assert json.loads(files[0].read_text())["format"].startswith("noisydeq-calibration")


def test_resumed_sweep_calibrates_like_an_uninterrupted_one(tmp_path, monkeypatch):
    """Levels are calibrated in ascending order up front: a run resumed after its first
    cell (which then first needs the higher levels) finds the same controls. (The toy
    layers here happen to be order-insensitive; on the digits DEQ's 222-wide layer,
    searching 11-30 dB before 0-10 dB changed 5 of 31 controls by up to 0.3 %.)"""
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "c1"))
    full = _sweep(tmp_path, "full")

    def stop(n):
        if n == 1:
            raise KeyboardInterrupt

    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "c2"))
    with pytest.raises(KeyboardInterrupt):
        _sweep(tmp_path, "cut", on_cell=stop)
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "c3"))  # nothing cached either
    resumed = _sweep(tmp_path, "cut")
    assert resumed.skipped_cells == 1
    assert resumed.rows == full.rows


def test_one_writer_ignores_an_unwritable_cache_and_checks_digests(tmp_path, monkeypatch,
                                                                    capsys):
    """:func:`write_entry` / :func:`cache_entries` (the local run's and the Ray driver's
    writer): an entry lands once, a damaged one is refused with a warning, an unwritable
    cache raises nothing."""
    from noisydeq.hardware.calibration_store import cache_entries, read_entries

    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    _sweep(tmp_path, "a")
    files = sorted((tmp_path / "cache" / "calibration").glob("*.json"))
    entries = read_entries(tmp_path / "cache", [f.name for f in files] + ["missing.json"])
    assert sorted(entries) == [f.name for f in files]
    assert cache_entries(entries, tmp_path / "copy") == len(files)
    copied = {p.name: p.read_text() for p in (tmp_path / "copy" / "calibration").glob("*")}
    assert copied == entries
    name = files[0].name
    bad = {name: entries[name].replace('"key"', '"kex"'), "../evil.json": entries[name]}
    assert cache_entries(bad, tmp_path / "other") == 0
    assert "not cached" in capsys.readouterr().err
    assert not (tmp_path / "other" / "calibration" / name).exists()
    assert not (tmp_path / "evil.json").exists()
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache directory should be")
    assert cache_entries(entries, blocked) == 0  # nothing raised
    monkeypatch.setenv("NOISYDEQ_CACHE", str(blocked))
    assert _sweep(tmp_path, "b").rows  # the local run ignores it too


def test_driver_names_the_entries_a_one_thread_run_stores(tmp_path, monkeypatch):
    """The Ray driver ships each task the entries of its pair by name
    (:meth:`Hardware.calibration_entries`, keyed for one thread): the names are the files a
    ``--threads 1`` run stored, so a worker loads them instead of searching."""
    import torch

    from noisydeq.sweep.hardware import Hardware

    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    task = toy_task(n=40)
    task.x_train = task.x_test.flip(0)  # calibrated inside the network on these
    models = toy_models(task)
    threads = torch.get_num_threads()
    try:
        run_sweep(toy_spec(**SPEC), tmp_path / "a", task=task, models=models, progress=False,
                  plots=False, threads="1")
    finally:
        torch.set_num_threads(threads)
    stored = {p.name for p in (tmp_path / "cache" / "calibration").glob("*.json")}
    hw = Hardware(toy_spec(**SPEC))
    calib = task.x_train[:512]
    fresh = toy_models(task)  # as the driver may hold them: same weights, train mode
    for sm in fresh:
        sm.model.train()
    named = {n for sm in fresh for n in hw.calibration_entries(sm.model, sm.seed, 0, calib,
                                                                threads=1)}
    assert named == stored and len(named) == 4
    assert all(sm.model.training for sm in fresh)  # left as it was
