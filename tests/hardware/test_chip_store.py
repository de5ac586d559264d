"""Programmed RRAM chips on disk (noisydeq.hardware.chip_store): a chip read from the cache
gives the reads of a freshly programmed one, bit for bit; the key follows the weights, the
preset and the chip; a damaged entry is reported, programmed again and rewritten."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from noisydeq import hardware as hw
from noisydeq.hardware import chip_store
from noisydeq.hardware.rram_program import ChipDraw
from noisydeq.sweep import run_sweep
from tests.sweep_helpers import toy_models, toy_spec, toy_task

SCALES = (1.0, 0.37, 2.5, 1e-3)


@pytest.fixture
def programmings(monkeypatch):
    """Counts the chips programmed (ChipDraw.program calls)."""
    count = [0]
    original = ChipDraw.program

    def program(self, s):
        count[0] += 1
        return original(self, s)

    monkeypatch.setattr(ChipDraw, "program", program)
    return count


def _model(width: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(width, width), nn.Conv1d(1, 3, 5))


def _reads(deployed: nn.Module, x: torch.Tensor) -> list:
    """Every layer's chip (W_t, α) and its noisy read of ``x`` (a linear layer's rows, a
    conv layer's one-channel signals) at each scale of SCALES, from a fresh read stream."""
    out = []
    for name, layer in hw.device_layers(deployed).items():
        rows = x if layer.op == "linear" else x.unsqueeze(1)
        for s in SCALES:
            w_t, alpha = layer.chip(s)
            layer.stream = None
            out.append((name, s, w_t.clone(), alpha, layer.device_output(rows, (s, 0.5))))
    return out


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        x[:2] == y[:2] and all(torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v
                               for u, v in zip(x[2:], y[2:], strict=True))
        for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("width", [12, 130])
def test_a_chip_read_from_the_cache_reads_as_the_programmed_one(tmp_path, programmings, width):
    model = _model(width)
    device = hw.get_device("rram").new_chip(11)
    x = torch.randn(37, width, generator=torch.Generator().manual_seed(5))
    plain = _reads(device.deploy(model).eval(), x)  # no cache at all
    first = device.deploy(model).eval()
    cache = chip_store.attach(first, device, tmp_path)
    assert cache is not None and cache.attach() == 0
    fresh = _reads(first, x)
    assert cache.save()
    entries = list((tmp_path / "chips").glob("*.safetensors"))
    assert len(entries) == 1
    programmed = programmings[0]
    assert programmed > 0
    second = device.deploy(model).eval()
    again = chip_store.attach(second, device, tmp_path)
    loaded = _reads(second, x)
    assert programmings[0] == programmed  # nothing programmed: every chip came from disk
    assert not again.save()  # nothing new: not rewritten
    assert _same(fresh, plain) and _same(loaded, plain)


def test_the_key_follows_weights_preset_and_chip(tmp_path):
    model = _model(12)
    device = hw.get_device("rram").new_chip(3)

    def key(dev, m):
        return chip_store.ChipCache(dev.deploy(m), dev, tmp_path).key

    base = key(device, model)
    assert key(device, model) == base
    assert key(device.new_chip(4), model) != base  # another chip
    assert key(hw.get_device("rram-wan2022-1day").new_chip(3), model) != base  # another preset
    other = _model(12)
    with torch.no_grad():
        other[0].weight[0, 0] += 1e-3
    assert key(device, other) != base  # other weights
    # noise mode changes the knobs, not the programmed chips: the same entry
    assert key(device.with_mode("static"), model) == base


def test_layers_holding_their_programming_are_not_stored(tmp_path):
    device = hw.get_device("rram")
    deployed = device.deploy(_model(12))
    for layer in hw.device_layers(deployed).values():
        layer.hold_programming = True
    assert chip_store.attach(deployed, device, tmp_path) is None


def test_a_damaged_entry_is_reported_programmed_again_and_rewritten(
        tmp_path, programmings, capsys):
    model = _model(12)
    device = hw.get_device("rram").new_chip(2)
    x = torch.randn(9, 12, generator=torch.Generator().manual_seed(1))
    first = device.deploy(model).eval()
    cache = chip_store.attach(first, device, tmp_path)
    fresh = _reads(first, x)
    cache.save()
    (path,) = (tmp_path / "chips").glob("*.safetensors")
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0x10  # one bit of the last tensor's bytes
    path.write_bytes(bytes(blob))
    programmed = programmings[0]
    second = device.deploy(model).eval()
    again = chip_store.attach(second, device, tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "digest" in err[0]
    assert "programming the chips again" in err[0]
    assert _same(_reads(second, x), fresh)
    assert programmings[0] > programmed  # programmed, not read
    assert again.save()  # the entry is written again, whole
    assert chip_store.load_entry(path, again.key, again.layers) is not None
    path.write_bytes(b"not a safetensors file")
    third = device.deploy(model).eval()
    chip_store.attach(third, device, tmp_path)
    assert "is not a readable safetensors file" in capsys.readouterr().err


def test_an_entry_removed_between_its_check_and_its_read_is_a_miss(tmp_path, monkeypatch,
                                                                   capsys):
    """``noisydeq cache prune`` may unlink an entry after ``load_entry`` saw it: the chips
    are programmed again without a warning, as for an entry never written (a calibration
    entry's ``load_entry`` does the same)."""
    model = _model(12)
    device = hw.get_device("rram").new_chip(2)
    first = device.deploy(model).eval()
    cache = chip_store.attach(first, device, tmp_path)
    _reads(first, torch.randn(3, 12))
    assert cache.save()
    (path,) = (tmp_path / "chips").glob("*.safetensors")
    load = chip_store.store.load_tensors

    def pruned_first(p, *args, **kwargs):
        path.unlink()  # the prune's unlink lands between the check and the read
        return load(p, *args, **kwargs)

    monkeypatch.setattr(chip_store.store, "load_tensors", pruned_first)
    second = device.deploy(model).eval()
    again = chip_store.attach(second, device, tmp_path)
    assert capsys.readouterr().err == ""
    assert all(not layer.shelf.chips for layer in again.layers.values())


def test_off_switch(tmp_path, monkeypatch):
    monkeypatch.setenv(chip_store.ENV, "off")
    device = hw.get_device("rram")
    assert chip_store.attach(device.deploy(_model(12)), device, tmp_path) is None


SPEC = dict(device="rram", noise_site="device", snr_db="0,10,20,30,inf", chips=2, max_rows=100)


def _sweep(tmp_path, name):
    task = toy_task(n=40)
    return run_sweep(toy_spec(**SPEC), tmp_path / name, task=task, models=toy_models(task),
                     progress=False, plots=False)


def test_a_repeated_sweep_loads_its_chips_with_the_same_table(tmp_path, monkeypatch,
                                                              programmings):
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(chip_store.ENV, "off")
    plain = _sweep(tmp_path, "plain")
    monkeypatch.delenv(chip_store.ENV)
    first = _sweep(tmp_path, "a")
    entries = list((tmp_path / "cache" / "chips").glob("*.safetensors"))
    assert len(entries) == 8  # one per (model, chip): 4 models on 2 chips
    before = programmings[0]
    second = _sweep(tmp_path, "b")
    assert programmings[0] == before  # the warm sweep programmed no chip
    assert first.rows == plain.rows and second.rows == plain.rows
