"""The fully connected unit cell of the paper: z ← tanh(W z + b + x̃), x̃ = act(U x) (Eq. 57).

Every matrix-vector product goes through an ``nn.Linear`` module's ``forward`` so that a
hardware device can swap the module for an analog one (``Device.deploy``). Noise sites
(paper Eq. 3-4 and §3.2, App. E.1):

* ``input``  — x before the projection U (applied by the model, once per forward: Eq. 3
  writes ε_x without an iteration index),
* ``state``  — z before W (ε_z^[m], redrawn at every cell call, Eq. 3),
* ``signal`` — the pre-activation W z + b + x̃ (redrawn at every cell call, App. E.1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from noisydeq.errors import NoisyDEQError
from noisydeq.limits import check_positive
from noisydeq.noise import Noise


def silu(x: Tensor) -> Tensor:
    """x·σ(x) = x / (1 + e^(−x)). Not ``F.silu``: on CPU its vectorised body and scalar tail
    round differently, so a sample's x̃ depended on its position in the batch."""
    return x / (torch.exp(-x) + 1.0)


INPUT_ACTS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "silu": silu,
    "identity": lambda t: t,
}


def input_activation(name: str) -> Callable[[Tensor], Tensor]:
    """The input-projection nonlinearity σ₂ of x̃ = σ₂(U x) (App. A.1, E.1-E.2)."""
    try:
        return INPUT_ACTS[name]
    except KeyError:
        allowed = ", ".join(INPUT_ACTS)
        msg = f"input_act: unknown activation '{name}' (allowed: {allowed})"
        raise NoisyDEQError(msg) from None


def apply_noise(noise: Noise | None, site: str, y: Tensor) -> Tensor:
    """``noise.apply(site, y)`` or ``y`` unchanged when there is no injector."""
    return y if noise is None else noise.apply(site, y)


class InputProjection(nn.Module):
    """x̃ = act(U x) with U an ``nn.Linear`` without bias (App. A.1: x̃ = σ₂(U x)).

    The cell bias b carries the offset, so U has none; input noise is applied to x before U.
    """

    def __init__(self, in_features: int, width: int, input_act: str = "relu") -> None:
        super().__init__()
        check_positive("in_features", in_features)
        check_positive("width", width)
        self.act_name = input_act
        self.act = input_activation(input_act)
        self.U = nn.Linear(in_features, width, bias=False)

    def forward(self, x: Tensor, noise: Noise | None = None) -> Tensor:
        """act(U (x + ε_x)) — the ``input`` site perturbs x (Eq. 3-4)."""
        return self.act(self.U(apply_noise(noise, "input", x)))


class TanhLayer(nn.Module):
    """One fully connected layer z ← tanh(W z + b + x̃) given x̃ (paper Eq. 57).

    ``W`` is ``nn.Linear(width, width)`` carrying the bias b. An FFW stacks several of these
    behind one shared :class:`InputProjection`; :class:`MLPCell` adds its own projection.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = check_positive("width", width)
        self.W = nn.Linear(width, width, bias=True)

    def preactivation(self, z: Tensor, xt: Tensor, noise: Noise | None = None) -> Tensor:
        """s = W (z + ε_z) + b + x̃, then the ``signal`` site: s + ε_s (Eq. 3-4, App. E.1)."""
        s = self.W(apply_noise(noise, "state", z)) + xt
        return apply_noise(noise, "signal", s)

    def forward(self, z: Tensor, xt: Tensor, noise: Noise | None = None) -> Tensor:
        """tanh(W z + b + x̃) with the ``state`` and ``signal`` noise sites (Eq. 57)."""
        return torch.tanh(self.preactivation(z, xt, noise))

    def hidden_weight_count(self, include_bias: bool = True) -> int:
        """Parameters of W: d² weights, plus d biases when ``include_bias``."""
        n = self.W.weight.numel()
        return n + (self.W.bias.numel() if include_bias and self.W.bias is not None else 0)


class ProjectedCell:
    """A DEQ unit cell that holds its own input projection ``proj`` (a module): ``project(x)``
    computes x̃ once per forward, ``forward(z, xt, noise)`` is one cell call."""

    proj: nn.Module

    def project(self, x: Tensor, noise: Noise | None = None) -> Tensor:
        """x̃ = proj(x + ε_x): the ``input`` site perturbs x before the projection (Eq. 3-4)."""
        return self.proj(x, noise)


class MLPCell(ProjectedCell, TanhLayer):
    """The DEQ unit cell f(z; x̃) = tanh(W z + b + x̃) with x̃ = act(U x) (Eq. 57, App. A.1)."""

    def __init__(self, in_features: int, width: int, input_act: str = "relu") -> None:
        super().__init__(width)
        self.proj = InputProjection(in_features, width, input_act)
