"""Turn the package's cells and models into the plain callables the analyses differentiate.

A :class:`ReplayStream` hands a given tensor ξ to the model's own noise code instead of a
random draw, so the perturbed cell f(z, ξ, x̃) is exactly the one the model runs (same site,
same additive η ξ of Eq. 8 or multiplicative ‖s‖-scaled noise of Eq. 3-4/22-23) and is
differentiable in ξ.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from noisydeq.errors import NoisyDEQError
from noisydeq.noise import Noise, NoiseStream
from noisydeq.specs.noise import NoiseSpec

ITERATED_SITES = ("signal", "state")


class ReplayStream(NoiseStream):
    """A noise stream whose every draw is the given tensor ξ (shape checked)."""

    def __init__(self, xi: Tensor) -> None:
        super().__init__([0])
        self.xi = xi

    def randn(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        if tuple(shape) != tuple(self.xi.shape):
            raise NoisyDEQError(
                f"noise vector has shape {tuple(self.xi.shape)}, the site needs {tuple(shape)}"
            )
        return self.xi

    def rand(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        raise NoisyDEQError("sensitivity analysis supports Gaussian noise only")


def check_noise_spec(spec: NoiseSpec) -> NoiseSpec:
    """A noise spec injected at every iteration/layer: site ``signal`` or ``state``, active."""
    if spec.site not in ITERATED_SITES:
        raise NoisyDEQError(
            f"noise site: '{spec.site}' is not injected at every iteration "
            f"(allowed: {', '.join(ITERATED_SITES)})"
        )
    if spec.kind == "additive" and spec.eta <= 0:
        raise NoisyDEQError(f"eta: additive noise needs eta > 0, got {spec.eta:g}")
    if spec.kind == "multiplicative" and not torch.isfinite(torch.tensor(spec.snr_db)):
        raise NoisyDEQError("snr_db: multiplicative noise needs a finite SNR in dB")
    return spec


def noisy(spec: NoiseSpec, xi: Tensor) -> Noise:
    """A :class:`Noise` injector at ``spec.site`` that always draws ``xi``."""
    return Noise(spec, ReplayStream(xi))


def cell_fn(cell: nn.Module, spec: NoiseSpec) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """f(z, ξ, x̃) = cell(z, x̃, noise=ξ at ``spec.site``): a DEQ cell, fixed noise (Eq. 8/22)."""
    check_noise_spec(spec)

    def f(z: Tensor, xi: Tensor, xt: Tensor) -> Tensor:
        return cell(z, xt, noisy(spec, xi))

    return f


def layers_fn(
    layers: Sequence[nn.Module], spec: NoiseSpec, step: Callable[..., Tensor] | None = None,
    start: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
) -> Callable[[Tensor, Tensor], Tensor]:
    """forward(ξ, x̃) = z_m of a stack of layers, the same ξ at every layer (Eq. 10/41).

    ``step(layer, z, inj, noise)`` is one layer (default: ``layer(z, inj, noise)``).
    ``start(x̃)`` gives (z⁰, the injection added at every layer) — an FFW's
    :meth:`~noisydeq.models.FFW.start`; default (0, x̃), a DEQ started at z⁰ = 0.
    """
    check_noise_spec(spec)
    one = step or (lambda layer, z, inj, noise: layer(z, inj, noise))
    begin = start or (lambda xt: (torch.zeros_like(xt), xt))

    def forward(xi: Tensor, xt: Tensor) -> Tensor:
        z, inj = begin(xt)
        for layer in layers:
            z = one(layer, z, inj, noisy(spec, xi))
        return z

    return forward
