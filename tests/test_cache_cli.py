"""``noisydeq cache``: counts, sizes and stale entries of a cache filled by real small runs (a
tiny family, a tiny rram sweep) and by hand-made stale entries; ``prune --stale`` removes
exactly the stale ones and the next runs still hit the others (nothing recomputed, files
untouched); entries in use are skipped; ``--dry-run`` deletes nothing; bad input is one
line; no torch is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from noisydeq import store
from noisydeq.cachedir import current
from noisydeq.cli import main
from noisydeq.config import FamilySpec, build
from noisydeq.families import train_family
from noisydeq.hardware import calibration_store, chip_store
from noisydeq.hardware.calibration import KnobTable
from noisydeq.hardware.rram_program import ChipDraw
from noisydeq.sweep import run_sweep
from tests.sweep_helpers import toy_models, toy_spec, toy_task
from tests.test_cli_imports import _heavy_modules

SWEEP = dict(device="rram", noise_site="device", snr_db="0,10,inf", chips=1, max_rows=100)
FAMILY = {"depths": [1], "train": {"epochs": 1, "max_train_samples": 64}}


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as ex:
        code = ex.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (lock files aside): (size, mtime_ns)."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            if n != store.LOCK_FILE:
                s = os.stat(Path(d) / n)
                out[os.path.relpath(Path(d) / n, root)] = (s.st_size, s.st_mtime_ns)
    return out


def _sweep(tmp_path: Path, name: str):
    task = toy_task(n=40)
    return run_sweep(toy_spec(**SWEEP), tmp_path / name, task=task, models=toy_models(task),
                     progress=False, plots=False)


@pytest.fixture
def counters(monkeypatch):
    """Chips programmed and calibration SNR probes, from now on."""
    seen = {"programmed": 0, "probes": 0}
    program, memo = ChipDraw.program, KnobTable._memo

    def counting_program(self, s):
        seen["programmed"] += 1
        return program(self, s)

    def counting_memo(self, knob):
        if knob not in self.measured:
            seen["probes"] += 1
        return memo(self, knob)

    monkeypatch.setattr(ChipDraw, "program", counting_program)
    monkeypatch.setattr(KnobTable, "_memo", counting_memo)
    return seen


def _stale_copies(cache: Path) -> dict[str, str]:
    """Hand-made entries beside the real ones: copies whose recorded fields say another
    code / torch / version (stale), and a calibration entry without its recorded
    environment (unknown, as written before it was recorded). Name -> status."""
    made = {}
    cal = sorted((cache / "calibration").glob("*.json"))[0]
    record = store.read_signed_json(cal)
    for name, change in (("c" * 32, {"code": "0" * 16}), ("d" * 32, None)):
        rec = json.loads(json.dumps(record))
        if change is None:
            del rec["env"]
        else:
            rec["env"].update(change)
        store.atomic_write_text(cache / "calibration" / f"{name}.json", store.dumps_signed(rec))
        made[f"calibration/{name}.json"] = "unknown" if change is None else "stale"
    chip = sorted((cache / "chips").glob("*.safetensors"))[0]
    tensors, meta = store.load_tensors(chip)
    meta = {k: v for k, v in meta.items() if k != "format"}
    store.save_tensors(cache / "chips" / f"{'e' * 32}.safetensors", tensors,
                       {**meta, "env": {**meta["env"], "torch": "1.0.0"}})
    old = {k: v for k, v in meta.items() if k not in ("env", "version")}
    version, store.__version__ = store.__version__, "0.0.1"  # an older writer: no env
    try:
        store.save_tensors(cache / "chips" / f"{'f' * 32}.safetensors", tensors, old)
    finally:
        store.__version__ = version
    made[f"chips/{'e' * 32}.safetensors"] = made[f"chips/{'f' * 32}.safetensors"] = "stale"
    model = sorted((cache / "models").iterdir())[0]
    weights, mmeta = store.load_checkpoint(model / "model.safetensors")
    config = mmeta["config"]
    config["versions"]["noisydeq"] = "0.0.9"
    store.save_checkpoint(cache / "models" / ("a" * 20) / "model.safetensors", weights,
                          config, mmeta["extra"])
    made["models/" + "a" * 20] = "stale"
    return made


def test_the_constants_read_from_source_are_the_modules_and_torch_is_its_version():
    from noisydeq import fingerprint, train_config

    assert current.constant(*current.FORMATS["calibration"]) == calibration_store.FORMAT
    assert current.constant(*current.FORMATS["chips"]) == chip_store.FORMAT
    assert current.constant(*current.SCHEMA) == train_config.TRAIN_SCHEMA
    assert current.constant(*current.GRADIENT) == train_config.DEVICE_GRADIENT
    assert fingerprint.torch_version() == torch.__version__
    assert calibration_store.code_fingerprint is fingerprint.code_fingerprint


def test_list_prune_stale_then_the_runs_still_hit(tmp_path, monkeypatch, capsys, digits,
                                                  counters):
    cache = tmp_path / "cache"
    monkeypatch.setenv("NOISYDEQ_CACHE", str(cache))
    first = _sweep(tmp_path, "a")
    family = train_family(build(FamilySpec, FAMILY), digits)
    assert not any(m.cached for m in family.members)
    real = {k: sorted(p.name for p in (cache / k).iterdir() if p.name != store.LOCK_FILE)
            for k in ("models", "calibration", "chips")}
    assert len(real["models"]) == 2 and len(real["chips"]) == 4 and real["calibration"]
    made = _stale_copies(cache)

    code, out, _ = _cli(capsys, "cache", "list", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["cache"] == str(cache) and info["other"]["files"] == 0
    sizes = _files(cache)
    for kind, names in real.items():
        mine = {n: s for n, s in made.items() if n.startswith(kind + "/")}
        row = info["kinds"][kind]
        assert row["entries"] == len(names) + len(mine)
        assert row["stale"] == sum(s == "stale" for s in mine.values())
        assert row["unknown"] == sum(s == "unknown" for s in mine.values())
        assert row["current"] == len(names)  # every real entry records what it was made by
        assert row["bytes"] == sum(size for f, (size, _) in sizes.items()
                                   if f.startswith(kind + "/"))
        assert row["stale_bytes"] == sum(size for f, (size, _) in sizes.items()
                                         if f.startswith(kind + "/") and "stale" in (
                                             made.get(f), made.get(os.path.dirname(f))))
    code, table, _ = _cli(capsys, "cache")
    assert code == 0 and str(cache) in table and "chips" in table and "unknown" in table

    before = _files(cache)
    code, out, _ = _cli(capsys, "cache", "prune", "--stale")
    assert code == 0 and out.startswith("removed 4 entries, freed ")
    after = _files(cache)
    gone = {f for f in before if f not in after}
    assert {f if f.startswith(("calibration", "chips")) else os.path.dirname(f)
            for f in gone} == {n for n, s in made.items() if s == "stale"}
    assert all(after[f] == before[f] for f in after)  # the rest untouched
    husk = cache / "models" / ("a" * 20)  # emptied: its lock file stays (cachedir.prune)
    assert [p.name for p in husk.iterdir()] == [store.LOCK_FILE]

    counters.update(programmed=0, probes=0)
    second = _sweep(tmp_path, "b")
    again = train_family(build(FamilySpec, FAMILY), digits)
    assert counters == {"programmed": 0, "probes": 0}  # chips and knobs read from the cache
    assert all(m.cached for m in again.members)
    assert second.rows == first.rows
    assert _files(cache) == after  # nothing written again


def test_prune_skips_entries_in_use_and_dry_run_deletes_nothing(tmp_path, monkeypatch,
                                                                capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("NOISYDEQ_CACHE", str(cache))
    _sweep(tmp_path, "a")
    entry = cache / "models" / ("b" * 20)  # a model entry another process holds locked
    model = store.save_checkpoint(entry / "model.safetensors",
                                  {"w": torch.ones(3)}, {"schema": 0}, {})
    assert model.is_file()
    chips = sorted((cache / "chips").glob("*.safetensors"))
    writing = chips[0].parent / f".{chips[0].name}.{os.getpid()}-0123abcd.tmp"  # a live writer
    writing.write_bytes(b"")
    before = _files(cache)

    code, out, _ = _cli(capsys, "cache", "clear", "--yes", "--dry-run")
    assert code == 0 and out.startswith(f"would remove {len(chips) + 4} entries")
    assert f"skipped chips/{chips[0].name}: being written" in out
    assert _files(cache) == before

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from noisydeq import store; "
         f"lock = store.DirLock({str(entry)!r}).acquire(); print('held', flush=True); "
         "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, out, _ = _cli(capsys, "cache", "clear", "--kind", "models", "--kind", "chips")
    finally:
        holder.communicate("")
    assert code == 0
    assert f"skipped models/{entry.name}: in use by another process" in out
    assert f"skipped chips/{chips[0].name}: being written" in out
    left = _files(cache)
    assert sorted(f for f in left if f.startswith("chips/") and f.endswith(".safetensors")) \
        == [f"chips/{chips[0].name}"]
    assert sorted(f for f in left if f.startswith("models/")) == [
        f"models/{entry.name}/model.json", f"models/{entry.name}/model.safetensors"]
    assert all(f in left for f in before if f.startswith("calibration/"))  # other kinds kept

    writing.unlink()
    code, out, _ = _cli(capsys, "cache", "prune", "--older-than", "0")
    assert code == 0 and "skipped" not in out
    assert [f for f in _files(cache) if not f.startswith(".")] == []


@pytest.mark.parametrize("args,message", [
    (["cache", "prune", "--stale", "--kind", "chip"], "unknown kind; did you mean 'chips'?"),
    (["cache", "prune", "--older-than", "-1"], "--older-than -1: expected a number of days"),
    (["cache", "prune", "--older-than", "inf"], "--older-than inf: no entry is that old"),
    (["cache", "prune"], "give --stale and/or --older-than"),
    (["cache", "clear"], "pass --yes to delete every entry"),
    (["cache", "lst"], "did you mean 'list'?"),
])
def test_bad_input_is_one_line(capsys, args, message):
    code, out, err = _cli(capsys, *args)
    assert code == 2 and out == "" and message in err and len(err.splitlines()) == 1


def test_a_directory_that_is_not_a_cache_is_refused(tmp_path, capsys):
    (tmp_path / "models").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "models" / ("c" * 20)).mkdir()
    for args in (["list"], ["prune", "--older-than", "0"], ["clear", "--yes"]):
        code, _, err = _cli(capsys, "cache", *args, "--cache", str(tmp_path))
        assert code == 2 and "does not look like a noisydeq cache" in err
        assert "'notes.txt'" in err and len(err.splitlines()) == 1
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "models").is_dir()


@pytest.mark.parametrize("args", [["cache"], ["cache", "prune", "--stale", "--dry-run"]])
def test_cache_commands_do_not_import_torch(args, tmp_path):
    (tmp_path / "cache" / "chips").mkdir(parents=True)
    assert _heavy_modules([*args, "--cache", str(tmp_path / "cache")], tmp_path) == []


def test_other_files_and_links_are_counted_never_deleted(tmp_path, capsys):
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    (cache / "chips").mkdir(parents=True)
    (cache / "models").mkdir()
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (cache / "models" / ("a" * 20)).symlink_to(outside)  # an entry's name, but a link
    (cache / "chips" / f"{'1' * 32}.safetensors").symlink_to(outside / "keep.txt")
    (cache / "chips" / "notes.txt").write_text("mine")
    (cache / "chips" / f"{'2' * 32}.safetensors").write_bytes(b"junk")  # damaged: stale
    code, out, _ = _cli(capsys, "cache", "--json", "--cache", str(cache))
    info = json.loads(out)
    assert code == 0 and info["other"]["files"] == 3
    assert info["kinds"]["chips"] == {"entries": 1, "bytes": 4, "stale": 1, "current": 0,
                                      "unknown": 0, "stale_bytes": 4}
    assert info["kinds"]["models"]["entries"] == 0
    code, out, _ = _cli(capsys, "cache", "clear", "--yes", "--cache", str(cache))
    assert code == 0 and out.startswith("removed 1 entry, freed 4 B")
    assert (outside / "keep.txt").read_text() == "keep"
    assert sorted(p.name for p in (cache / "chips").iterdir()) == [
        f"{'1' * 32}.safetensors", "notes.txt"]
    assert (cache / "models" / ("a" * 20)).is_symlink()


def test_a_run_waiting_for_a_pruned_model_gets_its_lock_on_the_same_file(tmp_path,
                                                                        monkeypatch):
    """A process asking for a model entry while ``prune`` holds its lock gets the lock
    afterwards on the same lock file, in the same directory: the prune removes the model's
    files, never the lock file (a waiter would lock an unlinked file while a third process
    locks a new one) nor the directory (filelock 3.12 ends the wait in a traceback)."""
    from noisydeq.cachedir import inventory, prune

    cache = tmp_path / "cache"
    entry = cache / "models" / ("b" * 20)
    store.save_checkpoint(entry / "model.safetensors", {"w": torch.ones(3)},
                          {"schema": 0}, {})
    (entry / store.LOCK_FILE).touch()
    inode = (entry / store.LOCK_FILE).stat().st_ino
    listed = inventory.scan(cache).entries
    waiter: list[subprocess.Popen] = []
    try_acquire = store.DirLock.try_acquire

    def held_then_asked(self: store.DirLock) -> bool:  # the prune holds it; a run asks
        taken = try_acquire(self)
        waiter.append(subprocess.Popen(
            [sys.executable, "-c", "import os, sys; from noisydeq import store; "
             "lock = store.DirLock(sys.argv[1], 'model directory').acquire(); "
             "print(os.stat(lock.path).st_ino, sorted(os.listdir(sys.argv[1])))",
             str(entry)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        assert "waiting for it to finish" in waiter[0].stderr.readline()
        return taken

    monkeypatch.setattr(store.DirLock, "try_acquire", held_then_asked)
    outcome = prune.remove(listed)
    out, err = waiter[0].communicate()
    assert [e.name for e in outcome.removed] == [f"models/{entry.name}"]
    assert waiter[0].returncode == 0, err
    assert out.split(" ", 1) == [str(inode), f"{[store.LOCK_FILE]}\n"]
    assert (entry / store.LOCK_FILE).stat().st_ino == inode
    assert inventory.scan(cache).entries == []  # the husk is no entry


def test_sizes_are_written_by_the_one_byte_formatter() -> None:
    """The cache table's sizes come from ``limits.fmt_bytes`` (the memory refusals' text):
    bytes whole, three significant digits, whole numbers from 100 up — 1000 KiB is not
    printed ``1e+03 KiB``."""
    from noisydeq.commands import cache
    from noisydeq.limits import fmt_bytes

    assert cache.fmt_bytes is fmt_bytes
    assert fmt_bytes(4) == "4 B"
    assert fmt_bytes(1023) == "1023 B"
    assert fmt_bytes(1536) == "1.5 KiB"
    assert fmt_bytes(1000 * 1024) == "1000 KiB"
    assert fmt_bytes(123.4 * 2**20) == "123 MiB"
    assert fmt_bytes(45.25 * 2**20) == "45.2 MiB"
    assert fmt_bytes(1.5 * 2**30) == "1.5 GiB"
