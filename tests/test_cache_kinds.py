"""``noisydeq cache`` treats every kind alike — models, calibration, chips, figures and the
code fingerprint's memo (``code``): each entry listed with its status and the bytes of its
files, ``prune --stale`` removing exactly the stale ones, ``clear`` the rest, an entry that
another process writes (or holds locked) skipped; temporary files of killed writers are
counted apart and removed, a live writer's left alone. Entries are made by hand with the
fields each kind records (no run needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from noisydeq import __version__, figure_cache, fingerprint, store
from noisydeq.cachedir import KINDS, current
from noisydeq.cli import main
from noisydeq.hardware import calibration_store, chip_store
from noisydeq.train_config import TRAIN_SCHEMA


def _cli(capsys, *args: str) -> tuple[int, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as ex:
        code = ex.code
    return code, capsys.readouterr().out


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def _temp(target: Path, pid: int) -> Path:
    """A temporary file of ``target`` as :func:`store.atomic_open` names it, by ``pid``."""
    path = target.parent / f".{target.name}.{pid}-0123abcd.tmp"
    path.write_bytes(b"partial")
    return path


def _model(cache: Path, name: str, noisydeq: str) -> Path:
    config = {"schema": TRAIN_SCHEMA, "versions": {
        "noisydeq": noisydeq, "torch": fingerprint.torch_version().split("+")[0]}}
    store.save_checkpoint(cache / "models" / name / "model.safetensors",
                          {"w": torch.ones(3)}, config, {})
    return cache / "models" / name


def _calibration(cache: Path, name: str, recorded: bool = True, **env) -> Path:
    record = {"format": calibration_store.FORMAT, "knobs": [1.0]}
    if recorded:
        record["env"] = {**current.device_fields("calibration"), "threads": 1, **env}
    path = cache / "calibration" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    store.write_signed_json(path, record)
    return path


def _chip(cache: Path, name: str, **env) -> Path:
    path = cache / "chips" / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    store.save_tensors(path, {"g": torch.ones(4)}, {"chips": chip_store.FORMAT, "env": {
        **current.device_fields("chips"), "threads": 1, **env}})
    return path


def _figures(cache: Path, tmp: Path, name: str, **env) -> Path:
    """A figure entry as :func:`figure_cache._save` writes it, its ``env`` changed."""
    out = tmp / f"fig-{name}"
    out.mkdir()
    (out / "a.png").write_bytes(b"\x89PNG fake " + name.encode())
    path = figure_cache.entry_path(cache, name)
    figure_cache._save(path, name, out, [out / "a.png"])
    record = store.read_signed_json(path)
    for field, value in env.items():
        if value is None:
            record["env"].pop(field)
        else:
            record["env"][field] = value
    store.write_signed_json(path, record)
    return path


def _memo(cache: Path, name: str, raw: str) -> Path:
    path = cache / fingerprint.MEMO_DIRECTORY / name
    path.parent.mkdir(parents=True, exist_ok=True)
    store.write_signed_json(path, {"format": fingerprint.MEMO_FORMAT, "raw": raw,
                                   "code": fingerprint.code_fingerprint()})
    return path


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.iterdir() if f.name != store.LOCK_FILE)
    return path.stat().st_size


@pytest.fixture
def filled(tmp_path):
    """A cache holding, per kind, current, stale and (calibration) unknown entries, an
    other file, a live writer's temporary file and two of killed writers."""
    cache = tmp_path / "cache"
    name, raw = fingerprint.current_memo()
    made = {
        "current": [_model(cache, "a" * 20, __version__), _calibration(cache, "1" * 32),
                    _chip(cache, "2" * 32), _figures(cache, tmp_path, "3" * 32),
                    _figures(cache, tmp_path, "4" * 32, libraries=None),  # recorded none
                    _memo(cache, name, raw)],
        "stale": [_model(cache, "b" * 20, "0.0.9"),
                  _calibration(cache, "5" * 32, code="0" * 16),
                  _chip(cache, "6" * 32, torch="1.0.0"),
                  _figures(cache, tmp_path, "7" * 32, libraries={
                      **current.library_versions(), "matplotlib": "0.1"}),
                  _figures(cache, tmp_path, "8" * 32, code="0" * 16),
                  _memo(cache, "9" * 32 + ".json", "f" * 16)],
    }
    made["unknown"] = [_calibration(cache, "c" * 32, recorded=False)]  # written before
    # entries recorded their environment
    other = cache / "figures" / "notes.txt"
    other.write_text("mine")
    dead = _dead_pid()
    temps = {"live": _temp(made["current"][1], os.getpid()),
             "dead": [_temp(made["current"][3], dead), _temp(made["current"][5], dead)]}
    return cache, made, other, temps


def test_every_kind_is_listed_pruned_and_cleared_alike(filled, capsys):
    cache, made, other, temps = filled
    code, out = _cli(capsys, "cache", "--json", "--cache", str(cache))
    info = json.loads(out)
    assert code == 0 and set(info["kinds"]) == set(KINDS)

    def kind_of(p: Path) -> str:
        return p.relative_to(cache).parts[0]

    for kind in KINDS:
        row = info["kinds"][kind]
        mine = {s: [p for p in ps if kind_of(p) == kind] for s, ps in made.items()}
        assert row["current"] == len(mine["current"]) and row["stale"] == len(mine["stale"])
        assert row["unknown"] == len(mine["unknown"])
        assert row["entries"] == sum(len(v) for v in mine.values())
        assert row["bytes"] == sum(_size(p) for v in mine.values() for p in v), kind
        assert row["stale_bytes"] == sum(_size(p) for p in mine["stale"])
        assert mine["stale"], kind  # every kind has a stale entry here
    assert info["other"] == {"files": 1, "bytes": 4}
    temp_bytes = len(b"partial") * 3
    assert info["temporary"] == {"files": 3, "bytes": temp_bytes, "stale": 2}
    from noisydeq.cachedir.inventory import scan

    reasons = {e.name: e.reason for e in scan(cache).entries if e.status == "stale"}
    assert reasons[f"figures/{'7' * 32}.json"] == "matplotlib 0.1"
    assert reasons[f"code/{'9' * 32}.json"] == f"code {fingerprint.code_fingerprint()}"

    stale_bytes = sum(_size(p) for p in made["stale"])
    code, out = _cli(capsys, "cache", "prune", "--stale", "--json", "--cache", str(cache))
    report = json.loads(out)
    assert code == 0 and report["skipped"] == []
    assert sorted(report["removed"]) == sorted(
        f"{kind_of(p)}/{p.name}" for p in made["stale"])
    assert sorted(report["temporary_removed"]) == sorted(
        f"{p.parent.name}/{p.name}" for p in temps["dead"])
    assert report["freed_bytes"] == stale_bytes + 2 * len(b"partial")
    assert not any(p.is_file() for p in made["stale"])
    assert [f.name for f in (cache / "models" / ("b" * 20)).iterdir()] == [store.LOCK_FILE]
    assert all(p.exists() for p in made["current"] + made["unknown"])
    assert other.is_file() and temps["live"].is_file()
    assert not any(p.exists() for p in temps["dead"])

    # the rest, but for the entry a live writer writes now (its temporary file is there)
    code, out = _cli(capsys, "cache", "clear", "--yes", "--cache", str(cache))
    assert code == 0
    assert f"skipped calibration/{'1' * 32}.json: being written by another process" in out
    left = sorted(str(p.relative_to(cache)) for p in cache.rglob("*")
                  if p.is_file() and p.name != store.LOCK_FILE)
    assert left == sorted([f"calibration/{'1' * 32}.json", str(temps["live"].relative_to(
        cache)), "figures/notes.txt"])


@pytest.mark.parametrize("kind", ["calibration", "chips", "figures", "code", "models"])
def test_an_entry_another_process_writes_or_holds_is_skipped(tmp_path, capsys, kind):
    cache = tmp_path / "cache"
    name, raw = fingerprint.current_memo()
    entry = {"calibration": lambda: _calibration(cache, "1" * 32, code="0" * 16),
             "chips": lambda: _chip(cache, "2" * 32, torch="1.0.0"),
             "figures": lambda: _figures(cache, tmp_path, "3" * 32, code="0" * 16),
             "code": lambda: _memo(cache, "9" * 32 + ".json", "f" * 16),
             "models": lambda: _model(cache, "b" * 20, "0.0.9")}[kind]()
    holder = None
    if kind == "models":  # a run loading or training it holds its lock
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sys; from noisydeq import store; "
             f"lock = store.DirLock({str(entry)!r}).acquire(); print('held', flush=True); "
             "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        why = "in use by another process (it holds the entry's lock)"
    else:
        writing = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                   stdin=subprocess.PIPE, text=True)
        temp = _temp(entry, writing.pid)  # a live writer, not this process
        why = "being written by another process"
    try:
        code, out = _cli(capsys, "cache", "prune", "--stale", "--cache", str(cache))
    finally:
        (holder or writing).communicate("")
    assert code == 0 and out.startswith("removed 0 entries")
    assert f"skipped {kind}/{entry.name}: {why}" in out
    assert entry.exists() and _size(entry) > 0
    if kind != "models":
        assert temp.is_file()  # the writer just ended: its file is stale only from now on
    code, out = _cli(capsys, "cache", "prune", "--stale", "--cache", str(cache))
    assert code == 0 and out.startswith("removed 1 entry") and "skipped" not in out
    assert not entry.is_file() and (kind != "models" or not any(
        f.name != store.LOCK_FILE for f in entry.iterdir()))
    if kind != "models":
        assert not temp.exists() and "1 temporary file left by killed writers" in out


def test_clear_names_every_kind(capsys):
    try:
        main(["cache", "clear"])
    except SystemExit as ex:
        assert ex.code == 2
    err = capsys.readouterr().err
    assert f"({', '.join(KINDS)})" in err and "figures, code" in err


def test_entries_no_process_can_delete_share_one_line(filled, capsys, monkeypatch):
    """A read-only cache (a lab's shared mount): prune and clear skip every entry for one
    reason, which was one line per entry (a shared cache's thousands); now one line with the
    count and the first few names, ``--json`` listing each as before."""
    import errno

    from noisydeq.cachedir import prune

    cache, made, _, _ = filled

    def read_only(entry):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(prune, "_delete", read_only)
    why = f"cannot be deleted ({os.strerror(errno.EROFS)})"
    code, out = _cli(capsys, "cache", "prune", "--stale", "--cache", str(cache))
    lines = out.splitlines()
    assert code == 2 and lines[0].startswith("removed 0 entries"), out
    skipped = [ln for ln in lines if ln.startswith("skipped ")]
    assert len(skipped) == 1, out
    assert skipped[0].startswith(f"skipped {len(made['stale'])} entries: {why}: ")
    assert skipped[0].endswith(", … (--json lists them)") and skipped[0].count("/") == 3
    code, out = _cli(capsys, "cache", "prune", "--stale", "--json", "--cache", str(cache))
    assert [s["reason"] for s in json.loads(out)["skipped"]] == [why] * len(made["stale"])
    code, out = _cli(capsys, "cache", "clear", "--kind", "chips", "--cache", str(cache))
    chips = sorted(f"chips/{p.name}" for v in made.values() for p in v
                   if p.parent.name == "chips")
    assert len(chips) == 2 and out.splitlines()[1:] == [
        f"skipped 2 entries: {why}: {', '.join(chips)}"], out
    assert all(p.exists() for v in made.values() for p in v)


def test_a_prune_or_clear_that_could_not_delete_what_was_due_fails(filled, capsys,
                                                                   monkeypatch):
    """On a cache this process cannot write, prune and clear ended 'removed 0 entries' with
    exit 0 though entries were due and every one was skipped: now the report, then one
    line on stderr saying how many of those due were skipped and why, exit 2 (``--json``
    too); ``--dry-run`` deletes nothing, so it stays 0; an entry another process uses is
    no failure (tested above: exit 0)."""
    import errno

    from noisydeq.cachedir import prune

    cache, made, _, _ = filled
    n = len(made["stale"])

    def read_only(entry):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(prune, "_delete", read_only)
    why = f"cannot be deleted ({os.strerror(errno.EROFS)})"

    def cli(*args):
        try:
            main(list(args))
            code = 0
        except SystemExit as ex:
            code = ex.code
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = cli("cache", "prune", "--stale", "--cache", str(cache))
    assert code == 2 and out.startswith("removed 0 entries"), out
    assert err.strip() == (f"noisydeq: error: cache prune: {n} of {n} entries due for "
                           f"removal were skipped: {why}; the cache is not writable by this "
                           "process"), err
    code, out, err = cli("cache", "clear", "--kind", "chips", "--json", "--cache", str(cache))
    assert code == 2 and len(json.loads(out)["skipped"]) == 2, out
    assert "cache clear: 2 of 2 entries due for removal were skipped" in err, err
    code, out, err = cli("cache", "prune", "--stale", "--dry-run", "--cache", str(cache))
    assert code == 0 and not err and out.startswith(f"would remove {n} entries"), (out, err)
    calls = []

    def some(entry):  # one entry deletable (its file kept here), the rest not
        calls.append(entry)
        if len(calls) > 1:
            read_only(entry)
        return ""

    monkeypatch.setattr(prune, "_delete", some)
    code, out, err = cli("cache", "prune", "--stale", "--cache", str(cache))
    assert code == 2 and out.startswith("removed 1 entry"), out
    assert f"cache prune: {n - 1} of {n} entries due for removal were skipped" in err, err


def test_a_dry_run_on_a_cache_it_cannot_write_says_nothing_would_go(filled, capsys,
                                                                     monkeypatch):
    """``--dry-run`` deletes nothing to find out: on a cache this process cannot write it
    said 'would remove' every stale entry, which the real prune then skipped one by one."""
    import errno

    cache, made, _, _ = filled
    real = os.access

    def access(path, mode, *a, **k):
        if mode == os.W_OK and Path(path).resolve().is_relative_to(cache.resolve()):
            return False
        return real(path, mode, *a, **k)

    monkeypatch.setattr(os, "access", access)
    why = f"cannot be deleted ({os.strerror(errno.EACCES)})"
    code, out = _cli(capsys, "cache", "prune", "--stale", "--dry-run", "--cache", str(cache))
    lines = out.splitlines()
    assert code == 0 and lines[0] == "would remove 0 entries, would free 0 B", out
    assert lines[-1].startswith(f"skipped {len(made['stale'])} entries: {why}: "), out
    monkeypatch.setattr(os, "access", real)
    code, out = _cli(capsys, "cache", "prune", "--stale", "--dry-run", "--cache", str(cache))
    assert out.startswith(f"would remove {len(made['stale'])} entries"), out
