"""store.open_for_writing: the one opening of every resumable run directory (sweep, attack,
certify and study runs, a LyaDEQ experiment) — refused writing nothing, then locked, checked
again, cleaned of stale temporary files and unsealed; an error leaves no directory it made."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from noisydeq import store
from noisydeq.errors import CorruptArtefact, NoisyDEQError


def _dead_pid() -> str:
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()


def _run(root: Path) -> tuple[Path, dict[str, bytes]]:
    """A sealed run directory: signed meta.json, a cell, SHA256SUMS, and a temporary file a
    killed writer left in it and in its cells/; returns it and its files' bytes."""
    run = root / "run"
    (run / "cells").mkdir(parents=True)
    store.write_signed_json(run / "meta.json", {"run": "test"}, indent=2)
    store.write_signed_json(run / "cells" / "a.json", {"rows": [1, 2]})
    store.write_manifest(run, [run / "meta.json"])
    dead = _dead_pid()
    (run / f".results.csv.{dead}-0123abcd.tmp").write_text("half a table")
    (run / "cells" / f".b.json.{dead}-4567cdef.tmp").write_text("half a cell")
    return run, _files(run)


def _files(run: Path) -> dict[str, bytes]:
    return {p.relative_to(run).as_posix(): p.read_bytes()
            for p in sorted(run.rglob("*")) if p.is_file() and p.name != store.LOCK_FILE}


def _check_meta(run: Path, calls: list[str]):
    def check() -> dict:
        calls.append("check")
        return store.read_signed_json(run / "meta.json", "meta.json")
    return check


def test_an_opening_checks_twice_then_removes_stale_temps_and_unseals(tmp_path):
    run, before = _run(tmp_path)
    lock, calls = store.DirLock(run, "--out"), []
    with store.open_for_writing(lock, _check_meta(run, calls), temps=[run / "cells"]) as (
            meta, created):
        assert meta == {"run": "test"} and not created and lock.held
        assert calls == ["check", "check"]  # before the lock, and again holding it
        after = _files(run)
    lock.release()
    gone = {name for name in before if name not in after}
    temps = {name for name in before if name.endswith(".tmp")}
    assert len(temps) == 2 and gone == {"SHA256SUMS", *temps}
    assert all(after[name] == before[name] for name in after)  # nothing else touched


def test_without_unseal_the_seal_stays(tmp_path):
    run, before = _run(tmp_path)
    lock = store.DirLock(run, "--out")
    with store.open_for_writing(lock, lambda: None, unseal=False):
        assert (run / "SHA256SUMS").read_bytes() == before["SHA256SUMS"]
        assert not any(p.name.endswith(".tmp") for p in run.iterdir())
        assert any(p.name.endswith(".tmp") for p in (run / "cells").iterdir())  # not in temps
    lock.release()


def test_a_damaged_signed_file_is_refused_naming_it_and_nothing_changes(tmp_path):
    run, _ = _run(tmp_path)
    meta = run / "meta.json"
    meta.write_text(meta.read_text().replace('"test"', '"tests"'))
    before = _files(run)
    lock, calls = store.DirLock(run, "--out"), []
    with pytest.raises(CorruptArtefact) as err:
        with store.open_for_writing(lock, _check_meta(run, calls), temps=[run / "cells"]):
            pytest.fail("opened a run whose meta.json is damaged")
    assert str(meta) in str(err.value) and "digest" in str(err.value)
    assert len(str(err.value).splitlines()) == 1 and calls == ["check"]
    assert _files(run) == before and not lock.held  # seal and temporary files kept


def test_a_read_only_directory_is_refused_in_one_line_before_any_write(tmp_path, monkeypatch):
    run, before = _run(tmp_path)
    real = store.try_writing

    def read_only(directory: Path) -> None:
        if Path(directory) == run:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        real(directory)

    monkeypatch.setattr(store, "try_writing", read_only)
    lock, calls = store.DirLock(run, "--out"), []
    with pytest.raises(NoisyDEQError) as err:
        with store.open_for_writing(lock, _check_meta(run, calls), temps=[run / "cells"]):
            pytest.fail("opened a read-only directory")
    assert str(err.value) == f"--out {run}: cannot write in {run} (Read-only file system)"
    assert calls == [] and not lock.held
    assert _files(run) == before and not (run / store.LOCK_FILE).exists()


@pytest.mark.skipif(not os.path.isdir("/sys"), reason="needs Linux's /sys")
def test_a_directory_no_one_can_write_in_is_refused_before_it_is_made(tmp_path):
    """/sys refuses new entries even to root."""
    lock = store.DirLock("/sys/noisydeq-run", "--out")
    with pytest.raises(NoisyDEQError, match=r"^--out /sys/noisydeq-run: cannot write in /sys "
                                            r"\(.*\)$"):
        with store.open_for_writing(lock, lambda: pytest.fail("checked")):
            pass
    assert not Path("/sys/noisydeq-run").exists() and not lock.held


def test_an_error_removes_the_directory_the_opening_made_and_keeps_one_it_found(tmp_path):
    new = tmp_path / "new"
    lock = store.DirLock(new, "--out")
    with pytest.raises(KeyboardInterrupt):
        with store.open_for_writing(lock, lambda: None) as (_, created):
            assert created and new.is_dir()
            (new / "config.toml").write_text("half")
            raise KeyboardInterrupt
    assert not new.exists() and not lock.held
    run, before = _run(tmp_path)
    lock = store.DirLock(run, "--out")
    with pytest.raises(KeyboardInterrupt):
        with store.open_for_writing(lock, lambda: None, unseal=False, temps=[run / "cells"]):
            raise KeyboardInterrupt
    assert set(_files(run)) == {"meta.json", "cells/a.json", "SHA256SUMS"} and not lock.held


def test_another_writer_finishing_meanwhile_is_caught_by_the_second_check(tmp_path):
    """The check runs again holding the lock; its refusal then releases the lock and removes
    the directory only when this opening made it."""
    checks = iter([None, NoisyDEQError("--out x: holds another run; choose another --out")])

    def check() -> None:
        err = next(checks)
        if err is not None:
            raise err

    out = tmp_path / "out"
    lock = store.DirLock(out, "--out")
    with pytest.raises(NoisyDEQError, match="holds another run"):
        with store.open_for_writing(lock, check):
            pytest.fail("opened")
    assert not out.exists() and not lock.held
