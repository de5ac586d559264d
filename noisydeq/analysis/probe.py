"""Model-level analyses: sensitivity, spectra, bounds and Jacobian radius of a DEQ or FFW.

Works on the package's MLP models (``noisydeq.models.DEQ`` with its ``MLPCell``, ``FFW`` of
``TanhLayer``s, paper Eq. 57). Every analysis runs on a float64 copy in eval mode on the
device of the given inputs, so the caller's model is untouched.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from noisydeq.analysis import bounds, spectra
from noisydeq.analysis.adapters import cell_fn, layers_fn
from noisydeq.analysis.jacobians import jvp_fn
from noisydeq.analysis.sensitivity import Sensitivity, deq_sensitivity, ffw_sensitivity, fixed_point
from noisydeq.errors import NoisyDEQError
from noisydeq.models.ffw import acting_layers
from noisydeq.specs.noise import NoiseSpec


def is_mlp_model(model: nn.Module) -> bool:
    """True for the MLP DEQ/FFW of Eq. 57 (explicit Jacobians); others use JVPs."""
    kind = getattr(model, "kind", None)
    if kind == "deq" and hasattr(model, "cell") and hasattr(model.cell, "W"):
        return isinstance(model.cell.W, nn.Linear)
    if kind == "ffw" and hasattr(model, "layers") and hasattr(model, "form"):
        return all(isinstance(getattr(layer, "W", None), nn.Linear) for layer in model.layers)
    return False


def check_mlp_model(model: nn.Module) -> str:
    """``"deq"`` or ``"ffw"`` for an MLP DEQ/FFW; one clear error for anything else."""
    if is_mlp_model(model):
        return model.kind
    raise NoisyDEQError(
        f"model: this analysis supports the MLP DEQ and FFW (Eq. 57), got "
        f"{type(model).__name__} (kind={getattr(model, 'kind', None)!r})"
    )


def check_model(model: nn.Module) -> str:
    """``"deq"`` or ``"ffw"`` for any DEQ (a ``cell``) or FFW (``layers``) of the package —
    MLP models are analysed with explicit Jacobians, the others (conv, residual, stacked,
    multiscale cells) with Jacobian-vector products (:mod:`noisydeq.analysis.operators`)."""
    kind = getattr(model, "kind", None)
    if kind == "deq" and hasattr(model, "cell") and hasattr(model, "inject"):
        return "deq"
    if kind == "ffw" and hasattr(model, "layers") and hasattr(model, "inject"):
        return "ffw"
    raise NoisyDEQError(
        f"model: the analyses support the package's DEQ and FFW models, got "
        f"{type(model).__name__} (kind={kind!r})"
    )


def prepared(model: nn.Module, like: Tensor) -> nn.Module:
    """A float64 eval-mode copy of ``model`` on ``like``'s device, parameters frozen."""
    m = copy.deepcopy(model).to(device=like.device, dtype=torch.float64).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def deq_weight(model: nn.Module) -> Tensor:
    """The DEQ cell's W (Eq. 57)."""
    return model.cell.W.weight.detach()


def ffw_state_weights(model: nn.Module) -> list[Tensor]:
    """FFW matrices that act on a non-zero state, first to last (W₁ … W_m of §3.3).

    ``eq57x`` and ``eq32`` forms: z⁰ = x̃, every layer acts. ``eq57`` form: z⁰ = 0, so the
    first layer's W multiplies zero and is left out (:func:`~noisydeq.models.ffw.acting_layers`).
    """
    layers = list(model.layers)
    return [layers[m].W.weight.detach() for m in acting_layers(model.form, len(layers))]


def ffw_noise_path(model: nn.Module) -> list[Tensor]:
    """Matrices that multiply a noise-dependent state: all layers but the first (Eq. 40)."""
    return [layer.W.weight.detach() for layer in list(model.layers)[1:]]


def inputs_to_injection(model: nn.Module, x: Tensor) -> Tensor:
    """x̃ = act(U x) for a batch (no input noise)."""
    with torch.no_grad():
        return model.inject(x)


def ffw_forward(model: nn.Module, spec: NoiseSpec):
    """forward(ξ, x̃) → z_m of an FFW with the same ξ at every layer (Eq. 10/41), started
    as the model's form starts (:meth:`~noisydeq.models.FFW.start`)."""
    return layers_fn(list(model.layers), spec, start=model.start)


def sensitivity(
    model: nn.Module, x: Tensor, spec: NoiseSpec, *, n_noise: int = 100,
    generator: torch.Generator, columns: int = 16,
) -> Sensitivity:
    """E_ξ |dz*/dξ_i| of ``model``, ``n_noise`` noise draws per input row of ``x`` (Eq. 9-11).

    MLP models: exact over all i. Other cells: ``columns`` sampled i per draw, from JVPs
    (:mod:`noisydeq.analysis.operators`).
    """
    kind = check_model(model)
    x = x.to(torch.float64)
    m = prepared(model, x)
    xt = inputs_to_injection(m, x)
    if not is_mlp_model(model):
        from noisydeq.analysis import operators as ops

        if kind == "deq":
            return ops.deq_sensitivity_jvp(ops.deq_operator(m, spec, xt), xt, n_noise=n_noise,
                                           columns=columns, generator=generator)
        fwd, d_noise = ops.ffw_forward(m, spec, xt)
        return ops.ffw_sensitivity_jvp(fwd, d_noise, xt, n_noise=n_noise, columns=columns,
                                       generator=generator)
    if kind == "deq":
        return deq_sensitivity(cell_fn(m.cell, spec), xt, m.width, n_noise=n_noise,
                               generator=generator)
    return ffw_sensitivity(ffw_forward(m, spec), xt, m.width, n_noise=n_noise,
                           generator=generator)


@dataclass
class SpectrumReport:
    """Eigenvalues and radii of one model (paper Fig. 2a / Fig. 13 right).

    ``eig``: eigenvalues of W (DEQ) or of the full product W_m⋯W₁ (FFW); ``radii``: ρ(W)
    (DEQ, one entry) or ρ(W_k⋯W₁) for k = 1..m (FFW); ``layer_radii``: ρ of each matrix.
    ``jac_rho``: per-input ρ(∂f/∂z) at the clean fixed point (DEQ only), ``jac_converged``.
    """

    kind: str
    eig: Tensor
    radii: list[float]
    layer_radii: list[float]
    spectral_norms: list[float]
    jac_rho: Tensor | None = None
    jac_converged: Tensor | None = None
    extra: dict = field(default_factory=dict)

    @property
    def rho(self) -> float:
        """ρ(W) for a DEQ, ρ(W_m⋯W₁) for an FFW (1 for an FFW with no acting matrix)."""
        return self.radii[-1] if self.radii else 1.0


def spectrum(
    model: nn.Module, x: Tensor | None = None, *, generator: torch.Generator | None = None,
    power_iters: int = 2000, tol: float = 1e-4,
) -> SpectrumReport:
    """Eigen-spectra of a model; with inputs ``x`` also the DEQ's Jacobian radius at z*.

    Cells other than Eq. 57's: matrix-free (:func:`operator_spectrum`).
    """
    if not is_mlp_model(model):
        return operator_spectrum(model, x, generator=generator, power_iters=power_iters,
                                 tol=tol)
    kind = check_mlp_model(model)
    if kind == "deq":
        W = deq_weight(model)
        eig = spectra.eigenvalues(W)
        rep = SpectrumReport("deq", eig, [float(eig.abs().max())], [float(eig.abs().max())],
                             [bounds.spectral_norm(W)])
        if x is not None:
            if generator is None:
                raise NoisyDEQError("spectrum: a generator is needed for the power method")
            rep.jac_rho, rep.jac_converged = deq_jacobian_radius(
                model, x, generator=generator, max_iter=power_iters, tol=tol)
        return rep
    weights = ffw_state_weights(model)
    if not weights:
        eig = torch.ones(model.width, dtype=torch.complex128)
        return SpectrumReport("ffw", eig, [], [], [])
    prods = spectra.products(weights)
    return SpectrumReport(
        "ffw", spectra.eigenvalues(prods[-1]), [spectra.spectral_radius(P) for P in prods],
        [spectra.spectral_radius(W) for W in weights], [bounds.spectral_norm(W) for W in weights],
    )


def operator_spectrum(
    model: nn.Module, x: Tensor | None = None, *, generator: torch.Generator | None = None,
    power_iters: int = 2000, tol: float = 1e-4,
) -> SpectrumReport:
    """Spectra of a non-MLP model from operator products (:mod:`noisydeq.analysis.operators`):
    ρ(W) / ρ(W_m⋯W₂) for single-convolution cells at the input's size (``x`` needed), and
    ρ(∂f/∂z) at the DEQ's fixed points; NaN where a cell has no single W."""
    from noisydeq.analysis import operators as ops

    kind = check_model(model)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    nan = torch.full((1,), math.nan, dtype=torch.complex128)
    layers = [model.cell.layer] if kind == "deq" and hasattr(model.cell, "layer") else list(
        getattr(model, "layers", []))
    single = [getattr(layer, "W", None) for layer in layers]
    rep = SpectrumReport(kind, nan, [math.nan], [], [])  # no single W: ρ(W) undefined
    if x is not None and single and all(w is not None and not isinstance(w, nn.ModuleList)
                                        for w in single):
        m = prepared(model, x.to(torch.float64))
        xt = inputs_to_injection(m, x.to(torch.float64))
        shape = tuple(xt.shape[1:])
        acting = single if kind == "deq" or model.form != "eq57" else single[1:]
        layers_m = [m.cell.layer] if kind == "deq" else list(m.layers)
        acting_m = [layer.W for layer in layers_m][len(single) - len(acting):]
        radii = []
        for k in range(1, len(acting_m) + 1):
            res = ops.linear_radius([ops._conv_op(w) for w in acting_m[:k]], shape, gen,
                                    max_iter=power_iters, tol=tol)
            radii.append(float(res.rho[0]))
        layer_radii = [float(ops.linear_radius([ops._conv_op(w)], shape, gen,
                                               max_iter=power_iters, tol=tol).rho[0])
                       for w in acting_m]
        if radii:
            rep = SpectrumReport(kind, torch.tensor([radii[-1]], dtype=torch.complex128),
                                 radii, layer_radii, [])
        else:  # a one-layer eq57 FFW: no matrix acts on a non-zero state
            rep = SpectrumReport(kind, torch.ones(1, dtype=torch.complex128), [], [], [])
    if kind == "deq" and x is not None:
        rep.jac_rho, rep.jac_converged = deq_jacobian_radius(model, x, generator=gen,
                                                             max_iter=power_iters, tol=tol)
    return rep


def deq_jacobian_radius(
    model: nn.Module, x: Tensor, *, generator: torch.Generator, max_iter: int = 2000,
    tol: float = 1e-4,
) -> tuple[Tensor, Tensor]:
    """ρ(∂f/∂z) at the clean fixed point z* of each input (batched power method on JVPs)."""
    kind = check_model(model)
    if kind != "deq":
        raise NoisyDEQError("spectrum: ρ(∂f/∂z) is defined for a DEQ cell")
    x = x.to(torch.float64)
    m = prepared(model, x)
    xt = inputs_to_injection(m, x)
    if not is_mlp_model(model):
        from noisydeq.analysis import operators as ops

        shape = ops._state_shape(m, xt)

        def f(z: Tensor, xi: Tensor, c: Tensor) -> Tensor:
            return m.cell(z.reshape(z.shape[0], *shape), c).reshape(z.shape[0], -1)

        z0 = xt.new_zeros(xt.shape[0], math.prod(shape))
        with torch.no_grad():
            z_fp, ok = ops.solve_fixed_point(lambda z: f(z, z, xt), z0)
        res = spectra.jacobian_spectral_radius(
            jvp_fn(f, z_fp, z_fp, xt), z_fp.shape, generator, dtype=xt.dtype,
            device=xt.device, max_iter=max_iter, tol=tol)
        rho = torch.where(ok, res.rho, torch.full_like(res.rho, math.nan))
        return rho, res.converged & ok

    def f(z: Tensor, xi: Tensor, c: Tensor) -> Tensor:
        return m.cell(z, c)

    zeros = torch.zeros_like(xt)
    fp = fixed_point(f, zeros, zeros, xt, tol=1e-10)
    res = spectra.jacobian_spectral_radius(
        jvp_fn(f, fp.z, zeros, xt), xt.shape, generator, dtype=xt.dtype, device=xt.device,
        max_iter=max_iter, tol=tol,
    )
    rho = torch.where(fp.converged, res.rho, torch.full_like(res.rho, math.nan))
    return rho, res.converged & fp.converged


@dataclass
class BoundReport:
    """Eq. 12 bounds of one model next to nothing else (the caller adds the measurement)."""

    paper: float
    norm: float


def eq12_bounds(model: nn.Module, eta: float, lip: float = 1.0) -> BoundReport:
    """Eq. 12 (paper form with ρ, and the guaranteed norm form) for additive noise η.

    Defined for the MLP cell of Eq. 57 only; NaN for other cells.
    """
    if not is_mlp_model(model):
        return BoundReport(math.nan, math.nan)
    kind = check_mlp_model(model)
    if kind == "deq":
        W = deq_weight(model)
        return BoundReport(bounds.deq_bound_paper(spectra.spectral_radius(W), eta, lip),
                           bounds.deq_bound_norm(W, eta, lip))
    path = ffw_noise_path(model)
    rhos = spectra.product_spectral_radii(path)
    return BoundReport(bounds.ffw_bound_paper(rhos, model.depth, eta, lip),
                       bounds.ffw_bound_norm(path, eta, lip))
