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
