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


def test_cached_member_is_the_initial_model_and_the_entry_s_weights(tmp_path, digits):
    """families.cached_member: a member's initial model and train spec (what train_family
    trains), its cache entry (the one train_family writes) and the weights digest of the
    finished model it holds (None before training), without training or loading it;
    cached_weights is the same without the model."""
    from noisydeq.families import cached_member, cached_weights
    from noisydeq.store import init_hash

    spec = _spec(depths=[1], kinds=["ffw"])
    model, tspec, entry, weights = cached_member(spec, digits, "ffw", 1, cache_dir=tmp_path)
    assert weights is None and tspec == spec.train_spec("ffw")
    assert cached_weights(spec, digits, "ffw", 1, cache_dir=tmp_path) == (entry, None)
    member = train_family(spec, digits, cache_dir=tmp_path).get("ffw", 1)
    assert member.key == entry and not member.cached
    again, _, entry2, weights = cached_member(spec, digits, "ffw", 1, cache_dir=tmp_path)
    assert (entry2, weights) == (entry, init_hash(member.model))
    assert cached_weights(spec, digits, "ffw", 1, cache_dir=tmp_path) == (entry, weights)
    # the initial model: the architecture trained, the weights before training
    assert init_hash(again) == init_hash(model) != weights
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in member.model.state_dict().items()}


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


def _chip_bytes(shapes, scales, shelf_on):
    """Bytes of chips held per deployed model, written out from rram.py / chip_store.py's
    rules: a chip holds a (W_prog, W_t) float32 pair while 8 pairs fit 256 MiB (else W_t
    alone); the in-memory LRU keeps max(8, 256 MiB // that) chips, the on-disk shelf 64 MiB
    of W_t more; a layer programs at most ``scales`` chips."""
    mib, total = 2**20, 0
    for n_out, n_in in shapes:
        w = 4 * n_out * n_in
        pair = 2 * w if 16 * w <= 256 * mib else w
        kept = max(8, 256 * mib // pair) + (64 * mib // w if shelf_on else 0)
        total += min(scales, kept) * pair
    return total


def test_sweep_memory_counts_the_chips_the_rram_layers_hold(monkeypatch, digits):
    """An rram sweep's estimate adds the chips its layers hold: the in-memory chip cache
    (also with the on-disk cache off) and the chips kept for the on-disk one, for every
    scale a level's knob search may program (the quarter-decade grid of 1e-4..1e3, 13 per
    level, the reach check's 2); refused in one line when they are what does not fit."""
    from noisydeq import limits
    from noisydeq.families import check_sweep_families, held_chip_bytes, sweep_memory

    monkeypatch.delenv("NOISYDEQ_CHIP_CACHE", raising=False)
    kw = {"depths": [1], "hidden": 64, "snr_db": "0:30"}  # DEQ and FFW: the same matrices
    shapes = [(64, 64), (64, 64), (10, 64)]  # U, W, head

    def need(**more):
        return sweep_memory(build(SweepSpec, {**kw, **more}, where="sweep"), digits)

    scales = 30 + 31 * 13 + 2
    assert need(device="rram") - need(device="snr") == _chip_bytes(shapes, scales, True)
    assert need(device="rram", noise_site="signal") - need(device="snr", noise_site="signal") \
        == _chip_bytes(shapes, 1, True)  # the native knob's chip alone
    assert need(device="rram", snr_db="0,10,inf") - need(device="snr", snr_db="0,10,inf") \
        == _chip_bytes(shapes, 30 + 2 * 13 + 2, True)
    # the caps: large layers keep few chips (a pair while 8 fit 256 MiB, else W_t alone)
    mib = 2**20
    for shape in [(2048, 2048), (2049, 2048), (4096, 4096), (8192, 4096), (100, 30)]:
        assert held_chip_bytes([shape], scales) == _chip_bytes([shape], scales, True)
    assert held_chip_bytes([(2048, 2048)], scales) == (8 + 4) * 32 * mib  # LRU 8 + shelf 4
    assert held_chip_bytes([(8192, 4096)], scales) == (8 + 0) * 128 * mib  # shelf: none fits
    monkeypatch.setenv("NOISYDEQ_CHIP_CACHE", "off")  # the in-memory cache stays
    assert need(device="rram") - need(device="snr") == _chip_bytes(shapes, scales, False)
    assert held_chip_bytes([(2048, 2048)], scales) == 8 * 32 * mib
    monkeypatch.delenv("NOISYDEQ_CHIP_CACHE")
    have = need(device="snr") + _chip_bytes(shapes, scales, True) // 2
    monkeypatch.setattr(limits, "memory_bytes", lambda torch_device="cpu": have)
    check_sweep_families(build(SweepSpec, {**kw, "device": "snr"}, where="sweep"), digits)
    with pytest.raises(NoisyDEQError, match="sweep: its largest model .* needs about"):
        check_sweep_families(build(SweepSpec, {**kw, "device": "rram"}, where="sweep"), digits)


def test_sweep_memory_leaves_out_the_digital_layers(monkeypatch, digits):
    """Layers kept digital hold no chips: the estimate counts the layers the device deploys
    (read off a deployed member)."""
    from noisydeq.families import build_member, member_spec, sweep_memory
    from noisydeq.hardware import get_device
    from noisydeq.hardware.controls import device_layers

    monkeypatch.delenv("NOISYDEQ_CHIP_CACHE", raising=False)
    kw = {"depths": [2], "hidden": 64, "snr_db": "0,10", "kinds": ["ffw"]}
    scales = 30 + 2 * 13 + 2
    for keep in ([], ["head"], ["proj.U", "head"]):
        spec = build(SweepSpec, {**kw, "device": "rram", "digital_layers": keep}, where="sweep")
        model = build_member(member_spec(family_spec_for_sweep(spec, 0, math.inf), digits,
                                         "ffw", 2), 0)
        deployed = get_device("rram").deploy(model, digital_layers=keep)
        shapes = [(layer.n_out, layer.n_in) for layer in device_layers(deployed).values()]
        assert len(shapes) == 4 - len(keep)
        snr = build(SweepSpec, {**kw, "device": "snr"}, where="sweep")
        assert sweep_memory(spec, digits) - sweep_memory(snr, digits) == \
            _chip_bytes(shapes, scales, True)


def test_sweep_memory_counts_every_evaluation_process(monkeypatch, digits):
    """With --jobs N every process holds the task's tensors and every family's weights and
    evaluates a member (the driver alone trains); refused in one line naming the processes
    when they are what does not fit."""
    from noisydeq import limits
    from noisydeq.families import build_member, check_sweep_families, member_spec, sweep_memory

    kw = {"depths": [1, 3], "hidden": 32, "snr_db": "0,10", "seeds": [0, 1], "device": "snr",
          "max_test_samples": 100}
    spec = build(SweepSpec, kw, where="sweep")
    fspec = family_spec_for_sweep(spec, 0, math.inf)
    models = [build_member(member_spec(fspec, digits, k, d), 0)
              for d in spec.depths for k in spec.kinds]
    params = [sum(p.numel() for p in m.parameters()) for m in models]
    data = sum(t.numel() * t.element_size()
               for t in (digits.x_train, digits.y_train, digits.x_test, digits.y_test))
    held = data + 4 * 2 * sum(params)  # two seeds' families, float32
    batch = max(fspec.train_spec(k).batch_size for k in spec.kinds)
    big = max(range(len(models)), key=lambda i: params[i])
    width = max(m.shape[0] for m in models[big].parameters() if m.dim() == 2)
    rows = 2 * 100  # two levels stacked over 100 test inputs

    def peak(r):
        return 4 * (8 * params[big] + 32 * r * width)

    for jobs in (1, 2, 4):
        assert sweep_memory(spec, digits, batch, jobs) == \
            jobs * held + peak(max(rows, batch)) + (jobs - 1) * peak(rows)
    have = sweep_memory(spec, digits, batch, 1) + held // 2
    monkeypatch.setattr(limits, "memory_bytes", lambda torch_device="cpu": have)
    check_sweep_families(spec, digits, 1)
    with pytest.raises(NoisyDEQError) as err:
        check_sweep_families(spec, digits, 2)
    text = str(err.value)
    assert "\n" not in text and "in each of 2 processes needs about" in text
    assert "lower --jobs" in text


def test_run_sweep_checks_memory_with_the_processes_it_will_use(monkeypatch, tmp_path, digits):
    """The up-front check is given the evaluation processes the sweep will start: --jobs,
    at most one per (model, chip) pair; nothing is written before it."""
    from noisydeq import families
    from noisydeq.sweep import run_sweep

    seen = []

    def stop(spec, task, jobs=1):
        seen.append(jobs)
        raise NoisyDEQError("stop")

    monkeypatch.setattr(families, "check_sweep_families", stop)
    spec = build(SweepSpec, {"depths": [1, 3], "chips": 2, "snr_db": "0,10"}, where="sweep")
    for jobs in (1, 3, 64):  # 2 kinds × 2 depths × 2 chips = 8 pairs
        with pytest.raises(NoisyDEQError, match="stop"):
            run_sweep(spec, tmp_path / "run", task=digits, jobs=jobs, progress=False)
    assert seen == [1, 3, 8] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("fields, families", [
    ({}, 1),
    ({"seeds": [0, 1, 2], "train_snr_db": [0, 10]}, 6),
    ({"seeds": [0, 1], "train_device": "none,rram", "train_device_snr_db": "0,10"}, 6),
])
def test_family_count_is_the_families_a_sweep_trains(fields, families) -> None:
    """SweepSpec.family_count (the memory check's and the job count's) = the families
    sweep_family_specs yields, counted by hand: seeds × training SNRs × (digital + each
    device SNR)."""
    from noisydeq.families import sweep_family_specs

    spec = build(SweepSpec, fields, where="sweep")
    assert spec.family_count() == families == sum(1 for _ in sweep_family_specs(spec))


def test_the_family_check_builds_each_member_once_and_the_estimate_is_unchanged(
        monkeypatch, digits):
    """With digital_layers, check_sweep_families builds the first family's members to check
    the layer names and hands them to the memory estimate (device_matrices built each one
    again); the estimate equals the one device_matrices makes from members it builds."""
    from noisydeq import families, limits

    spec = build(SweepSpec, {"depths": [1, 2], "hidden": 32, "snr_db": "0,10",
                             "train_snr_db": "inf,10", "device": "rram",
                             "digital_layers": ["head"]}, where="sweep")
    real, calls, seen = families.build_member, [], []

    def counted(mspec, seed):
        calls.append((mspec.kind, mspec.depth, seed))
        return real(mspec, seed)

    monkeypatch.setattr(families, "build_member", counted)
    monkeypatch.setattr(limits, "check_memory", lambda need, *a, **k: seen.append(need))
    families.check_sweep_families(spec, digits, 1)
    # seed 0's two training-SNR families, checked: 2 kinds x 2 depths each, built once
    assert sorted(calls) == sorted([(k, d, 0) for k in ("deq", "ffw") for d in (1, 2)] * 2)
    calls.clear()
    batch = max(next(families.sweep_family_specs(spec))[-1].train_spec(k).batch_size
                for k in spec.kinds)
    assert seen == [families.sweep_memory(spec, digits, batch, 1)]
    assert len(calls) == 4  # the estimate alone builds them
