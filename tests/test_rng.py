"""Counter-based random numbers (noisydeq.rng, NoiseStream): reference values, statistics
at 4σ, and every number a pure function of its address (sample, draw, element)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from noisydeq import rng
from noisydeq.noise import NoiseStream, row_subset

CPU = torch.device("cpu")
N_ROWS, N_COLS = 512, 512  # 2^18 numbers per statistical sample
Z4 = 4.0  # every statistical check is at 4 standard errors


def _splitmix64(seed: int, gamma: int, n: int) -> list[int]:
    """An independent, sequential SplitMix64 in Python integers (Steele et al. 2014)."""
    out, s = [], seed
    for _ in range(n):
        s = (s + gamma) % 2**64
        z = s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
        out.append(z ^ (z >> 31))
    return out


def _u64(t: torch.Tensor) -> list[int]:
    return [v % 2**64 for v in t.tolist()]


def test_splitmix64_reference_outputs():
    """Seed 0 with the golden gamma: the published first outputs of SplitMix64."""
    base = torch.zeros(1, dtype=torch.int64)
    gamma = torch.tensor([rng.GOLDEN - 2**64])
    got = _u64(rng.raw_bits(base, gamma, 3)[0])
    assert got == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_tensor_outputs_equal_a_sequential_splitmix64_at_their_index():
    g = torch.Generator().manual_seed(3)
    seeds = torch.randint(-2**62, 2**62, (6,), generator=g)
    _, gammas = rng.split(seeds, torch.arange(6))
    calls = torch.tensor([0, 1, 2, 5, 100, 7])
    base = rng.row_base(seeds, gammas, calls)
    bits = rng.raw_bits(base, gammas, 5)
    for r in range(6):
        seed, gamma, c = int(seeds[r]) % 2**64, int(gammas[r]) % 2**64, int(calls[r])
        # the call's first output is step c·2^32 + 1 of the sequential generator
        start = (seed + c * 2**32 * gamma) % 2**64
        assert _u64(bits[r]) == _splitmix64(start, gamma, 5)


def test_child_gammas_are_odd_with_enough_bit_transitions():
    _, gammas = rng.split(torch.full((4096,), 17), torch.arange(4096))
    for g in _u64(gammas):
        assert g % 2 == 1
        assert bin(g ^ (g >> 1)).count("1") >= 24
    assert len(set(_u64(gammas))) == 4096


def test_every_output_bit_is_fair():
    base, gamma = _rows(4096)
    bits = rng.raw_bits(base, gamma, 64).reshape(-1)
    n = bits.numel()
    for b in range(64):
        ones = int(((bits >> b) & 1).sum())
        assert abs(ones - n / 2) < Z4 * math.sqrt(n / 4), b


def _rows(n: int, key: int = 5, first: int = 0, call: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    seed, gamma = rng.split(torch.full((n,), rng.stream_key(key)), torch.arange(first, first + n))
    return rng.row_base(seed, gamma, torch.full((n,), call)), gamma


def _normals(dtype=torch.float32, key: int = 5, first: int = 0, call: int = 0) -> torch.Tensor:
    base, gamma = _rows(N_ROWS, key, first, call)
    return rng.normal(base, gamma, N_COLS, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussian_moments_and_ks(dtype):
    z = _normals(dtype).double().reshape(-1)
    n = z.numel()
    m = z.mean()
    c = z - m
    var = c.pow(2).mean()
    skew = c.pow(3).mean() / var**1.5
    kurt = c.pow(4).mean() / var**2 - 3.0
    assert abs(float(m)) < Z4 / math.sqrt(n)
    assert abs(float(var) - 1.0) < Z4 * math.sqrt(2.0 / n)
    assert abs(float(skew)) < Z4 * math.sqrt(6.0 / n)
    assert abs(float(kurt)) < Z4 * math.sqrt(24.0 / n)
    # Kolmogorov–Smirnov against N(0, 1): p below the two-sided 4σ tail fails
    assert stats.kstest(z.numpy(), "norm").pvalue > 6.3e-5
    assert float(z.abs().max()) < 6.7  # Box–Muller radius from a 32-bit word


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_moments_and_ks(dtype):
    base, gamma = _rows(N_ROWS)
    u = rng.uniform(base, gamma, N_COLS, dtype).double().reshape(-1)
    n = u.numel()
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < Z4 * math.sqrt(1 / 12 / n)
    assert abs(float(u.var()) - 1 / 12) < Z4 * math.sqrt(1 / 180 / n)  # Var(U²)-type bound
    assert stats.kstest(u.numpy(), "uniform").pvalue > 6.3e-5


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _uncorrelated(a: torch.Tensor, b: torch.Tensor) -> None:
    """|Pearson ρ| below 4 standard errors (1/√n for independent samples)."""
    rho = _corr(a, b)
    assert abs(rho) < Z4 / math.sqrt(a.numel()), rho


def test_no_correlation_between_layers_steps_samples_and_elements():
    z = _normals()
    half = z.shape[1] // 2  # elements j and half + j: the cos and sin of one Box–Muller pair
    _uncorrelated(z[:, :half], z[:, half:])
    # the pair's radius is shared: its two squares must still be uncorrelated
    _uncorrelated(z[:, :half] ** 2, z[:, half:] ** 2)
    # neighbouring elements (lag 1 and 2)
    _uncorrelated(z[:, :-1], z[:, 1:])
    _uncorrelated(z[:, :-2], z[:, 2:])
    # neighbouring samples (rows)
    _uncorrelated(z[:-1], z[1:])
    # consecutive solver steps of the same rows (calls 0 and 1)
    _uncorrelated(z, _normals(call=1))
    # another layer / level: neighbouring source seeds, same samples and step
    _uncorrelated(z, _normals(key=6))
    # samples far apart in the dataset
    _uncorrelated(z, _normals(first=10**6))


def test_stream_numbers_are_a_function_of_their_address():
    """Any batch, order or subset: a row (sample) gets the same numbers at each draw."""
    samples = torch.tensor([5, 0, 9, 3, 7, 1])
    full = NoiseStream.from_seed(11, samples=samples)
    first, second = full.randn((6, 10), torch.float32, CPU), full.randn((6, 10), torch.float32, CPU)
    assert not torch.equal(first, second)  # each draw (step) is new
    # the same samples in another order and batch
    other = NoiseStream.from_seed(11, samples=torch.tensor([3, 9]))
    torch.testing.assert_close(other.randn((2, 10), torch.float32, CPU), first[[3, 2]],
                               rtol=0, atol=0)
    torch.testing.assert_close(other.randn((2, 10), torch.float32, CPU), second[[3, 2]],
                               rtol=0, atol=0)
    # a row subset draws only its rows, with their own numbers and counts
    sub = NoiseStream.from_seed(11, samples=samples)
    sub.randn((6, 10), torch.float32, CPU)
    with row_subset(torch.tensor([1, 4]), 6):
        got = sub.randn((2, 10), torch.float32, CPU)
    torch.testing.assert_close(got, second[[1, 4]], rtol=0, atol=0)
    # padding rows (real=False) draw numbers but do not use up a draw
    pad = NoiseStream.from_seed(11, samples=samples)
    with row_subset(torch.arange(6), 6, real=torch.tensor([True] * 5 + [False])):
        pad.randn((6, 10), torch.float32, CPU)
    again = pad.randn((6, 10), torch.float32, CPU)
    torch.testing.assert_close(again[:5], second[:5], rtol=0, atol=0)
    torch.testing.assert_close(again[5], first[5], rtol=0, atol=0)


def test_rows_taken_from_a_table_are_a_fresh_stream_of_those_samples():
    """``table.rows_of(samples)`` (a training epoch's per-batch streams) draws what
    ``from_seed(seed, samples=samples)`` draws: every kind, draw after draw, any order,
    growing the table past its rows, a row subset; the table itself is never advanced."""
    table = NoiseStream.from_seed(23)
    table.randn((4, 3), torch.float32, CPU)  # set up 4 rows (and advanced: not a table)
    table = NoiseStream.from_seed(23)
    for samples in (torch.tensor([5, 0, 9, 3]), torch.tensor([40, 2]), torch.arange(7)):
        got, ref = table.rows_of(samples), NoiseStream.from_seed(23, samples=samples)
        n = len(samples)
        for kind, shape in (("rand", (n, 6)), ("randn", (n, 5)), ("randn", (n, 2, 3))):
            a = getattr(got, kind)(shape, torch.float64, CPU)
            torch.testing.assert_close(a, getattr(ref, kind)(shape, torch.float64, CPU),
                                       rtol=0, atol=0)
        with row_subset(torch.tensor([0, n - 1]), n):
            torch.testing.assert_close(got.rand((2, 4), torch.float32, CPU),
                                       ref.rand((2, 4), torch.float32, CPU), rtol=0, atol=0)
    assert table._base is not None and table._base.shape[0] == 41
    fresh = NoiseStream.from_seed(23, samples=torch.arange(41))
    fresh._rows(41, CPU)
    assert torch.equal(table._base, fresh._base)  # no draw moved the table's rows
    with pytest.raises(ValueError, match="row table"):
        NoiseStream.from_seed(23, samples=torch.arange(3)).rows_of(torch.arange(2))


def test_block_stream_rows_match_per_block_streams():
    seeds, rows = [101, 202, 303], [4, 16, 5]
    samples = torch.cat([torch.arange(n) + 40 for n in rows])
    both = NoiseStream.from_blocks(seeds, rows, samples=samples)
    draws = [both.randn((25, 33), torch.float64, CPU) for _ in range(3)]
    start = 0
    for seed, n in zip(seeds, rows, strict=True):
        alone = NoiseStream.from_seed(seed, samples=torch.arange(n) + 40)
        for d in draws:
            torch.testing.assert_close(alone.randn((n, 33), torch.float64, CPU),
                                       d[start : start + n], rtol=0, atol=0)
        start += n


def test_stream_shapes_devices_and_errors():
    s = NoiseStream.from_seed(1)
    assert s.randn((), torch.float32, CPU).shape == ()
    assert s.randn((0, 4), torch.float32, CPU).shape == (0, 4)
    assert s.randn((3, 2, 5), torch.float16, CPU).dtype == torch.float16
    with pytest.raises(ValueError, match="expects a batch of 4"):
        NoiseStream.from_blocks([1, 2], [2, 2]).randn((5, 3), torch.float32, CPU)
    with pytest.raises(TypeError):
        s.randn((2, 2), torch.int64, CPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_draws_equal_cpu_draws():
    cuda = torch.device("cuda")
    base, gamma = _rows(64)
    assert torch.equal(rng.raw_bits(base.to(cuda), gamma.to(cuda), 99).cpu(),
                       rng.raw_bits(base, gamma, 99))
    samples = torch.arange(64) + 7
    a = NoiseStream.from_seed(3, samples=samples).randn((64, 99), torch.float64, CPU)
    b = NoiseStream.from_seed(3, cuda, samples=samples.to(cuda)).randn((64, 99), torch.float64,
                                                                     cuda)
    torch.testing.assert_close(b.cpu(), a, rtol=1e-12, atol=1e-12)
    u = NoiseStream.from_seed(3, samples=samples).rand((64, 9), torch.float32, CPU)
    v = NoiseStream.from_seed(3, cuda, samples=samples.to(cuda)).rand((64, 9), torch.float32, cuda)
    assert torch.equal(v.cpu(), u)  # integer-built uniforms are exact on both


def test_a_stream_table_sets_up_the_streams_many_sets_up():
    """``NoiseStream.table(seeds).streams(samples)`` (a training epoch's device-layer
    streams) draws what ``NoiseStream.many(seeds, samples=samples)`` draws, batch after
    batch, growing past its rows; negative or no samples are split as ``many`` does."""
    seeds = [31, 32, 33]
    table = NoiseStream.table(seeds)
    batches = (torch.tensor([5, 0, 9, 3]), torch.tensor([300, 2]), torch.arange(7),
               torch.tensor([-4, 1]), torch.tensor([], dtype=torch.int64))
    for samples in batches:
        got, ref = table.streams(samples), NoiseStream.many(seeds, samples=samples)
        n = len(samples)
        for a, b in zip(got, ref, strict=True):
            for kind, shape in (("randn", (n, 5)), ("rand", (n, 6)), ("randn", (n, 5))):
                torch.testing.assert_close(getattr(a, kind)(shape, torch.float32, CPU),
                                           getattr(b, kind)(shape, torch.float32, CPU),
                                           rtol=0, atol=0)
    assert table._rows.shape == (3, 3, 512)  # grown to sample 300 in GROW-row steps
    again = table.streams(torch.tensor([5, 0]))  # the table's rows were not advanced
    torch.testing.assert_close(again[1].randn((2, 3), torch.float32, CPU),
                               NoiseStream.many(seeds, samples=[5, 0])[1].randn(
                                   (2, 3), torch.float32, CPU), rtol=0, atol=0)
