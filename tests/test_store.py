"""store: atomic writes, safetensors checkpoints with config hash, pickle-free optimizer state."""

import json
import math
import os

import pytest
import torch
from torch import nn

from noisydeq import store
from noisydeq.errors import NoisyDEQError


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
