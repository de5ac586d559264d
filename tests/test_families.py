"""families: depth-matched DEQ/FFW pairs, trained once, reused from the hash-keyed cache."""

import math

import pytest
import torch

from noisydeq.config import FamilySpec, SweepSpec, build
from noisydeq.errors import NoisyDEQError
from noisydeq.families import cache_root, family_spec_for_sweep, train_family
from noisydeq.models import matched_width


def _spec(**kw):
    base = {"depths": [1, 3], "train": {"epochs": 1, "max_train_samples": 128}}
    return build(FamilySpec, {**base, **kw})


def test_family_is_matched_trained_then_cached(tmp_path, digits):
    spec = _spec()
    lines = []
    first = train_family(spec, digits, cache_dir=tmp_path, log=lines.append)
    assert [(m.kind, m.depth) for m in first.members] == [
        ("deq", 1), ("ffw", 1), ("deq", 3), ("ffw", 3)]
    assert not any(m.cached for m in first.members)
    for depth in (1, 3):
        deq, ffw = first.get("deq", depth), first.get("ffw", depth)
        assert deq.width == matched_width(depth, 128) and ffw.width == 128
        # same hidden-weight budget (App. E.1), identical input projection and head shapes
        h_deq, h_ffw = deq.model.hidden_weight_count(), ffw.model.hidden_weight_count()
        assert abs(h_deq - h_ffw) / h_ffw < 0.01
        assert deq.model.head.out_features == ffw.model.head.out_features == 10
        assert deq.result.test_metric > 0.1

    second = train_family(spec, digits, cache_dir=tmp_path, log=lines.append)
    assert all(m.cached for m in second.members) and second.trained_seconds == 0
    for a, b in zip(first.members, second.members, strict=True):
        assert a.key == b.key and a.result.test_metric == pytest.approx(b.result.test_metric)
        for k, v in a.model.state_dict().items():
            assert torch.equal(b.model.state_dict()[k], v)
    assert sum("cached" in line for line in lines) == 4
    entries = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert len(entries) == 4

    # anything that determines the weights makes a new entry: seed, training noise, epochs
    train_family(_spec(depths=[1], kinds=["ffw"], seed=1), digits, cache_dir=tmp_path)
    train_family(_spec(depths=[1], kinds=["ffw"], train_snr_db=10), digits, cache_dir=tmp_path)
    train_family(_spec(depths=[1], kinds=["ffw"], train={"epochs": 2, "max_train_samples": 128}),
                 digits, cache_dir=tmp_path)
    assert len(list((tmp_path / "models").iterdir())) == 7


def test_cache_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    assert cache_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("NOISYDEQ_CACHE")
    assert "noisydeq" in str(cache_root())


def test_family_spec_validation_and_sweep_mapping():
    with pytest.raises(NoisyDEQError, match="depth '0' is not a positive integer"):
        build(FamilySpec, {"depths": "1,0"})
    with pytest.raises(NoisyDEQError, match="did you mean 'depths'"):
        build(FamilySpec, {"depth": [1]})
    sweep = build(SweepSpec, {"depths": "1,5", "epochs": 2, "train_site": "state"})
    fam = family_spec_for_sweep(sweep, seed=3, train_snr_db=0.0)
    assert fam.depths == [1, 5] and fam.seed == 3
    ts = fam.train_spec("deq")
    assert ts.epochs == 2 and ts.noise.site == "state" and ts.noise.snr_db == 0.0
    assert ts.solver is not None and fam.train_spec("ffw").solver is None
    clean = family_spec_for_sweep(sweep, seed=0, train_snr_db=math.inf).train_spec("ffw")
    assert not clean.noise.active


def test_member_matrices_are_the_deployed_device_layers(digits):
    """The sizes the memory estimate uses without building a member: the (n_out, n_in) of
    the layers a device deploys, and the built member's parameter count."""
    from noisydeq.families import build_member, member_matrices, member_size, member_spec
    from noisydeq.hardware import get_device
    from noisydeq.hardware.controls import device_layers

    fspec = _spec(hidden=48)
    for kind in fspec.kinds:
        for depth in fspec.depths:
            model = build_member(member_spec(fspec, digits, kind, depth), 0)
            width, matrices = member_matrices(kind, depth, 48, digits.in_features,
                                              digits.out_features)
            layers = device_layers(get_device("rram").deploy(model))
            assert sorted((layer.n_out, layer.n_in) for layer in layers.values()) == sorted(
                matrices)
            assert member_size(kind, depth, 48, digits.in_features, digits.out_features) == (
                width, sum(p.numel() for p in model.parameters()))


def test_sweep_memory_counts_the_chips_held_for_the_chip_cache(monkeypatch, digits):
    """An rram sweep's estimate adds the chips its layers keep for the chip cache: per layer
    and finite level one W_t in its (W_prog, W_t) pair (small layers), at most 64 MiB of W_t
    a layer; refused in one line when they are what does not fit."""
    from noisydeq import limits
    from noisydeq.families import check_sweep_families, sweep_memory
    from noisydeq.hardware.chip_store import held_bytes

    monkeypatch.delenv("NOISYDEQ_CHIP_CACHE", raising=False)
    kw = {"depths": [1], "hidden": 64, "snr_db": "0:30"}  # DEQ and FFW: the same matrices

    def need(**more):
        return sweep_memory(build(SweepSpec, {**kw, **more}, where="sweep"), digits)

    per_level = sum(2 * 4 * o * i for o, i in [(64, 64), (64, 64), (10, 64)])  # U, W, head
    assert need(device="rram") - need(device="snr") == 31 * per_level
    assert need(device="rram", noise_site="signal") - need(device="snr", noise_site="signal") \
        == per_level  # the native knob's chip alone
    assert need(device="rram", snr_db="0,10,inf") - need(device="snr", snr_db="0,10,inf") \
        == 2 * per_level
    # the cap: 64 MiB of W_t per layer; a large layer keeps W_t alone
    mib = 2**20
    assert held_bytes([(2048, 2048)], 31) == 4 * 2 * 16 * mib  # 4 chips of 16 MiB, in pairs
    assert held_bytes([(4096, 4096)], 31) == 64 * mib  # one chip of 64 MiB, no pair
    assert held_bytes([(4097, 4096)], 31) == 0  # more than 64 MiB: never kept
    monkeypatch.setenv("NOISYDEQ_CHIP_CACHE", "off")
    assert need(device="rram") == need(device="snr")
    monkeypatch.delenv("NOISYDEQ_CHIP_CACHE")
    have = need(device="snr") + 31 * per_level // 2
    monkeypatch.setattr(limits, "memory_bytes", lambda torch_device="cpu": have)
    check_sweep_families(build(SweepSpec, {**kw, "device": "snr"}, where="sweep"), digits)
    with pytest.raises(NoisyDEQError, match="sweep: its largest model .* needs about"):
        check_sweep_families(build(SweepSpec, {**kw, "device": "rram"}, where="sweep"), digits)
