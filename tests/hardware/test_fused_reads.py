"""Fused device reads against plain references: aihwkit's own torch-tile MVM (rram, noise
free), the sequential bound-management rule with our read noise (rram), and the photonic
physics written out in currents. Same inputs and noise draws; the fused paths may differ
only where float rounding lands on a converter step boundary (one step, rarely)."""

from __future__ import annotations

import math

import pytest
import torch

from noisydeq.hardware.photonic import PhotonicDevice, noise_variance
from noisydeq.hardware.presets import PhotonicSpec, RRAMSpec
from noisydeq.hardware.rram_io import io_forward, n_states
from noisydeq.noise import NoiseStream


def _inputs(n_in: int, rows: int, seed: int) -> torch.Tensor:
    """Uniform, Gaussian with outliers, sparse, all-zero, and spiked vectors (one entry 1,
    the rest within ±a, a from 0.02 to 1: output ranges spread over all reductions)."""
    g = torch.Generator().manual_seed(seed)
    spiked = (torch.rand(4 * rows, n_in, generator=g) * 2 - 1) * torch.logspace(
        -1.7, 0, 4 * rows
    ).unsqueeze(1)
    spiked[:, 0] = 1.0
    parts = [
        torch.rand(rows, n_in, generator=g) * 2 - 1,
        torch.randn(rows, n_in, generator=g) * 3,
        torch.rand(rows, n_in, generator=g) * (torch.rand(rows, n_in, generator=g) < 0.05),
        torch.zeros(2, n_in),
        spiked,
    ]
    return torch.cat(parts)


def _weights(n_out: int, n_in: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n_out, n_in, generator=g) * 2 - 1
    return w / w.abs().max()


def _compare(ours: torch.Tensor, ref: torch.Tensor, step: torch.Tensor) -> None:
    """Equal except a few outputs one converter step (``step`` per row) apart."""
    diff = (ours - ref).abs()
    off = diff > 1e-5 * (1 + ref.abs())
    assert float(off.float().mean()) <= 2e-3, float(off.float().mean())
    assert bool((diff <= step * 1.001 + 1e-6).all())


RRAM_CASES = [
    {},  # aihwkit IOParameters defaults (7/9 bits, bounds 1/12, iterative, max_bm_res 0.25)
    {"out_bound": 3.0},  # heavy bound management
    {"inp_bound": 0.5},  # DAC clipping
    {"dac_bits": 4, "adc_bits": 5, "max_bm_res": 1.0},
    {"dac_bits": 4, "max_bm_res": 2.0},  # coarse DAC: large rounding differences between r
    {"bound_management": "none"},
]


@pytest.mark.parametrize("case", RRAM_CASES)
def test_rram_noise_free_read_equals_aihwkit_analog_mvm(case: dict) -> None:
    """Our read with out_noise 0 vs aihwkit AnalogMVM.matmul, one vector at a time (aihwkit
    decides bound management per batch; one-vector batches make it per vector, as ours)."""
    from aihwkit.simulator.parameters.enums import BoundManagementType, NoiseManagementType
    from aihwkit.simulator.parameters.io import IOParameters
    from aihwkit.simulator.tiles.analog_mvm import AnalogMVM

    spec = RRAMSpec(**case)
    io = IOParameters(
        inp_bound=spec.inp_bound,
        inp_res=1.0 / n_states(spec.dac_bits),
        out_bound=spec.out_bound,
        out_res=1.0 / n_states(spec.adc_bits),
        out_noise=0.0,
        noise_management=NoiseManagementType.ABS_MAX,
        bound_management=BoundManagementType.ITERATIVE
        if spec.bound_management == "iterative"
        else BoundManagementType.NONE,
        max_bm_res=spec.max_bm_res,
    )
    w = _weights(96, 160, 1)
    x = _inputs(160, 24, 2)
    with torch.no_grad():
        rows = [AnalogMVM.matmul(w, x[i : i + 1], io, is_test=True) for i in range(len(x))]
        ref = torch.cat(rows)
        ours = io_forward(spec, x, w, 0.0, torch.zeros(len(x), 96))
    nm = x.abs().amax(1, keepdim=True)
    nm = torch.where(nm > 0, nm, 1.0)
    dy = 2 * spec.out_bound / n_states(spec.adc_bits)
    _compare(ours, ref, dy * nm * 16)  # one ADC step at the largest reduction


def _sequential(spec: RRAMSpec, x, w, std: float, noise) -> torch.Tensor:
    """The bound-management rule written out: each vector is read at r = 1, 2, 4, … (same
    read noise draw) until its output does not clip or r passes the limit."""
    dq = 2 * spec.inp_bound / n_states(spec.dac_bits)
    dy = 2 * spec.out_bound / n_states(spec.adc_bits)
    limit = min(1000.0, spec.max_bm_res / dq) if spec.bound_management == "iterative" else 0.0
    out = torch.empty(x.shape[0], w.shape[0])
    for i in range(x.shape[0]):
        nm = float(x[i].abs().max()) or 1.0
        r = 1.0
        while True:
            xq = (torch.round(x[i] / nm / r / dq) * dq).clamp(-spec.inp_bound, spec.inp_bound)
            y = torch.round((w.double() @ xq.double() + std * noise[i].double()) / dy) * dy
            clips = bool((y.abs() > spec.out_bound).any())
            if not clips or r > limit:
                out[i] = (y.clamp(-spec.out_bound, spec.out_bound) * nm * r).float()
                break
            r *= 2
    return out


@pytest.mark.parametrize("case", RRAM_CASES[:5])
@pytest.mark.parametrize("std", [0.06, 0.6])
def test_rram_fused_read_equals_sequential_rule_with_read_noise(case: dict, std: float) -> None:
    spec = RRAMSpec(**case)
    w = _weights(80, 200, 3)
    x = _inputs(200, 20, 4)
    noise = torch.randn(len(x), 80, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = io_forward(spec, x, w, std, noise)
    ref = _sequential(spec, x, w, std, noise)
    nm = x.abs().amax(1, keepdim=True)
    nm = torch.where(nm > 0, nm, 1.0)
    _compare(ours, ref, 2 * spec.out_bound / n_states(spec.adc_bits) * nm * 16)


def _photonic_reference(layer, x: torch.Tensor, power: float, noise: torch.Tensor):
    """The photonic model of the module docstring in currents (A), step by step, in float64
    (exact zeros sit on a DAC decision boundary: they take the level above, +½ LSB)."""
    sp = layer.spec
    t, t_abs, t_mean = layer.transmissions()
    wmax = layer.weight.detach().abs().max()
    nm = x.abs().amax(-1, keepdim=True)
    nm = torch.where(nm > 0, nm, 1.0)

    def quantise(v, full, bits):
        step = 2.0 / (2**bits - 1)
        u = (v / full).clamp(-1.0, 1.0)
        return (torch.round((u + 1.0) / step) * step - 1.0) * full

    xq = quantise(x.double() / nm.double(), 1.0, sp.dac_bits)
    rp = sp.responsivity_a_per_w * power
    i_sig = rp * (xq @ t.double().T)
    if sp.shot_noise == "exact":
        i_tot = rp * (xq.abs() @ t_abs.double().T)
    else:
        i_tot = rp * xq.abs().sum(-1, keepdim=True) * t_mean.double()
    var = noise_variance(0.5 * (i_tot + i_sig), 0.5 * (i_tot - i_sig), sp)
    current = i_sig + noise.double() * var.sqrt()
    current = quantise(current, sp.adc_full_scale * rp * math.sqrt(layer.n_in), sp.adc_bits)
    return (current / rp * nm.double() * float(wmax)).float()


@pytest.mark.parametrize("shot", ["fast", "exact"])
@pytest.mark.parametrize("power", [1e-8, 1e-5, 1e-2])
def test_photonic_fused_read_equals_physics_reference(shot: str, power: float) -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(150, 70, bias=False)
    spec = PhotonicSpec(shot_noise=shot, weight_error_std=0.02, rin_db_per_hz=-140.0)
    layer = PhotonicDevice(spec, chip_seed=1).deploy(lin)
    x = _inputs(150, 30, 6)
    with torch.no_grad():
        ours = layer._mvm(x, (spec.weight_error_std, power), NoiseStream.from_seed(9))
    noise = NoiseStream.from_seed(9).randn((len(x), 70), torch.float32, x.device)
    ref = _photonic_reference(layer, x, power, noise)
    nm = x.abs().amax(1, keepdim=True)
    nm = torch.where(nm > 0, nm, 1.0)
    adc_step = 2 * spec.adc_full_scale * math.sqrt(150) / (2**spec.adc_bits - 1)
    _compare(ours, ref, adc_step * nm * lin.weight.detach().abs().max())


def test_photonic_per_sample_power_equals_separate_calls() -> None:
    torch.manual_seed(1)
    layer = PhotonicDevice(PhotonicSpec()).deploy(torch.nn.Linear(40, 30, bias=False))
    x = torch.rand(12, 40) * 2 - 1
    powers = torch.tensor([[0.0, 1e-7]] * 5 + [[0.0, 1e-4]] * 7, dtype=torch.float64)
    with torch.no_grad():
        both = layer._mvm(x, powers, NoiseStream.from_blocks([1, 2], [5, 7]))
        a = layer._mvm(x[:5], (0.0, 1e-7), NoiseStream.from_seed(1))
        b = layer._mvm(x[5:], (0.0, 1e-4), NoiseStream.from_seed(2))
    assert torch.allclose(both, torch.cat([a, b]), rtol=1e-5, atol=1e-6)


def test_rram_skip_test_is_sound_when_dac_rounding_conspires() -> None:
    """Vectors whose DAC rounding errors all push the reduction-1 read down by the full
    bound (W = ones, every x̂_j/(2dq) just above a half-integer): their pass at r = 2 is
    about half the clipping level, yet the pass at r = 1 does not clip. No such vector may
    be skipped as 'surely clipping' at r = 1."""
    from noisydeq.hardware.rram_io import Tile

    spec = RRAMSpec()
    n = 64
    dq = 2 * spec.inp_bound / n_states(spec.dac_bits)
    rows = []
    for total in range(284, 316):  # Σk: 2·v(2) > clip level ≥ v(1) (module docstring)
        k = torch.full((n - 1,), total // (n - 1))
        k[: total % (n - 1)] += 1
        rows.append(torch.cat([torch.ones(1), (k + 0.51) * 2 * dq]))
    x = torch.stack(rows)
    w = torch.ones(1, n)
    tile = Tile(spec, x, w, 0.0, torch.zeros(len(x), 1), 1.0)
    _, peak_1, _ = tile.run(None, 1.0)
    out, peak, where = tile.run(None, 2.0, locate=True)
    assert bool((peak_1 <= tile.k_max).all()) and bool((2 * peak > tile.k_clip).all())
    everything = torch.arange(len(x))
    rest, _ = tile.sure_clip(everything, peak, where, 2, 1, l1_max=float(n))
    assert torch.equal(rest.sort().values, everything)
    assert torch.equal(io_forward(spec, x, w, 0.0, torch.zeros(len(x), 1)), tile.run(None, 1.0)[0])


@pytest.mark.parametrize("case", [{}, {"out_bound": 3.0}, {"adc_bits": 24}])
def test_rram_read_of_a_row_subset_equals_the_full_batch_bit_for_bit(case: dict) -> None:
    """Any subset of the vectors (a solve's active samples, 1 to 40 of them) reads exactly
    what the full batch gives those vectors: GEMM rounding must not depend on the count
    (a 24-bit ADC resolves the last float32 bit, so any rounding difference shows)."""
    spec = RRAMSpec(**case)
    w = _weights(96, 120, 7)
    x = _inputs(120, 256, 8)
    noise = torch.randn(len(x), 96, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(10)
    with torch.no_grad():
        full = io_forward(spec, x, w, 0.3, noise)
        for m in (1, 2, 3, 5, 7, 9, 11, 13, 40):
            rows = torch.randperm(len(x), generator=g)[:m].sort().values
            sub = io_forward(spec, x[rows], w, 0.3, noise[rows])
            assert torch.equal(sub, full[rows]), m


@pytest.mark.parametrize("case", [*RRAM_CASES, {"adc_bits": 24}])
@pytest.mark.parametrize("std", [0.06, 0.6, 2.5])
def test_rram_read_does_not_depend_on_where_bound_management_starts(case: dict,
                                                                   std: float) -> None:
    """A chip's next read starts where its last one ended for the median vector
    (``RowStats.start``); every start, 1 to beyond the last reduction, gives every vector
    the same output bit for bit (the first reduction at which it does not clip)."""
    from noisydeq.hardware.rram_io import RowStats, bm_limit

    spec = RRAMSpec(**case)
    w = _weights(96, 120, 17)
    x = _inputs(120, 64, 18)
    noise = torch.randn(len(x), 96, generator=torch.Generator().manual_seed(19))
    with torch.no_grad():
        ref = io_forward(spec, x, w, std, noise, stats=RowStats(w))
        r = 1
        while r <= 2 * bm_limit(spec):
            stats = RowStats(w)
            stats.start = r
            assert torch.equal(io_forward(spec, x, w, std, noise, stats=stats), ref), r
            if bm_limit(spec) > 1:  # without bound management there is one pass, no start
                assert stats.start is not None and 1 <= stats.start <= bm_limit(spec)
            r *= 2


@pytest.mark.parametrize("case", [*RRAM_CASES, {"adc_bits": 24}])
def test_rram_read_with_per_row_noise_equals_each_level_read_alone(case: dict) -> None:
    """One read of several levels' blocks with one read-noise std per row (a chip's levels
    in a batched sweep, ``out_std`` a tensor) gives every block what reading it alone with
    its scalar std gives, bit for bit (a 24-bit ADC resolves the last float32 bit); blocks
    of 1 to 40 rows and a zero std included."""
    spec = RRAMSpec(**case)
    w = _weights(96, 120, 13)
    x = _inputs(120, 64, 14)
    noise = torch.randn(len(x), 96, generator=torch.Generator().manual_seed(15))
    g = torch.Generator().manual_seed(16)
    stds = [0.0, 0.004, 0.06, 0.3, 0.6, 2.5, 7.0]
    with torch.no_grad():
        for sizes in ([len(x) // 7] * 6 + [len(x) - 6 * (len(x) // 7)],
                      [1, 3, 40, 7, 64, 11, len(x) - 126]):
            order = torch.randperm(len(stds), generator=g).tolist()
            per = [stds[i] for i in order]
            bounds = [0]
            for n in sizes:
                bounds.append(bounds[-1] + n)
            row_std = torch.tensor(per, dtype=torch.float64).repeat_interleave(
                torch.tensor(sizes))
            merged = io_forward(spec, x, w, row_std, noise, gain=1.7)
            for (a, b), std in zip(zip(bounds[:-1], bounds[1:], strict=True), per,
                                   strict=True):
                alone = io_forward(spec, x[a:b], w, std, noise[a:b], gain=1.7)
                assert torch.equal(merged[a:b], alone), (std, b - a)


@pytest.mark.parametrize("case", RRAM_CASES)
@pytest.mark.parametrize("std", [0.06, 0.6, 2.5])
def test_rram_identity_read_equals_the_general_read(case: dict, std: float) -> None:
    """The drift-compensation read-out of the unit vectors, without its matmul, is the
    general read (up to the GEMM's rounding order: a code may sit one step apart) — or
    declines (None) where bound management would act."""
    from noisydeq.hardware.rram_io import identity_read

    spec = RRAMSpec(**case)
    w = _weights(70, 90, 11)
    noise = torch.randn(90, 70, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        fast = identity_read(spec, w, std, noise)
        ref = io_forward(spec, torch.eye(90), w, std, noise)
    if fast is None:  # only where some unit vector's output clips
        dy = 2 * spec.out_bound / n_states(spec.adc_bits)
        codes = torch.round((w.T * round(1 / (2 * spec.inp_bound / n_states(spec.dac_bits)))
                             * (2 * spec.inp_bound / n_states(spec.dac_bits)) + std * noise) / dy)
        assert bool((codes.abs() > spec.out_bound / dy).any()) or spec.inp_bound < 1.0
    else:
        step = 2 * spec.out_bound / n_states(spec.adc_bits)
        diff = (fast - ref).abs()
        assert float(diff.max()) <= step * 1.0001
        assert int((diff > 0).sum()) <= 1e-3 * diff.numel()
        assert float(fast.abs().mean()) == pytest.approx(float(ref.abs().mean()), rel=1e-5)


@pytest.mark.parametrize("case", RRAM_CASES)
@pytest.mark.parametrize("std", [0.06, 0.6, 2.5])
@pytest.mark.parametrize("shape", [(70, 90), (10, 128), (33, 7)])
def test_rram_drift_readouts_stacked_equal_single_reads_bit_for_bit(case, std, shape) -> None:
    """The drift compensation's two read-outs computed as one stack (and the start rule
    settled by max|W| where it can) give each read-out's values and mean exactly."""
    from noisydeq.hardware.rram_io import identity_magnitudes, identity_read, rms

    spec = RRAMSpec(**case)
    n_out, n_in = shape
    noise = torch.randn(n_in, n_out, generator=torch.Generator().manual_seed(12))
    for scale in (1.0, 3.0, 30.0):  # W beyond max 1 (programming noise): the start rule
        ws = [_weights(n_out, n_in, 11) * scale, _weights(n_out, n_in, 13)]
        with torch.no_grad():
            fast = identity_magnitudes(spec, ws, std, noise, [None, rms(ws[1])],
                                       [float(ws[0].abs().max()), None])
            for w, got in zip(ws, fast, strict=True):
                ref = identity_read(spec, w, std, noise, magnitude=True)
                assert (got is None) == (ref is None)
                if ref is not None:
                    assert torch.equal(got, ref)
                    assert torch.equal(got.mean(), ref.mean())
