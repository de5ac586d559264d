"""A multiscale DEQ (Bai, Koltun & Kolter 2020; the paper's CIFAR-10 model, §4.1.2, Tables 3-4).

The state holds ``scales`` feature maps at resolutions H, ⌈H/2⌉, ⌈H/4⌉, … with ``width``,
2·``width``, 4·``width``, … channels, packed into one vector per sample (B, Σ_i c_i h_i w_i)
so the package's solvers, noise and gradients see an ordinary state. The injection is packed
the same way: x̃_i = act(conv_U,i(pool_i(x + ε_x))), the input average-pooled to each scale.
One cell call:

1. a residual branch per scale i (GroupNorm, weight-normalised convolutions)::

       h_i = tanh(GN(conv₁(z̃_i) + x̃_i) (+ ε_s)),   b_i = conv₂(h_i) + ½ z̃_i

   with z̃ = z + ε_z (the ``state`` site, on the packed state);
2. multi-resolution fusion: y_i = Σ_j T_ij(b_j), where T_ii is the identity, a finer scale
   j < i is brought down by i − j stride-2 3×3 convolutions (GroupNorm after each, tanh
   between them) and a coarser one j > i by a 1×1 convolution, GroupNorm and
   nearest-neighbour upsampling;
3. z_i ← tanh(y_i (+ ε_s)).

Every pre-activation in a branch and after fusion is a ``signal`` site (the paper's Fig. 6:
"noise is added to the pre-activation signal in a unit cell … and each branch"). The
convolutions are weight-normalised with the device-mappable form of
:mod:`noisydeq.models.wnconv`; GroupNorm stays digital on hardware.

Differences from MDEQ, and why. MDEQ injects at the top scale only, normalises conv₁(z),
conv₂(h) + x̃ and the fused sum, and adds the full skip z. A GroupNorm of a quantity
proportional to z alone is invariant to the scale of z, so its Jacobian grows like γ/σ(z):
with that placement, plain unrolling of a small random cell in float64 did not converge in
300 iterations for any GroupNorm gain γ tried (0.05 … 1; Broyden converged), which rules out
the unrolled and stochastic solvers the paper compares. Here every normalised quantity
contains a z-independent part (x̃_i) and the fusion is not normalised. A full skip under a
tanh, z ← tanh(z + r), has Jacobian → 1 wherever the pre-activation is near zero (measured:
spectral radius 1.00–1.06 at the unrolled state of a random cell whatever the weight
scale, and unrolling still not converged after 500 iterations); the skip is therefore
weighted by ½ (:data:`SKIP`), and with small convolution weights the cell is a
contraction. tanh replaces MDEQ's ReLU (the package's cells are Eq. 57 cells). The head
average-pools each scale to ``pool``×``pool`` (or its own size if smaller), concatenates
and applies one ``nn.Linear``.

:class:`MultiscaleFFW` is the feed-forward counterpart: ``depth`` distinct multiscale cells
applied once each with the injection at each, started per the FFW ``form`` of
:class:`~noisydeq.models.FFW` (default ``eq57x``: z⁰ = x̃ packed; ``eq57``: z⁰ = 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisydeq.errors import NoisyDEQError
from noisydeq.models.cells import ProjectedCell, apply_noise, check_positive, input_activation
from noisydeq.models.conv import image_shape
from noisydeq.models.deq import DEQ
from noisydeq.models.ffw import DEFAULT_FFW_FORM, FFW, check_form
from noisydeq.models.spatial import check_kernel, count_params
from noisydeq.models.wnconv import conv
from noisydeq.noise import Noise
from noisydeq.specs.solver import GradientSpec, JacobianRegSpec, SolverSpec

MAX_SCALES = 4


def scale_channels(width: int, scales: int) -> list[int]:
    """Channels per scale: width, 2·width, 4·width, … (MDEQ doubles them per scale)."""
    return [width * 2**i for i in range(scales)]


def scale_sizes(h: int, w: int, scales: int) -> list[tuple[int, int]]:
    """Spatial sizes per scale: each a stride-2 convolution (padding 1) of the previous."""
    out = [(h, w)]
    for _ in range(scales - 1):
        h, w = (h + 1) // 2, (w + 1) // 2
        out.append((h, w))
    return out


def check_scales(width: int, scales: int, groups: int) -> None:
    check_positive("width", width)
    check_positive("norm_groups", groups)
    if isinstance(scales, bool) or not isinstance(scales, int) or not 1 <= scales <= MAX_SCALES:
        raise NoisyDEQError(f"scales: must be an integer in 1..{MAX_SCALES}, got {scales!r}")
    if width % groups:
        raise NoisyDEQError(
            f"width: {width} channels cannot be split into norm_groups={groups} GroupNorm "
            f"groups; use a multiple of {groups}"
        )


#: weight of the skip connection in a branch (see the module docstring)
SKIP = 0.5


class Branch(nn.Module):
    """The residual block of one scale: h = tanh(GN(conv₁ z + x̃)), b = conv₂ h + ½ z."""

    def __init__(self, channels: int, kernel_size: int, groups: int, weight_norm: bool):
        super().__init__()
        # no bias before a normalisation (its mean removal cancels it)
        self.conv1 = conv(2, channels, channels, kernel_size, bias=False,
                          weight_norm=weight_norm)
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv2 = conv(2, channels, channels, kernel_size, weight_norm=weight_norm)

    def forward(self, z: Tensor, inj: Tensor, noise: Noise | None) -> Tensor:
        h = torch.tanh(apply_noise(noise, "signal", self.norm1(self.conv1(z) + inj)))
        return self.conv2(h) + SKIP * z


class Down(nn.Module):
    """Scale j → scale i > j: i − j stride-2 3×3 convolutions, tanh between them."""

    def __init__(self, c_in: int, c_out: int, steps: int, weight_norm: bool):
        super().__init__()
        mods: list[nn.Module] = []
        for s in range(steps):
            last = s == steps - 1
            out = c_out if last else c_in
            mods.append(conv(2, c_in, out, 3, bias=False, weight_norm=weight_norm, stride=2))
            if not last:
                mods.append(nn.Tanh())
        self.seq = nn.Sequential(*mods)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return self.seq(x)


class Up(nn.Module):
    """Scale j → scale i < j: 1×1 convolution, nearest upsampling to scale i."""

    def __init__(self, c_in: int, c_out: int, weight_norm: bool):
        super().__init__()
        self.conv = conv(2, c_in, c_out, 1, bias=False, weight_norm=weight_norm)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(self.conv(x), size=size, mode="nearest")


class Packing:
    """Per-scale shapes of a top-scale map of size ``hw`` and (un)packing to (B, D)."""

    def __init__(self, width: int, scales: int, hw: Sequence[int]) -> None:
        self.channels = scale_channels(width, scales)
        self.sizes = scale_sizes(int(hw[0]), int(hw[1]), scales)
        self.numels = [c * h * w for c, (h, w) in zip(self.channels, self.sizes, strict=True)]

    @property
    def size(self) -> int:
        """Elements of the packed state."""
        return sum(self.numels)

    def unpack(self, z: Tensor) -> list[Tensor]:
        """The per-scale maps (B, c_i, h_i, w_i) of a packed tensor (B, D)."""
        if z.ndim != 2 or z.shape[1] != self.size:
            raise NoisyDEQError(f"multiscale state: expected (B, {self.size}), got "
                                f"{tuple(z.shape)}")
        parts = torch.split(z, self.numels, dim=1)
        return [p.reshape(z.shape[0], c, h, w)
                for p, c, (h, w) in zip(parts, self.channels, self.sizes, strict=True)]

    @staticmethod
    def pack(maps: Sequence[Tensor]) -> Tensor:
        return torch.cat([t.flatten(1) for t in maps], dim=1)


class MultiscaleLayer(nn.Module):
    """One multiscale cell call on packed state and injection: branches, fusion, tanh."""

    def __init__(self, width: int, scales: int, hw: Sequence[int], kernel_size: int = 3,
                 norm_groups: int = 4, weight_norm: bool = True) -> None:
        super().__init__()
        check_scales(width, scales, norm_groups)
        k = check_kernel(kernel_size)
        self.width, self.scales = width, scales
        self.packing = Packing(width, scales, hw)
        channels, g = self.packing.channels, norm_groups
        self.branches = nn.ModuleList(Branch(c, k, g, weight_norm) for c in channels)
        self.fuse = nn.ModuleList()
        for i, ci in enumerate(channels):
            row = nn.ModuleList()
            for j, cj in enumerate(channels):
                if j == i:
                    row.append(nn.Identity())
                elif j < i:
                    row.append(Down(cj, ci, i - j, weight_norm))
                else:
                    row.append(Up(cj, ci, weight_norm))
            self.fuse.append(row)

    def forward(self, z: Tensor, xt: Tensor, noise: Noise | None = None) -> Tensor:
        zs = self.packing.unpack(apply_noise(noise, "state", z))
        xs = self.packing.unpack(xt)
        b = [br(zi, xi, noise) for br, zi, xi in zip(self.branches, zs, xs, strict=True)]
        out = []
        for i, row in enumerate(self.fuse):
            size = self.packing.sizes[i]
            y = sum(b[j] if j == i else t(b[j], size) for j, t in enumerate(row))
            out.append(torch.tanh(apply_noise(noise, "signal", y)))
        return self.packing.pack(out)

    def hidden_weight_count(self, include_bias: bool = True) -> int:
        """Parameters of the branches and the fusion (not the projection)."""
        return count_params(self.branches, include_bias) + count_params(self.fuse, include_bias)


class MultiscaleProjection(nn.Module):
    """x̃_i = act(conv_U,i(pool_i(x + ε_x))) for every scale, packed; flat inputs reshaped."""

    def __init__(self, in_shape: Sequence[int], width: int, scales: int, input_act: str,
                 kernel_size: int) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.act = input_activation(input_act)
        self.packing = Packing(width, scales, self.in_shape[1:])
        k = check_kernel(kernel_size)
        self.U = nn.ModuleList(conv(2, self.in_shape[0], c, k, bias=False)
                               for c in self.packing.channels)

    def forward(self, x: Tensor, noise: Noise | None = None) -> Tensor:
        if x.ndim == 2:
            x = x.reshape(x.shape[0], *self.in_shape)
        x = apply_noise(noise, "input", x)
        maps = [self.act(U(x if i == 0 else F.adaptive_avg_pool2d(x, size)))
                for i, (U, size) in enumerate(zip(self.U, self.packing.sizes, strict=True))]
        return self.packing.pack(maps)


class MultiscaleHead(nn.Module):
    """Average-pool each scale to at most ``pool``×``pool``, concatenate, one ``nn.Linear``."""

    def __init__(self, packing: Packing, out_features: int, pool: int) -> None:
        super().__init__()
        check_positive("pool", pool)
        self.packing = packing
        self.pools = [(min(pool, h), min(pool, w)) for h, w in packing.sizes]
        feats = sum(c * p * q for c, (p, q) in zip(packing.channels, self.pools, strict=True))
        self.linear = nn.Linear(feats, check_positive("out_features", out_features))

    def forward(self, z: Tensor) -> Tensor:
        maps = self.packing.unpack(z)
        feats = torch.cat([F.adaptive_avg_pool2d(t, p).flatten(1)
                           for t, p in zip(maps, self.pools, strict=True)], dim=1)
        return self.linear(feats)


class MultiscaleCell(ProjectedCell, MultiscaleLayer):
    """The MDEQ unit cell with its input projection."""

    def __init__(self, in_shape: Sequence[int], width: int, scales: int, input_act: str,
                 kernel_size: int, norm_groups: int, weight_norm: bool) -> None:
        super().__init__(width, scales, tuple(in_shape)[1:], kernel_size, norm_groups,
                         weight_norm)
        self.proj = MultiscaleProjection(in_shape, width, scales, input_act, kernel_size)


class MDEQ(DEQ):
    """Multiscale DEQ: ``width`` channels at the top scale, ``scales`` resolutions."""

    def __init__(
        self,
        in_features: int,
        width: int,
        out_features: int,
        input_act: str = "relu",
        solver: SolverSpec | None = None,
        gradient: GradientSpec | None = None,
        jac_reg: JacobianRegSpec | None = None,
        *,
        test_solver: SolverSpec | None = None,
        depth: int = 1,
        in_shape: Sequence[int] | None = None,
        scales: int = 2,
        kernel_size: int = 3,
        norm_groups: int = 4,
        weight_norm: bool = True,
        pool: int = 4,
    ) -> None:
        nn.Module.__init__(self)
        shape = image_shape(in_features, in_shape)
        self.scales = scales
        self.cell = MultiscaleCell(shape, width, scales, input_act, kernel_size, norm_groups,
                                   weight_norm)
        self.head = MultiscaleHead(self.cell.packing, out_features, pool)
        self._configure(in_features, out_features, input_act, width, depth, solver, gradient,
                        jac_reg, test_solver)


class MultiscaleFFW(FFW):
    """``depth`` distinct multiscale cells, x̃ injected at each, z⁰ per ``form``."""

    def __init__(
        self,
        in_features: int,
        width: int,
        depth: int,
        out_features: int,
        input_act: str = "relu",
        *,
        form: str = DEFAULT_FFW_FORM,
        in_shape: Sequence[int] | None = None,
        scales: int = 2,
        kernel_size: int = 3,
        norm_groups: int = 4,
        weight_norm: bool = True,
        pool: int = 4,
    ) -> None:
        nn.Module.__init__(self)
        shape = image_shape(in_features, in_shape)
        self._record_sizes(in_features, out_features, input_act, width, depth)
        self.form = check_form(form)
        self.scales = scales
        self.proj = MultiscaleProjection(shape, width, scales, input_act, kernel_size)
        self.layers = nn.ModuleList(
            MultiscaleLayer(width, scales, shape[1:], kernel_size, norm_groups, weight_norm)
            for _ in range(depth))
        self.head = MultiscaleHead(self.proj.packing, out_features, pool)


def multiscale_params(width: int, scales: int, kernel_size: int = 3, norm_groups: int = 4,
                      weight_norm: bool = True) -> int:
    """Parameters of one multiscale cell (without projection), counted on the meta device."""
    with torch.device("meta"):
        layer = MultiscaleLayer(width, scales, (8, 8), kernel_size, norm_groups, weight_norm)
    return layer.hidden_weight_count()


def matched_multiscale_width(depth: int, width: int, scales: int, kernel_size: int = 3,
                             norm_groups: int = 4, weight_norm: bool = True) -> int:
    """The MDEQ width (a multiple of ``norm_groups``) whose cell has about ``depth`` times the
    parameters of a cell of ``width`` (App. E.1's matching, counted exactly)."""
    target = depth * multiscale_params(width, scales, kernel_size, norm_groups, weight_norm)
    guess = width * math.sqrt(depth)
    candidates = {max(norm_groups, norm_groups * round(guess / norm_groups) + d * norm_groups)
                  for d in range(-3, 4)}
    return min(sorted(candidates), key=lambda w: abs(
        multiscale_params(w, scales, kernel_size, norm_groups, weight_norm) - target))
