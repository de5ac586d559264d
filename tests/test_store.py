"""store: atomic writes, safetensors checkpoints with config hash, pickle-free optimizer state."""

import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from noisydeq import store
from noisydeq.errors import CorruptArtefact, NoisyDEQError


def _model(seed=0):
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return m


CONFIG = {"model": {"kind": "tiny", "width": 5}, "train": {"epochs": 3, "snr": math.inf}}


def test_checkpoint_roundtrip_and_sidecar(tmp_path):
    m = _model()
    path = store.save_checkpoint(tmp_path / "m.safetensors", m.state_dict(), CONFIG,
                                 extra={"accuracy": 0.5})
    tensors, meta = store.load_checkpoint(path, CONFIG)
    fresh = _model(seed=1)
    store.load_into(fresh, tensors, path)
    for k, v in m.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    assert meta["config"]["train"]["snr"] == math.inf
    side = json.loads((tmp_path / "m.json").read_text())
    assert side["config_hash"] == meta["config_hash"] == store.config_hash(CONFIG)
    assert side["extra"]["accuracy"] == 0.5
    # the file is plain safetensors: its header is JSON, no pickle opcodes anywhere
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    assert set(header) - {"__metadata__"} == set(m.state_dict())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_other_config_is_refused_with_one_line(tmp_path):
    path = store.save_checkpoint(tmp_path / "m.safetensors", _model().state_dict(), CONFIG)
    other = {"model": {"kind": "tiny", "width": 5}, "train": {"epochs": 4, "snr": math.inf}}
    with pytest.raises(NoisyDEQError, match="different config") as e:
        store.load_checkpoint(path, other)
    assert "train.epochs 3 → 4" in str(e.value) and "\n" not in str(e.value)


def test_wrong_shapes_and_corrupt_files(tmp_path):
    path = store.save_checkpoint(tmp_path / "m.safetensors", _model().state_dict(), CONFIG)
    tensors, _ = store.load_checkpoint(path)
    with pytest.raises(NoisyDEQError, match="does not fit"):
        store.load_into(nn.Sequential(nn.Linear(3, 4)), tensors, path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(NoisyDEQError, match="not a readable safetensors"):
        store.load_checkpoint(bad)
    with pytest.raises(NoisyDEQError, match="not found"):
        store.load_checkpoint(tmp_path / "nope.safetensors")
    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(plain))
    with pytest.raises(NoisyDEQError, match="no noisydeq metadata"):
        store.load_checkpoint(plain)


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    store.atomic_write_bytes(target, b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        store.atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def _steps(model, opt, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(8, 3, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("opt_cls", [torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD])
def test_optimizer_state_roundtrip_continues_identically(tmp_path, opt_cls):
    kw = {"lr": 1e-2, "momentum": 0.9} if opt_cls is torch.optim.SGD else {"lr": 1e-2}
    ref = _model()
    ref_opt = opt_cls(ref.parameters(), **kw)
    _steps(ref, ref_opt, 3, seed=1)
    tensors, info = store.flatten_optimizer(ref_opt.state_dict())
    all_t = {**{f"model/{k}": v for k, v in ref.state_dict().items()}, **tensors}
    store.save_tensors(tmp_path / "r.safetensors", all_t, {"optimizer": info})
    _steps(ref, ref_opt, 4, seed=2)  # uninterrupted continuation

    loaded, meta = store.load_tensors(tmp_path / "r.safetensors")
    m = _model(seed=9)
    m.load_state_dict({k[6:]: v for k, v in loaded.items() if k.startswith("model/")})
    opt = opt_cls(m.parameters(), **kw)
    opt.load_state_dict(store.unflatten_optimizer(loaded, meta["optimizer"]))
    _steps(m, opt, 4, seed=2)
    for k, v in ref.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k


def test_config_hash_is_canonical():
    a = {"x": 1, "y": [1, 2], "z": {"b": 2, "a": 1}}
    b = {"z": {"a": 1, "b": 2}, "y": (1, 2), "x": 1}
    assert store.config_hash(a) == store.config_hash(b)
    assert store.config_hash(a) != store.config_hash({**a, "x": 2})


# ------------------------------------------------------------- files, digests, locks


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = store.atomic_write_text(tmp_path / "a.txt", "x")
        with store.atomic_open(tmp_path / "fig.png") as fh:
            fh.write(b"png")
    finally:
        os.umask(old)
    for p in (path, tmp_path / "fig.png"):
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask


def test_temp_names_are_unique_and_stale_ones_are_cleaned(tmp_path):
    names = {store._temp_path(tmp_path / "cell.json").name for _ in range(200)}
    assert len(names) == 200 and all(n.startswith(".cell.json.") for n in names)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".cell.json.{dead}-0123abcd.tmp"  # its writer is gone
    live = tmp_path / f".other.json.{os.getpid()}-0123abcd.tmp"  # being written now
    legacy = tmp_path / ".old.json.k2j3h4ab.tmp"  # a mkstemp name of earlier versions
    mine = tmp_path / ".thumbnail.png"  # not a temporary file: never removed
    for p in (stale, live, legacy, mine):
        p.write_text("partial")
    assert store.clean_stale_temps(tmp_path) == 1 and not stale.exists()
    assert live.exists() and legacy.exists()
    assert store.clean_stale_temps(tmp_path, locked=True) == 2  # under the lock: all stale
    assert sorted(p.name for p in tmp_path.iterdir()) == [".thumbnail.png"]


def test_signed_json_and_text_catch_any_change(tmp_path):
    obj = {"rows": [{"snr_db": math.inf, "value": 0.5}], "key": "a|b"}
    text = store.dumps_signed(obj)
    assert store.loads_signed(text, "f") == obj
    assert store.loads_signed(store.dumps_signed(obj, indent=2), "f") == obj
    for bad in (text.replace("0.5", "0.6"), text.rstrip("\n"), text.replace(": ", ":"),
                text.replace('"sha256"', '"sha257"'), "[]", text[:-9]):
        with pytest.raises(CorruptArtefact):
            store.loads_signed(bad, "f")
    signed = store.sign_text("a = 1\n")
    assert store.verify_text(signed, "f") == "a = 1\n"
    for bad in (signed.replace("a = 1", "a = 2"), "a = 1\n", signed + " "):
        with pytest.raises(CorruptArtefact):
            store.verify_text(bad, "f")


def test_manifest_lists_and_checks_files(tmp_path):
    (tmp_path / "sub").mkdir()
    a, b = tmp_path / "a.csv", tmp_path / "sub" / "b.png"
    a.write_text("x,y\n1,2\n")
    b.write_bytes(b"\x89PNG")
    store.write_manifest(tmp_path, [a, b])
    assert store.verify_manifest(tmp_path) == ["a.csv", "sub/b.png"]
    done = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path, capture_output=True)
    assert done.returncode == 0  # the standard tool reads it too
    a.write_text("x,y\n1,3\n")
    with pytest.raises(CorruptArtefact, match="a.csv"):
        store.verify_listed(a)


def test_manifest_path_is_given_as_its_directory_was(tmp_path, monkeypatch):
    """`noisydeq spectrum` printed 'wrote runs/.../spectrum.csv' then 'wrote
    /abs/path/runs/.../SHA256SUMS': the manifest's path came back resolved."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.csv").write_text("x\n")
    got = store.write_manifest("out", ["out/a.csv"])
    assert got == Path("out") / "SHA256SUMS" and got.is_file()
    assert store.write_manifest(tmp_path / "out", ["out/a.csv"]) == tmp_path / "out" / "SHA256SUMS"


def test_a_second_writer_waits_for_the_lock(tmp_path, capsys):
    """A process holding a directory's lock makes another wait (one line), and the OS drops
    the lock when its holder dies — kill -9 included."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from noisydeq.store import DirLock; "
         f"l = DirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    done = threading.Event()

    def take() -> None:
        with store.DirLock(tmp_path, "--out"):
            done.set()

    t = threading.Thread(target=take)
    t.start()
    assert not done.wait(0.5)  # waiting
    holder.kill()
    holder.wait()
    t.join(timeout=30)
    assert done.is_set()
    assert "another noisydeq process is writing --out" in capsys.readouterr().err


def test_text_reader_refuses_binary_and_huge_files(tmp_path):
    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    (tmp_path / "nul").write_text("a = 1\x00")
    for name, match in (("bin", "not UTF-8"), ("nul", "binary"), ("none", "not found")):
        with pytest.raises(NoisyDEQError, match=match):
            store.read_text(tmp_path / name, "preset")
    with pytest.raises(NoisyDEQError, match="MiB"):
        store.read_text(tmp_path / "bin", "preset", limit=1)


@pytest.mark.skipif(not os.path.isdir("/sys"), reason="needs Linux's /sys")
def test_check_out_dir_tries_writing_instead_of_trusting_os_access(tmp_path):
    """/sys refuses new entries even to root, whom os.access always answers yes; a writable
    --out (existing or not) is accepted and nothing of the probe stays behind."""
    with pytest.raises(NoisyDEQError, match=r"--out /sys/noisydeq-out: cannot write in /sys"):
        store.check_out_dir("/sys/noisydeq-out")
    with pytest.raises(NoisyDEQError, match=r"--out /sys/a/b: cannot write in /sys \("):
        store.check_out_dir("/sys/a/b")
    before = tmp_path.stat().st_mtime_ns
    store.check_out_dir(tmp_path / "new" / "deeper")
    store.check_out_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert tmp_path.stat().st_mtime_ns == before  # an unnamed file: the directory unchanged


@pytest.mark.skipif(not os.path.isdir("/sys"), reason="needs Linux's /sys")
def test_check_out_dir_without_unnamed_files_tries_a_directory(tmp_path, monkeypatch):
    """Where there is no O_TMPFILE the probe is a named directory, removed at once."""
    monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    with pytest.raises(NoisyDEQError, match=r"--out /sys/x: cannot write in /sys \("):
        store.check_out_dir("/sys/x")
    store.check_out_dir(tmp_path / "new")
    store.check_out_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []
