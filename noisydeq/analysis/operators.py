"""Sensitivity and spectra of any cell without forming a matrix: Jacobian–vector products.

The exact analyses of :mod:`noisydeq.analysis.sensitivity` and :mod:`~noisydeq.analysis.spectra`
form d×d Jacobians per sample — fine for the MLP cell of Eq. 57 (d ≤ 467), impossible for a
conv cell on a maze (d = 128·9·9 ≈ 10⁴ per sample) or a multiscale state. Here the same
quantities are computed from forward-mode products v ↦ J v only (``torch.func.jvp``):

* **Sensitivity** (paper §3.3, Eq. 9-11). The noise vector ξ ~ N(0, I) of one cell call is the
  concatenation of every draw the cell makes (all its ``signal`` pre-activations, or its
  ``state``), fixed over iterations/layers as in App. A.1.1. DEQ: the fixed point z* of the
  noisy cell is solved (Anderson, float64; Broyden for the samples Anderson leaves
  unconverged, :func:`solve_fixed_point`), then column i of dz*/dξ solves the linear fixed
  point u = J_z u + J_ξ e_i (the IFT limit of Eq. 9), matrix-free with the package's own
  Anderson solver on u ↦ J_z u + J_ξ e_i. FFW: dz_m/dξ e_i is one JVP through all layers.
  The per-sample value E_i ‖dz*/dξ_i‖₂ is estimated from ``columns`` indices i drawn
  uniformly (an unbiased estimate of the mean over all i; with every column it is exact and
  equals the explicit-Jacobian result, which the tests check on the MLP cell).
* **Spectra.** ρ(∂f/∂z) at the clean fixed point by the batched block power method of
  :func:`noisydeq.analysis.spectra.power_spectral_radius` on JVPs. For a cell that is one
  convolution (``conv1d``) ρ(W) of the convolution operator at the input's size, and for its
  FFW ρ(W_m⋯W₁) (ρ(W_m⋯W₂) in the ``eq57`` form, whose first layer acts on z⁰ = 0), by
  the same power method on the linear maps; the eigenvalues reported are the block's Ritz
  values. Cells of several layers (residual, mlp_stack, multiscale) have no single W: only
  ρ(∂f/∂z) is given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisydeq.analysis.adapters import check_noise_spec
from noisydeq.analysis.sensitivity import Sensitivity, check_samples
from noisydeq.errors import NoisyDEQError
from noisydeq.noise import Noise, NoiseStream
from noisydeq.specs.noise import NoiseSpec
from noisydeq.specs.solver import SolverSpec

#: solvers for the fixed point and the linear IFT systems (float64)
FIXED_POINT = SolverSpec(name="anderson", max_iter=500, tol=1e-10, stop="rel", window=1, m=6)
LINEAR = SolverSpec(name="anderson", max_iter=500, tol=1e-9, stop="rel", window=1, m=6)
#: the fixed point again for the samples Anderson leaves unconverged: a trained multiscale DEQ
#: sits near the edge of contraction (measured on a 2-scale MDEQ of a digits sweep: Anderson
#: met rel 1e-10 in 500 iterations for none of 4 inputs, Broyden, its training solver, for 3,
#: where ρ(∂f/∂z*) was 0.98-1.05)
FIXED_POINT_FALLBACK = SolverSpec(name="broyden", max_iter=500, tol=1e-10, stop="rel", window=1)


class SequenceReplay(NoiseStream):
    """Hands out consecutive column blocks of a flat ξ (B, D) as the draws of one cell call.

    :meth:`rewind` starts a call; each draw of shape (B, *s) takes the next ∏s columns. A
    recording pass (``xi=None``) only notes the shapes and returns zeros.
    """

    def __init__(self, xi: Tensor | None = None) -> None:
        super().__init__([0])
        self.xi = xi
        self.pos = 0
        self.shapes: list[tuple[int, ...]] = []

    def rewind(self) -> None:
        self.pos = 0

    def randn(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        shape = tuple(shape)
        n = math.prod(shape[1:])
        if self.xi is None:
            self.shapes.append(shape)
            return torch.zeros(shape, dtype=dtype, device=device)
        if self.pos + n > self.xi.shape[1] or self.xi.shape[0] != shape[0]:
            raise NoisyDEQError(f"noise vector of shape {tuple(self.xi.shape)} does not cover "
                                f"a draw of {shape} at column {self.pos}")
        out = self.xi[:, self.pos:self.pos + n].reshape(shape)
        self.pos += n
        return out

    def rand(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        raise NoisyDEQError("sensitivity analysis supports Gaussian noise only")


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


class CellOperator:
    """f(z, ξ, c) of a DEQ cell or one FFW layer with ξ replayed at ``spec.site``.

    ``step(z, c, noise)`` is the cell call; z and the result are flattened to (B, d).
    """

    def __init__(self, step: Callable[[Tensor, Tensor, Noise | None], Tensor], spec: NoiseSpec,
                 state_shape: Sequence[int]) -> None:
        self.step, self.spec = step, check_noise_spec(spec)
        self.state_shape = tuple(state_shape)

    def noise_size(self, z: Tensor, c: Tensor) -> int:
        """Columns of ξ one call draws (found by a recording call)."""
        rec = SequenceReplay()
        with torch.no_grad():
            self.step(z.reshape(z.shape[0], *self.state_shape), c, Noise(self.spec, rec))
        if not rec.shapes:
            raise NoisyDEQError(f"noise site: the cell draws no noise at '{self.spec.site}'")
        return sum(math.prod(s[1:]) for s in rec.shapes)

    def __call__(self, z: Tensor, xi: Tensor, c: Tensor) -> Tensor:
        stream = SequenceReplay(xi)
        out = self.step(z.reshape(z.shape[0], *self.state_shape), c, Noise(self.spec, stream))
        return _flat(out)


def _column_tangents(xi: Tensor, columns: int | None, generator: torch.Generator) -> Tensor:
    """One-hot tangents e_i, ``columns`` per row of ξ with i uniform (``None``: every i in
    order, the exact mean)."""
    b, d = xi.shape
    if columns is None:
        idx = torch.arange(d, device=xi.device).repeat(b)
        columns = d
    else:
        idx = torch.randint(0, d, (b * columns,), generator=generator).to(xi.device)
    e = torch.zeros(b * columns, d, dtype=xi.dtype, device=xi.device)
    e[torch.arange(b * columns, device=xi.device), idx] = 1.0
    return e


def _solve(f: Callable[[Tensor], Tensor], z0: Tensor, spec: SolverSpec):
    from noisydeq.solvers import solve

    return solve(f, z0, spec)


def solve_fixed_point(f: Callable[[Tensor], Tensor], z0: Tensor) -> tuple[Tensor, Tensor]:
    """(z*, ok) of ``f`` per sample: Anderson (:data:`FIXED_POINT`); the samples it leaves
    unconverged or diverged are solved again from ``z0`` with Broyden
    (:data:`FIXED_POINT_FALLBACK`) and take its solution where that one converged. ``ok``:
    one of the two met the stop rule without diverging."""
    fp = _solve(f, z0, FIXED_POINT)
    ok = fp.converged & ~fp.diverged
    if bool(ok.all()):
        return fp.z, ok
    fb = _solve(f, z0, FIXED_POINT_FALLBACK)
    take = ~ok & fb.converged & ~fb.diverged
    z = torch.where(take.reshape(-1, *([1] * (fp.z.ndim - 1))), fb.z, fp.z)
    return z, ok | take


def deq_sensitivity_jvp(
    op: CellOperator, ctx: Tensor, *, n_noise: int, columns: int | None,
    generator: torch.Generator, chunk: int = 32,
) -> Sensitivity:
    """E_ξ E_i ‖dz*/dξ_i‖₂ of a DEQ cell from JVPs (see the module docstring)."""
    check_samples(n_noise)
    d_state = math.prod(op.state_shape)
    z_probe = ctx.new_zeros(1, d_state)
    d_noise = op.noise_size(z_probe, ctx[:1])
    ctx_all = ctx.repeat_interleave(n_noise, dim=0)
    xi_all = torch.randn((ctx_all.shape[0], d_noise), generator=generator, dtype=ctx.dtype,
                         device=ctx.device)
    per, absd, failed = [], [], 0
    for start in range(0, ctx_all.shape[0], chunk):
        c, xi = ctx_all[start:start + chunk], xi_all[start:start + chunk]
        with torch.no_grad():
            z_fp, ok = solve_fixed_point(lambda z, c=c, xi=xi: op(z, xi, c),
                                         c.new_zeros(c.shape[0], d_state))
        failed += int((~ok).sum())
        if not bool(ok.any()):
            continue
        z, xi, c = z_fp[ok].detach(), xi[ok], c[ok]
        rep = d_noise if columns is None else columns
        zr, xir, cr = (t.repeat_interleave(rep, dim=0) for t in (z, xi, c))
        e = _column_tangents(xi, columns, generator)
        b = torch.func.jvp(lambda v, zr=zr, cr=cr: op(zr, v, cr), (xir,), (e,))[1]

        def lin(u: Tensor, b=b, zr=zr, xir=xir, cr=cr) -> Tensor:
            return torch.func.jvp(lambda zz: op(zz, xir, cr), (zr,), (u,))[1] + b

        sol = _solve(lin, torch.zeros_like(b), LINEAR)
        if not bool(sol.converged.all()):
            bad = (~sol.converged).reshape(-1, rep).any(dim=1)
            failed += int(bad.sum())
            keep = ~bad
        else:
            keep = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
        u = sol.z.reshape(z.shape[0], rep, -1)[keep]
        per.append(u.norm(dim=2).mean(dim=1).detach())
        absd.append(u.abs().mean(dim=(1, 2)).detach())
    if not per:
        raise NoisyDEQError("DEQ fixed point: no sample converged; the cell may have no stable "
                            "fixed point at this noise level (try a smaller --eta / larger --snr)")
    return Sensitivity("deq", torch.cat(per), torch.cat(absd), failed)


def ffw_sensitivity_jvp(
    forward: Callable[[Tensor, Tensor], Tensor], d_noise: int, ctx: Tensor, *, n_noise: int,
    columns: int | None, generator: torch.Generator, chunk: int = 64,
) -> Sensitivity:
    """E_ξ E_i ‖dz_m/dξ_i‖₂ of an FFW's last layer: one JVP per sampled column."""
    check_samples(n_noise)
    ctx_all = ctx.repeat_interleave(n_noise, dim=0)
    xi_all = torch.randn((ctx_all.shape[0], d_noise), generator=generator, dtype=ctx.dtype,
                         device=ctx.device)
    per, absd = [], []
    for start in range(0, ctx_all.shape[0], chunk):
        c, xi = ctx_all[start:start + chunk], xi_all[start:start + chunk]
        rep = d_noise if columns is None else columns
        xir, cr = xi.repeat_interleave(rep, dim=0), c.repeat_interleave(rep, dim=0)
        e = _column_tangents(xi, columns, generator)
        u = torch.func.jvp(lambda v, cr=cr: forward(v, cr), (xir,), (e,))[1].reshape(
            xi.shape[0], rep, -1)
        per.append(u.norm(dim=2).mean(dim=1).detach())
        absd.append(u.abs().mean(dim=(1, 2)).detach())
    return Sensitivity("ffw", torch.cat(per), torch.cat(absd), 0)


# ------------------------------------------------------------------------------ models


def _state_shape(model: nn.Module, xt: Tensor) -> tuple[int, ...]:
    init = getattr(model, "initial_state", None)
    z0 = init(xt[:1]) if init is not None else torch.zeros_like(xt[:1])
    return tuple(z0.shape[1:])


def deq_operator(model: nn.Module, spec: NoiseSpec, xt: Tensor) -> CellOperator:
    """The noisy cell of a DEQ as a :class:`CellOperator`."""
    return CellOperator(lambda z, c, noise: model.cell(z, c, noise), spec,
                        _state_shape(model, xt))


def ffw_forward(model: nn.Module, spec: NoiseSpec, xt: Tensor) -> tuple[Callable, int]:
    """forward(ξ, x̃) → z_m (flat) with the same ξ at every layer, and ξ's length; started
    as the model's form starts (:meth:`~noisydeq.models.FFW.start`)."""
    check_noise_spec(spec)

    def run(xi: Tensor | None, c: Tensor, stream: SequenceReplay) -> Tensor:
        z, inj = model.start(c)
        for layer in model.layers:
            stream.rewind()
            z = layer(z, inj, Noise(spec, stream))
        return _flat(z)

    rec = SequenceReplay()
    with torch.no_grad():
        run(None, xt[:1], rec)
    per_layer = rec.shapes[: len(rec.shapes) // max(1, len(model.layers))]
    if not per_layer:
        raise NoisyDEQError(f"noise site: the layers draw no noise at '{spec.site}'")
    d_noise = sum(math.prod(s[1:]) for s in per_layer)
    return (lambda xi, c: run(xi, c, SequenceReplay(xi))), d_noise


# ------------------------------------------------------------------------------ spectra


def _conv_op(layer: nn.Module) -> Callable[[Tensor], Tensor]:
    """v ↦ W v for a (possibly weight-normalised) Conv1d/Conv2d/Linear, without bias."""
    w = layer.weight.detach().double()
    inner = getattr(layer, "inner", layer)
    if isinstance(inner, nn.Linear):
        return lambda v: F.linear(v, w)
    fn = F.conv1d if isinstance(inner, nn.Conv1d) else F.conv2d
    return lambda v: fn(v, w, None, stride=inner.stride, padding=inner.padding)


def linear_radius(maps: Sequence[Callable[[Tensor], Tensor]], shape: Sequence[int],
                  generator: torch.Generator, block: int = 4, **kw):
    """ρ of the composition maps[-1] ∘ … ∘ maps[0] on tensors of ``shape`` (one sample), by
    the block power method (:class:`~noisydeq.analysis.spectra.PowerResult`)."""
    from noisydeq.analysis.spectra import power_spectral_radius

    d = math.prod(shape)

    def apply(v: Tensor) -> Tensor:
        x = v.reshape(v.shape[0], *shape)
        for m in maps:
            x = m(x)
        return _flat(x)

    p = max(1, min(block, d))
    v0 = torch.randn((1, d, p), generator=generator, dtype=torch.float64)
    return power_spectral_radius(apply, v0, **kw)
