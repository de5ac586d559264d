"""Per-position convolutional DEQs and FFWs for the algorithmic tasks (paper App. E.4, Fig. 18).

The state keeps the input's layout — (B, C, L) for bit strings (``ndim = 1``), (B, C, H, W)
for mazes (``ndim = 2``) — with 'same' padding, so one model runs on inputs of any length or
size, and the head predicts one class per position. Two unit cells:

* ``conv1d`` (prefix sums, App. E.4: "one conv1d with 6 hidden channels and a kernel size of
  3, followed by a Tanh"): z ← tanh(conv_W(z + ε_z) + b + x̃ (+ ε_s)), the conv analogue of
  Eq. 57 (:class:`ConvLayer`, any ``ndim``).
* ``residual`` (mazes, App. E.4: "residual block structure with two convolutions … no
  normalization … Tanh"): h = tanh(conv₁(z + ε_z) + b₁ + x̃ (+ ε_s)),
  z ← tanh(conv₂(h + ε_h) + b₂ + (z + ε_z) (+ ε_s)) (:class:`ResidualLayer`).

x̃ = act(conv_U(x + ε_x)) is injected into the first pre-activation at every iteration.
Noise sites as for the MLP cell (``input`` once per forward; ``state`` and ``signal`` at every
cell call: ``state`` on every hidden map entering a convolution, ``signal`` at each
pre-activation), multiplicative noise normalised per sample over all C·L (or C·H·W)
elements. The FFW counterparts stack ``depth`` distinct layers of the same kind with the
injection at each, started per the FFW ``form`` of :class:`~noisydeq.models.FFW` (default
``eq57x``: z⁰ = x̃, so the first layer's convolutions act; ``eq57``: z⁰ = 0); the paper's
maze FFW is the one-block case. The head is one convolution to the class scores per
position, shared by DEQ and FFW.

In eval mode a :class:`SpatialDEQ` with a ``budget`` scales the test solver's iteration cap
with the input size (:mod:`noisydeq.models.budget`): information crosses one kernel radius per
iteration, so a longer string or a larger maze needs proportionally more iterations.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from noisydeq.errors import NoisyDEQError
from noisydeq.models.budget import IterationBudget
from noisydeq.models.cells import ProjectedCell, apply_noise, check_positive, input_activation
from noisydeq.models.deq import DEQ
from noisydeq.models.ffw import DEFAULT_FFW_FORM, FFW, check_form
from noisydeq.models.wnconv import conv
from noisydeq.noise import Noise
from noisydeq.specs.solver import GradientSpec, JacobianRegSpec, SolverSpec

SpatialCell = Literal["conv1d", "residual"]
SPATIAL_CELLS = ("conv1d", "residual")


def check_kernel(kernel_size: int) -> int:
    """An odd positive kernel size ('same' padding keeps the length/size)."""
    check_positive("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise NoisyDEQError(f"kernel_size: must be odd ('same' padding), got {kernel_size}")
    return kernel_size


def check_ndim(ndim: int) -> int:
    if ndim not in (1, 2):
        raise NoisyDEQError(f"ndim: per-position models are 1-d (strings) or 2-d (images), "
                            f"got {ndim}")
    return ndim


def count_params(module: nn.Module, include_bias: bool = True) -> int:
    """Trainable parameters of ``module``; without biases when ``include_bias`` is False."""
    return sum(p.numel() for n, p in module.named_parameters()
               if p.requires_grad and (include_bias or not n.endswith("bias")))


class SpatialProjection(nn.Module):
    """x̃ = act(conv_U(x + ε_x)), conv_U without bias (the cell bias carries the offset)."""

    def __init__(self, in_channels: int, width: int, input_act: str, kernel_size: int,
                 ndim: int, weight_norm: bool = False) -> None:
        super().__init__()
        self.ndim = check_ndim(ndim)
        self.act = input_activation(input_act)
        self.U = conv(ndim, check_positive("in_channels", in_channels),
                      check_positive("width", width), check_kernel(kernel_size), bias=False,
                      weight_norm=weight_norm)

    def forward(self, x: Tensor, noise: Noise | None = None) -> Tensor:
        if x.ndim != self.ndim + 2:
            shape = "(B, C, L)" if self.ndim == 1 else "(B, C, H, W)"
            raise NoisyDEQError(f"input: a {self.ndim}-d per-position model needs inputs "
                                f"{shape}, got shape {tuple(x.shape)}")
        return self.act(self.U(apply_noise(noise, "input", x)))


class ConvLayer(nn.Module):
    """z ← tanh(conv_W(z + ε_z) + b + x̃ (+ ε_s)): the conv1d unit cell (App. E.4)."""

    def __init__(self, width: int, kernel_size: int, ndim: int, weight_norm: bool = False):
        super().__init__()
        self.width = check_positive("width", width)
        self.W = conv(ndim, width, width, check_kernel(kernel_size), weight_norm=weight_norm)

    def forward(self, z: Tensor, xt: Tensor, noise: Noise | None = None) -> Tensor:
        s = self.W(apply_noise(noise, "state", z)) + xt
        return torch.tanh(apply_noise(noise, "signal", s))

    def hidden_weight_count(self, include_bias: bool = True) -> int:
        return count_params(self, include_bias)


class ResidualLayer(nn.Module):
    """Two convolutions with a skip: h = tanh(conv₁(z̃) + b₁ + x̃), z ← tanh(conv₂(h̃) + b₂ + z̃).

    The ``state`` site perturbs both hidden maps entering a convolution: z̃ = z + ε_z (which
    feeds the first convolution and the skip) and h̃ = h + ε_h — so the one-block FFW, whose
    block acts on z⁰ = 0, still has a noisy hidden state; each pre-activation is a
    ``signal`` site. No normalisation (App. E.4).
    """

    def __init__(self, width: int, kernel_size: int, ndim: int, weight_norm: bool = False):
        super().__init__()
        self.width = check_positive("width", width)
        k = check_kernel(kernel_size)
        self.W1 = conv(ndim, width, width, k, weight_norm=weight_norm)
        self.W2 = conv(ndim, width, width, k, weight_norm=weight_norm)

    def forward(self, z: Tensor, xt: Tensor, noise: Noise | None = None) -> Tensor:
        zn = apply_noise(noise, "state", z)
        h = torch.tanh(apply_noise(noise, "signal", self.W1(zn) + xt))
        h = apply_noise(noise, "state", h)
        return torch.tanh(apply_noise(noise, "signal", self.W2(h) + zn))

    def hidden_weight_count(self, include_bias: bool = True) -> int:
        return count_params(self, include_bias)


LAYERS = {"conv1d": ConvLayer, "residual": ResidualLayer}


def make_layer(cell: str, width: int, kernel_size: int, ndim: int, weight_norm: bool):
    if cell not in LAYERS:
        raise NoisyDEQError(f"cell: unknown per-position cell '{cell}' "
                            f"(allowed: {', '.join(LAYERS)})")
    return LAYERS[cell](width, kernel_size, ndim, weight_norm)


class SpatialCellModule(ProjectedCell, nn.Module):
    """A DEQ unit cell (conv1d or residual layer) with its own input projection."""

    def __init__(self, cell: str, in_channels: int, width: int, input_act: str,
                 kernel_size: int, ndim: int, weight_norm: bool) -> None:
        super().__init__()
        self.proj = SpatialProjection(in_channels, width, input_act, kernel_size, ndim,
                                      weight_norm)
        self.layer = make_layer(cell, width, kernel_size, ndim, weight_norm)

    def forward(self, z: Tensor, xt: Tensor, noise: Noise | None = None) -> Tensor:
        return self.layer(z, xt, noise)

    def hidden_weight_count(self, include_bias: bool = True) -> int:
        return self.layer.hidden_weight_count(include_bias)


class PositionHead(nn.Module):
    """Class scores per position: one 'same' convolution width → out_features."""

    def __init__(self, width: int, out_features: int, kernel_size: int, ndim: int) -> None:
        super().__init__()
        self.conv = conv(ndim, width, check_positive("out_features", out_features),
                         check_kernel(kernel_size))

    def forward(self, z: Tensor) -> Tensor:
        return self.conv(z)


class SpatialDEQ(DEQ):
    """DEQ with a per-position cell (``conv1d`` or ``residual``); ``width`` = channels.

    ``in_features`` is the number of input channels. ``budget``: in eval mode the test
    solver's ``max_iter`` is scaled with the input's size (:class:`IterationBudget`).
    """

    def __init__(
        self,
        cell: str,
        in_features: int,
        width: int,
        out_features: int,
        input_act: str = "identity",
        solver: SolverSpec | None = None,
        gradient: GradientSpec | None = None,
        jac_reg: JacobianRegSpec | None = None,
        *,
        test_solver: SolverSpec | None = None,
        depth: int = 1,
        ndim: int = 1,
        kernel_size: int = 3,
        weight_norm: bool = False,
        budget: IterationBudget | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self.cell_name = cell
        self.ndim = check_ndim(ndim)
        self.cell = SpatialCellModule(cell, in_features, width, input_act, kernel_size, ndim,
                                      weight_norm)
        self.head = PositionHead(width, out_features, kernel_size, ndim)
        self._configure(in_features, out_features, input_act, width, depth, solver, gradient,
                        jac_reg, test_solver)
        self.budget = budget
        self._size: int | None = None

    def active_solver(self) -> SolverSpec:
        """The mode's solver; in eval mode scaled to the current input size by ``budget``."""
        spec = super().active_solver()
        if self.training or self.budget is None or self._size is None:
            return spec
        return self.budget.solver_for(spec, self._size)

    def forward(self, x: Tensor, noise: Noise | None = None, **kw):
        self._size = int(x.shape[-1])  # length, or the side of a square image
        return super().forward(x, noise, **kw)


class SpatialFFW(FFW):
    """``depth`` distinct per-position layers (``conv1d`` or ``residual``), shared head."""

    def __init__(
        self,
        cell: str,
        in_features: int,
        width: int,
        depth: int,
        out_features: int,
        input_act: str = "identity",
        *,
        form: str = DEFAULT_FFW_FORM,
        ndim: int = 1,
        kernel_size: int = 3,
        weight_norm: bool = False,
    ) -> None:
        nn.Module.__init__(self)
        self.cell_name = cell
        self.ndim = check_ndim(ndim)
        self._record_sizes(in_features, out_features, input_act, width, depth)
        self.form = check_form(form)
        self.proj = SpatialProjection(in_features, width, input_act, kernel_size, ndim,
                                      weight_norm)
        self.layers = nn.ModuleList(make_layer(cell, width, kernel_size, ndim, weight_norm)
                                    for _ in range(depth))
        self.head = PositionHead(width, out_features, kernel_size, ndim)
