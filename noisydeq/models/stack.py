"""A unit cell of several fully connected tanh layers (paper App. E.4, matrix addition).

The matrix-addition DEQ has "an input dimensionality of 800 …, three hidden layers each with
512 units, and an output prediction dimensionality of 400, with Tanh activation functions.
No activation function is used for the input projection" (App. E.4). One cell call runs all
``layers`` layers; x̃ enters the first pre-activation (Eq. 57 applied to the first layer):

    h₀ = z,   h_i = tanh(W_i (h_{i−1} + ε_z) + b_i + [i = 1] x̃ (+ ε_s)),   f(z) = h_L.

The ``state`` site perturbs every hidden vector that enters a layer (z and the inner h_i),
the ``signal`` site every pre-activation. So a one-cell FFW of the ``eq57`` form (first layer on
z⁰ = 0, which multiplicative noise leaves at zero) still has noisy hidden states, as the
paper's "perturbation to z" of an FFW's hidden layers requires (App. D.4).

The FFW counterpart stacks ``depth`` such cells with distinct weights (the paper's FFW "has
the same architecture as the DEQ", i.e. depth 1, with a ReLU input projection), with the
injection at each, started per the FFW ``form`` (default ``eq57x``: z⁰ = x̃; ``eq57``:
z⁰ = 0). Parameter matching: L(d² + d) per cell, so a DEQ matched to ``depth`` FFW cells of
width h has d(d + 1) = depth · h(h + 1), as for Eq. 57.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from noisydeq.models.cells import InputProjection, ProjectedCell, apply_noise, check_positive
from noisydeq.models.deq import DEQ
from noisydeq.models.ffw import DEFAULT_FFW_FORM, FFW, check_form
from noisydeq.models.spatial import count_params
from noisydeq.noise import Noise
from noisydeq.specs.solver import GradientSpec, JacobianRegSpec, SolverSpec


class StackLayer(nn.Module):
    """``layers`` tanh layers of ``width`` units applied in one cell call (x̃ into the first)."""

    def __init__(self, width: int, layers: int = 3) -> None:
        super().__init__()
        self.width = check_positive("width", width)
        self.W = nn.ModuleList(nn.Linear(width, width) for _ in range(
            check_positive("layers", layers)))

    def forward(self, z: Tensor, xt: Tensor, noise: Noise | None = None) -> Tensor:
        h = z
        for i, lin in enumerate(self.W):
            h = apply_noise(noise, "state", h)  # every hidden vector entering a layer
            s = lin(h) + xt if i == 0 else lin(h)
            h = torch.tanh(apply_noise(noise, "signal", s))
        return h

    def hidden_weight_count(self, include_bias: bool = True) -> int:
        """L(d² + d) parameters of the layers (L·d² without biases); not the projection."""
        return count_params(self.W, include_bias)


class StackCell(ProjectedCell, StackLayer):
    """The DEQ cell: :class:`StackLayer` plus its input projection x̃ = act(U x)."""

    def __init__(self, in_features: int, width: int, layers: int = 3,
                 input_act: str = "identity") -> None:
        super().__init__(width, layers)
        self.proj = InputProjection(in_features, width, input_act)


class StackDEQ(DEQ):
    """DEQ whose cell is ``layers`` fully connected tanh layers of ``width`` (App. E.4)."""

    def __init__(
        self,
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
        layers: int = 3,
    ) -> None:
        nn.Module.__init__(self)
        check_positive("out_features", out_features)
        self.cell = StackCell(in_features, width, layers, input_act)
        self.head = nn.Linear(width, out_features)
        self._configure(in_features, out_features, input_act, width, depth, solver, gradient,
                        jac_reg, test_solver)


class StackFFW(FFW):
    """``depth`` distinct :class:`StackLayer` s between the projection and the head."""

    def __init__(
        self,
        in_features: int,
        width: int,
        depth: int,
        out_features: int,
        input_act: str = "relu",
        *,
        form: str = DEFAULT_FFW_FORM,
        layers: int = 3,
    ) -> None:
        nn.Module.__init__(self)
        check_positive("out_features", out_features)
        self._record_sizes(in_features, out_features, input_act, width, depth)
        self.form = check_form(form)
        self.proj = InputProjection(in_features, width, input_act)
        self.layers = nn.ModuleList(StackLayer(width, layers) for _ in range(depth))
        self.head = nn.Linear(width, out_features)
