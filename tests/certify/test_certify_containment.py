"""Containment (Prop. 3.2 and its hardware extension): 10,000 random perturbations inside
the ε-box — and chips inside the device envelope — never leave the interval bounds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from noisydeq.certify.envelope_types import Envelope, LayerEnvelope
from noisydeq.certify.fixed_point import CERT_SOLVER, interval_equilibrium, interval_margin
from noisydeq.certify.interval import Interval, affine
from noisydeq.certify.propagate import bounds
from tests.certify.helpers import small_model

N = 10_000
EPS = 0.08


def perturbed(x: torch.Tensor, n: int, eps: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n points of the ε-box ∩ [0, 1] around the rows of x (half uniform, half corners) and
    the index of the row each belongs to."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.arange(n) % x.shape[0]
    u = 2 * torch.rand(n, x.shape[1], generator=g, dtype=x.dtype) - 1
    u[n // 2:] = u[n // 2:].sign()
    return (x[idx] + eps * u).clamp(0, 1), idx


def margins_of(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, y[:, None]) - logits


def check(lb: torch.Tensor, actual: torch.Tensor, y: torch.Tensor, tol: float = 1e-7) -> None:
    mask = ~torch.nn.functional.one_hot(y, lb.shape[1]).bool()
    gap = (actual - lb)[mask]
    assert float(gap.min()) >= -tol, float(gap.min())


@pytest.mark.parametrize("kind,param,cell", [
    ("mondeq", "ibp", "mlp"), ("mondeq", "lben", "mlp"), ("mondeq", "ibp", "conv"),
    ("ffw_relu", "ibp", "mlp"), ("ffw_relu", "ibp", "conv"),
])
def test_ten_thousand_input_perturbations_stay_inside(kind, param, cell):
    model = small_model(kind, param, cell=cell, width=3 if cell == "conv" else 12,
                        depth=2 if kind == "ffw_relu" else 1)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (8,), generator=g)
    with torch.no_grad():
        b = bounds(model, x, y, EPS)
        xp, idx = perturbed(x, N, EPS, seed=2)
        out = model(xp, return_solution=True)
        check(b.margins[idx], margins_of(out.logits, y[idx]), y[idx])
        if kind == "mondeq":
            assert bool(out.solution.converged.all())
            z_iv = b.info["interval"].z
            assert bool(Interval(z_iv.lo[idx], z_iv.hi[idx]).contains(out.z, 1e-7).all())
            # the bounds are not vacuous: the perturbed fixed points fill much of them
            spread = (out.z.max(0).values - out.z.min(0).values).max()
            assert float(spread) > 0


def test_tanh_ffw_perturbations_stay_inside():
    from noisydeq.models import FFW

    torch.manual_seed(0)
    model = FFW(16, 10, 3, 5).double().eval()
    x = torch.rand(8, 16, dtype=torch.float64)
    y = torch.randint(0, 5, (8,))
    with torch.no_grad():
        b = bounds(model, x, y, EPS)
        xp, idx = perturbed(x, N, EPS, seed=3)
        check(b.margins[idx], margins_of(model(xp), y[idx]), y[idx])


def test_single_affine_layer_bound_is_attained():
    """IBP through one linear layer is exact: the corners reach both ends."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 3).double()
    x = torch.rand(1, 6, dtype=torch.float64)
    iv = affine(lin, Interval.box(x, 0.1, None))
    with torch.no_grad():
        w = lin.weight
        hi_corner = x + 0.1 * w.sign()
        lo_corner = x - 0.1 * w.sign()
        assert torch.allclose(lin(hi_corner).diagonal()[None], iv.hi, atol=1e-12)
        assert torch.allclose(lin(lo_corner).diagonal()[None], iv.lo, atol=1e-12)


def test_enclosure_contains_exact_interval_equilibrium_after_a_short_solve():
    """Stopping the interval solve after 2 iterations widens the bounds (a posteriori radius)
    but they still contain the exact interval equilibrium."""
    model = small_model("mondeq", "ibp")
    x = torch.rand(6, 16, dtype=torch.float64)
    with torch.no_grad():
        iv = Interval.box(x, EPS)
        v = Interval(model.proj(iv.lo), model.proj(iv.hi))  # monotone injection here
        v = Interval(torch.minimum(v.lo, v.hi), torch.maximum(v.lo, v.hi)).add(model.cell.bias)
        exact = interval_equilibrium(model, v)
        short = interval_equilibrium(model, v, solver=CERT_SOLVER.model_copy(
            update={"max_iter": 2}))
    assert float(exact.enclosure.max()) < 1e-6
    assert float(short.enclosure.min()) > float(exact.enclosure.max())
    assert bool((short.z.hi >= exact.z.hi - 1e-9).all())
    assert bool((short.z.lo <= exact.z.lo + 1e-9).all())


def _layer_weights(model, names, n, delta, g):
    """Per-sample weights W + Δ·u, u uniform in [-1, 1] (half of them ±1 corners)."""
    out = {}
    for name in names:
        w = dict(model.named_modules())[name].weight
        u = 2 * torch.rand(n, *w.shape, generator=g, dtype=w.dtype) - 1
        u[n // 2:] = u[n // 2:].sign()
        out[name] = w[None] + delta[name][None] * u
    return out


def _chip_forward(model, x, ws, err_dir=None, dyn=None):
    """The dense mondeq with per-sample weights (digital D from the reference M) and an
    optional per-sample read error dyn·u·max|D^{-1/2}z| on M's output."""
    proj, cell = model.proj, model.cell
    a = torch.einsum("bij,bj->bi", ws["proj.U"], x) + proj.U.bias
    s = proj.bn(a) if proj.bn is not None else a
    v = torch.relu(s) + cell.bias
    d = cell.diag_inv_sqrt()
    z = torch.zeros_like(v)
    for _ in range(4000):
        mz = torch.einsum("bij,bj->bi", ws["cell.M"], d * z)
        if err_dir is not None:
            mz = mz + dyn * err_dir * (d * z).abs().amax(1, keepdim=True)
        z_new = torch.relu(0.5 * z + 0.5 * (d * mz + v))
        if float((z_new - z).abs().max()) < 1e-13:
            z = z_new
            break
        z = z_new
    zb = model.out_bn(z) if model.out_bn is not None else z
    return torch.einsum("bij,bj->bi", ws["head"], zb) + model.head.bias, z


@pytest.mark.parametrize("dynamic", [False, True])
def test_ten_thousand_chips_inside_the_envelope_stay_inside(dynamic):
    """10,000 (input, chip) pairs: inputs in the ε-box, every weight of U, M and the head
    anywhere in W ± Δ (uniform and corners), with (``dynamic``) a read error on M up to
    dyn·max|x|: margins and equilibria stay within the envelope's bounds."""
    model = small_model("mondeq", "ibp", m=0.5)
    g = torch.Generator().manual_seed(5)
    names = ["proj.U", "cell.M", "head"]
    mods = dict(model.named_modules())
    delta = {n: 0.02 * mods[n].weight.abs().max() * torch.rand(mods[n].weight.shape,
                                                               generator=g, dtype=torch.float64)
             for n in names}
    layers = {n: LayerEnvelope(delta[n]) for n in names}
    dyn = None
    if dynamic:
        dyn = 0.002 * torch.rand(12, generator=g, dtype=torch.float64)
        layers["cell.M"] = LayerEnvelope(delta["cell.M"], dyn)
    env = Envelope(layers, "test", "test envelope")
    x = torch.rand(8, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (8,), generator=g)
    with torch.no_grad():
        b = bounds(model, x, y, EPS, envelope=env)
        xp, idx = perturbed(x, N, EPS, seed=6)
        ws = _layer_weights(model, names, N, delta, g)
        err = None
        if dynamic:
            err = 2 * torch.rand(N, 12, generator=g, dtype=torch.float64) - 1
            err[N // 2:] = err[N // 2:].sign()
        logits, z = _chip_forward(model, xp, ws, err, dyn)
        check(b.margins[idx], margins_of(logits, y[idx]), y[idx])
        z_iv = b.info["interval"].z
        assert bool(Interval(z_iv.lo[idx], z_iv.hi[idx]).contains(z, 1e-9).all())
        plain = bounds(model, x, y, EPS)
        assert bool((b.margins <= plain.margins + 1e-12).all())  # the envelope only widens


def test_measured_rram_chip_equilibria_inside_its_envelope():
    """A real rram chip (read noise off, 24-bit converters, no bound management: only the
    static programming/drift error remains): its equilibria on perturbed inputs lie inside
    the bounds of its measured-chip envelope."""
    from noisydeq.certify.envelope import chip_envelope
    from noisydeq.hardware.presets import RRAMSpec
    from noisydeq.hardware.rram import RRAMDevice

    spec = RRAMSpec(name="quiet", out_noise=0.0, dac_bits=24, adc_bits=24,
                    bound_management="none", out_bound=1000.0)
    model = small_model("mondeq", "ibp", m=0.5)
    env = chip_envelope(model.float(), spec, chip=7).to(dtype=torch.float64)
    model = model.double()
    x = torch.rand(8, 16, dtype=torch.float64)
    y = torch.randint(0, 5, (8,))
    with torch.no_grad():
        b = bounds(model, x, y, EPS, envelope=env)
        chip = RRAMDevice(spec, chip_seed=7).deploy(model.float()).eval()
        xp, idx = perturbed(x, 2000, EPS, seed=8)
        out = chip(xp.float(), return_solution=True)
    assert bool(out.solution.converged.all())
    z_iv = b.info["interval"].z
    assert bool(Interval(z_iv.lo[idx], z_iv.hi[idx]).contains(out.z.double(), 1e-4).all())
    check(b.margins[idx], margins_of(out.logits.double(), y[idx]), y[idx], tol=1e-4)


def test_envelope_margin_shrinks_and_refuses_when_too_wide():
    model = small_model("mondeq", "ibp", m=0.1)
    w = model.cell.M.weight
    assert interval_margin(model.cell) == pytest.approx(0.1, abs=1e-7)
    small = interval_margin(model.cell, 0.01 * w.abs().max() * torch.ones_like(w))
    assert 0 < small < 0.1
    from noisydeq.errors import NoisyDEQError

    with pytest.raises(NoisyDEQError, match="too wide"):
        interval_margin(model.cell, 0.5 * w.abs().max() * torch.ones_like(w))


def test_dynamic_read_error_too_steep_is_refused():
    """A read-error bound whose slope L = √2·max(d)·‖d·a‖/μ ≥ 1 cannot be included."""
    from noisydeq.certify.fixed_point import check_dynamic_slope
    from noisydeq.errors import NoisyDEQError

    model = small_model("mondeq", "ibp", m=0.5)
    cell = model.cell
    mu = interval_margin(cell)
    assert check_dynamic_slope(cell, torch.full((12,), 1e-4, dtype=torch.float64), mu) < 1
    with pytest.raises(NoisyDEQError, match="slope"):
        check_dynamic_slope(cell, torch.full((12,), 10.0, dtype=torch.float64), mu)


@pytest.mark.parametrize("chip", [None, 0])
def test_a_too_wide_measured_chip_is_not_told_to_lower_k_or_coverage(monkeypatch, chip):
    """A measured chip (--chip) has no k or coverage: its refusal names what can change
    (found by the user audit: `certify fam --device rram --chip 0` on a w128 mondeq said
    'use a smaller k or coverage'); the model envelope keeps that advice."""
    from types import SimpleNamespace

    from noisydeq.analysis import certified
    from noisydeq.certify.envelope_types import Envelope, LayerEnvelope
    from noisydeq.certify.spec import CertifySpec
    from noisydeq.errors import NoisyDEQError

    model = small_model("mondeq", "ibp", m=0.1)
    w = model.cell.M.weight
    env = Envelope({"cell.M": LayerEnvelope(0.5 * w.abs().max() * torch.ones_like(w))},
                   "rram-wan2022:chip0")
    monkeypatch.setattr(certified, "build_envelope", lambda *a, **k: env)
    member = SimpleNamespace(model=model, kind="mondeq", depth=1, width=12, seed=0)
    spec = CertifySpec(device="rram", chip=chip)
    with pytest.raises(NoisyDEQError, match="too wide") as err:
        certified.plan(member, spec, torch.rand(2, 16, dtype=torch.float64))
    if chip is None:
        assert "use a smaller k or coverage" in str(err.value)
    else:
        assert "smaller k" not in str(err.value) and "--monotone m=" in str(err.value)
