"""2-D convolutional cells for image inputs: z ← tanh(conv_W(z) + b + x̃), x̃ = act(conv_U(x)).

The convolutional analogue of Eq. 57 (the paper's adversarial MNIST models, App. E.3, use a
single weight-normalised conv layer as the unit cell). State z has shape (B, C, H, W) with
'same' padding, so the image size is kept. Noise sites as for the MLP cell: ``input`` (x
before conv_U, once per forward), ``state`` (z before conv_W), ``signal`` (pre-activation),
multiplicative noise normalised per sample over all C·H·W elements. Heads average-pool the
state to ``pool``×``pool`` and apply one ``nn.Linear``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm as _weight_norm

from noisydeq.errors import NoisyDEQError
from noisydeq.limits import check_positive
from noisydeq.models.cells import ProjectedCell, apply_noise, input_activation
from noisydeq.models.deq import DEQ
from noisydeq.models.ffw import DEFAULT_FFW_FORM, FFW, check_form
from noisydeq.noise import Noise
from noisydeq.specs.solver import GradientSpec, JacobianRegSpec, SolverSpec


def image_shape(in_features: int, in_shape: Sequence[int] | None = None) -> tuple[int, int, int]:
    """(C, H, W) of the input: ``in_shape`` if given, else one square channel of in_features."""
    if in_shape is None:
        side = int(round(in_features**0.5))
        if side * side != in_features:
            raise NoisyDEQError(
                f"in_shape: in_features={in_features} is not a square image; give [C, H, W]"
            )
        return (1, side, side)
    shape = tuple(int(s) for s in in_shape)
    if len(shape) != 3 or min(shape) <= 0:
        raise NoisyDEQError(f"in_shape: must be three positive integers [C, H, W], got {shape}")
    if shape[0] * shape[1] * shape[2] != in_features:
        raise NoisyDEQError(f"in_shape: {list(shape)} does not hold in_features={in_features}")
    return shape  # type: ignore[return-value]


def _check_kernel(kernel_size: int) -> int:
    check_positive("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise NoisyDEQError(f"kernel_size: must be odd ('same' padding), got {kernel_size}")
    return kernel_size


class ConvInputProjection(nn.Module):
    """x̃ = act(conv_U(x + ε_x)); flat inputs (B, C·H·W) are reshaped to (B, C, H, W)."""

    def __init__(
        self, in_shape: Sequence[int], channels: int, input_act: str = "relu", kernel_size: int = 3
    ) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.act = input_activation(input_act)
        k = _check_kernel(kernel_size)
        self.U = nn.Conv2d(self.in_shape[0], check_positive("channels", channels), k,
                           padding=k // 2, bias=False)

    def forward(self, x: Tensor, noise: Noise | None = None) -> Tensor:
        if x.ndim == 2:
            x = x.reshape(x.shape[0], *self.in_shape)
        return self.act(self.U(apply_noise(noise, "input", x)))


class ConvTanhLayer(nn.Module):
    """z ← tanh(conv_W(z + ε_z) + b + x̃ (+ ε_s)), optionally weight-normalised conv_W."""

    def __init__(self, channels: int, kernel_size: int = 3, weight_norm: bool = True) -> None:
        super().__init__()
        self.width = check_positive("channels", channels)
        k = _check_kernel(kernel_size)
        conv = nn.Conv2d(channels, channels, k, padding=k // 2, bias=True)
        self.W = _weight_norm(conv) if weight_norm else conv

    def forward(self, z: Tensor, xt: Tensor, noise: Noise | None = None) -> Tensor:
        s = self.W(apply_noise(noise, "state", z)) + xt
        return torch.tanh(apply_noise(noise, "signal", s))

    def hidden_weight_count(self, include_bias: bool = True) -> int:
        """C²k² weights (+ C biases) of conv_W (the effective weight under weight norm)."""
        n = self.W.weight.numel()
        return n + (self.W.bias.numel() if include_bias else 0)


class ConvCell(ProjectedCell, ConvTanhLayer):
    """The conv DEQ unit cell with its own input-injection conv (App. E.3)."""

    def __init__(
        self,
        in_shape: Sequence[int],
        channels: int,
        input_act: str = "relu",
        kernel_size: int = 3,
        weight_norm: bool = True,
    ) -> None:
        super().__init__(channels, kernel_size, weight_norm)
        self.proj = ConvInputProjection(in_shape, channels, input_act, kernel_size)


class PooledHead(nn.Module):
    """Average-pool (B, C, H, W) to (B, C, p, p), flatten, one ``nn.Linear``."""

    def __init__(self, channels: int, out_features: int, pool: int = 4) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(check_positive("pool", pool))
        check_positive("out_features", out_features)
        self.linear = nn.Linear(channels * pool * pool, out_features)

    def forward(self, z: Tensor) -> Tensor:
        return self.linear(self.pool(z).flatten(1))


class ConvDEQ(DEQ):
    """DEQ with a :class:`ConvCell`; ``width`` is the number of channels."""

    def __init__(
        self,
        in_features: int,
        channels: int,
        out_features: int,
        input_act: str = "relu",
        solver: SolverSpec | None = None,
        gradient: GradientSpec | None = None,
        jac_reg: JacobianRegSpec | None = None,
        *,
        test_solver: SolverSpec | None = None,
        depth: int = 1,
        in_shape: Sequence[int] | None = None,
        kernel_size: int = 3,
        weight_norm: bool = True,
        pool: int = 4,
    ) -> None:
        nn.Module.__init__(self)
        shape = image_shape(in_features, in_shape)
        self.cell = ConvCell(shape, channels, input_act, kernel_size, weight_norm)
        self.head = PooledHead(channels, out_features, pool)
        self._configure(
            in_features, out_features, input_act, channels, depth, solver, gradient, jac_reg,
            test_solver,
        )


class ConvFFW(FFW):
    """FFW of ``depth`` distinct conv layers, shared conv injection and pooled head."""

    def __init__(
        self,
        in_features: int,
        channels: int,
        depth: int,
        out_features: int,
        input_act: str = "relu",
        *,
        form: str = DEFAULT_FFW_FORM,
        in_shape: Sequence[int] | None = None,
        kernel_size: int = 3,
        weight_norm: bool = True,
        pool: int = 4,
    ) -> None:
        nn.Module.__init__(self)
        shape = image_shape(in_features, in_shape)
        self._record_sizes(in_features, out_features, input_act, channels, depth)
        self.form = check_form(form)
        self.proj = ConvInputProjection(shape, channels, input_act, kernel_size)
        self.layers = nn.ModuleList(
            ConvTanhLayer(channels, kernel_size, weight_norm) for _ in range(depth)
        )
        self.head = PooledHead(channels, out_features, pool)
