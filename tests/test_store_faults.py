"""Failure modes of storage and environment: a full disk, an unwritable cache, bad
environment variables — one line naming what failed, non-zero exit, nothing half-written
served later, and a rerun that completes."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from noisydeq import store
from tests.cli_helpers import one_line_error, run_cli

SWEEP = ["sweep", "--device", "snr", "--snr", "0", "--depths", "1", "--chips", "1",
         "--epochs", "1", "--kinds", "ffw", "--threads", "1", "--jobs", "1", "--quiet"]


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["fsync", "write"])
def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch, where):
    """``write``/``fsync`` fail with ENOSPC and name no file: the error names the target."""
    target = tmp_path / "entry.json"
    store.atomic_write_bytes(target, b"old")
    if where == "fsync":
        monkeypatch.setattr(os, "fsync", _disk_full)
    with pytest.raises(OSError) as info:
        with store.atomic_open(target) as fh:
            if where == "write":
                _disk_full()
            fh.write(b"new")
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry.json"]  # no temp file left


def test_an_unwritable_directory_names_the_target_not_the_temp_file(tmp_path, monkeypatch):
    real_open = os.open

    def denied(path, flags, *args):
        if str(path).endswith(".tmp"):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(PermissionError) as info:
        store.atomic_write_bytes(tmp_path / "f.bin", b"x")
    assert info.value.filename == str(tmp_path / "f.bin")


def test_a_sweep_on_a_full_disk_is_one_line_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    monkeypatch.setattr(os, "fsync", _disk_full)
    code, _, err = run_cli([*SWEEP, "--out", str(out)], capsys)
    one_line_error(code, err, str(out / "config.toml"), "No space left on device",
                   "free some space", "run the same command again")
    monkeypatch.undo()
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    code, stdout, err = run_cli([*SWEEP, "--out", str(out)], capsys)
    assert code == 0, err
    assert (out / "results.csv").is_file() and "cells: 1 computed" in stdout


@pytest.mark.parametrize(("env", "value"), [("NOISYDEQ_THREADS", "abc"), ("NOISYDEQ_THREADS", "0"),
                                            ("NOISYDEQ_THREADS", "-1"), ("NOISYDEQ_JOBS", "abc"),
                                            ("NOISYDEQ_JOBS", "0")])
def test_a_bad_environment_variable_is_named_and_nothing_is_written(tmp_path, monkeypatch,
                                                                     capsys, env, value):
    """``NOISYDEQ_THREADS=abc`` said "threads 'abc': ..." to a user who typed no --threads."""
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(env, value)
    argv = SWEEP[:SWEEP.index("--threads")] + ["--quiet"]  # the variable, not the option
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "run")], capsys)
    one_line_error(code, err, f"${env} '{value}'")
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("below", [False, True])
def test_a_cache_that_is_a_file_is_refused_before_the_run_directory_is_made(
        tmp_path, monkeypatch, capsys, below):
    """It was refused after config.toml, meta.json and cells/ were written, in a line
    naming a model directory ("cannot create it (Not a directory)"), not the variable."""
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    cache = blocker / "sub" if below else blocker
    monkeypatch.setenv("NOISYDEQ_CACHE", str(cache))
    code, _, err = run_cli([*SWEEP, "--out", str(tmp_path / "run")], capsys)
    one_line_error(code, err, f"$NOISYDEQ_CACHE {cache}",
                   "lies below the file" if below else "is a file")
    assert not (tmp_path / "run").exists()


def test_a_damaged_checkpoint_sidecar_is_written_again_from_the_checkpoint(
        tmp_path, monkeypatch, capsys):
    """model.json (read by people and by `certify` for the IBP radius) was left damaged for
    good: the model loaded from model.safetensors without a word, and certify read the
    damaged sidecar as "trained without IBP"."""
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    code, _, err = run_cli([*SWEEP, "--out", str(tmp_path / "run1")], capsys)
    assert code == 0, err
    (side,) = (tmp_path / "cache" / "models").glob("*/model.json")
    good = side.read_bytes()
    for damage in (good[: len(good) // 2], good.replace(b'"format"', b'"formaT"'), None):
        if damage is None:
            side.unlink()
        else:
            side.write_bytes(damage)
        code, _, err = run_cli([*SWEEP, "--out", str(tmp_path / "run2")], capsys)
        assert code == 0, err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"noisydeq: warning: {side}: "), err
        assert "written again from model.safetensors" in lines[0]
        assert side.read_bytes() == good
        code, _, err = run_cli([*SWEEP, "--out", str(tmp_path / "run2")], capsys)
        assert code == 0 and not err.strip(), err  # sound now: not a word


def test_mend_sidecar_says_when_it_cannot_write(tmp_path, monkeypatch):
    import torch

    path = tmp_path / "model.safetensors"
    store.save_checkpoint(path, {"w": torch.ones(2)}, {"a": 1}, {"test_metric": float("nan")})
    _, meta = store.load_checkpoint(path)
    assert store.mend_sidecar(path, meta) is None  # sound (a NaN metric compares equal)
    path.with_suffix(".json").write_text("{}")
    monkeypatch.setattr(os, "fsync", _disk_full)
    line = store.mend_sidecar(path, meta)
    assert line is not None and "could not write it again (No space left on device)" in line


def test_a_full_disk_under_the_optional_caches_is_said_once_each_and_the_run_goes_on(
        tmp_path, monkeypatch, capsys):
    """Calibration, programmed-chip and figure entries that could not be written were
    skipped without a word (a full cache disk: every run computed them again, silently)."""
    argv = [("rram" if a == "snr" else a) for a in SWEEP] + ["--snr", "0,10,20"]
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "plain"))
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "plain-run")], capsys)
    assert code == 0 and not err.strip(), err
    cache = tmp_path / "full"
    monkeypatch.setenv("NOISYDEQ_CACHE", str(cache))
    real_replace = os.replace

    def full(src, dst):
        if Path(dst).parent in [cache / d for d in ("calibration", "chips", "figures")]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    code, _, err = run_cli([*argv, "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    lines = sorted(ln for ln in err.splitlines() if ln.strip())
    assert [ln.split(": ")[2].split("/")[-2] for ln in lines] == ["calibration", "chips",
                                                                  "figures"], err
    for ln in lines:
        assert ln.startswith(f"noisydeq: warning: {cache}/"), ln
        assert "No space left on device" in ln and "not cached" in ln, ln
    assert not [p for p in cache.rglob("*.tmp")]
    want = (tmp_path / "plain-run" / "results.csv").read_text()
    assert (tmp_path / "run" / "results.csv").read_text() == want


def _say_not_cached(tmp_path, capsys) -> list[str]:
    """``store.not_cached`` twice for one kind: the warning lines it printed."""
    capsys.readouterr()
    for _ in range(2):
        store.not_cached("figures", tmp_path / "f.png",
                         OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    return [ln for ln in capsys.readouterr().err.splitlines() if "not cached" in ln]


@pytest.mark.parametrize("turn", ["first", "second"])
def test_the_once_per_process_not_cached_warning_is_said_again_in_each_test(
        tmp_path, capsys, turn):
    """Said once per process and kind (the product's behaviour), but tests/conftest.py gives
    each test a fresh set: the "second" test says the warning the "first" already said (it
    was hidden by any earlier test that had said it)."""
    assert not store._NOT_CACHED
    assert len(_say_not_cached(tmp_path, capsys)) == 1  # once, however often it is hit
    assert store._NOT_CACHED == {"figures"}


@pytest.mark.parametrize("argv", [
    ["train", "--depths", "1", "--epochs", "1", "--threads", "1", "--quiet"],
    ["adversarial", "adversarial-fig3", "--quick", "--threads", "1", "--quiet"],
    ["lyapunov", "lyapunov-table1", "--threads", "1", "--quiet"],
    ["certify", "certify-mnist", "--quick", "--threads", "1", "--quiet"],
], ids=lambda a: a[0])
def test_commands_that_train_into_the_cache_check_it_first(tmp_path, monkeypatch, capsys, argv):
    """As the sweep's check: they trained (or downloaded) first and failed on the first model
    directory, after their output directory was made."""
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    monkeypatch.setenv("NOISYDEQ_CACHE", str(blocker))
    monkeypatch.chdir(tmp_path)
    out = [] if argv[0] == "train" else ["--out", str(tmp_path / "run")]
    code, _, err = run_cli([*argv, *out], capsys)
    one_line_error(code, err, f"$NOISYDEQ_CACHE {blocker}", "is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
