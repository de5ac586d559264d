"""Monotone ReLU DEQs (Winston & Kolter 2020) and the IBP-MonDEQ / LBEN forms of Wei &
Kolter, "Certified robustness for deep equilibrium models via interval bound propagation"
(ICLR 2022), dense or 3×3-convolutional.

Model (``kind = "mondeq"``)::

    v  = act(BN(U x + b_U)) + c               injection (App. B: BN after U; c a bias)
    z* = relu(W z* + v)                        the equilibrium (Eq. 2.4)
    logits = head(BN(z*))                      BN on the DEQ output (§4), then FC (pooled for conv)

Weight parameterisations (``MonotoneSpec.param``):

* ``ibp``  — W = D^{-1/2} M D^{-1/2}, D = diag((|M| + |M|ᵀ)1 / (2(1 − m))) (Eq. 3.4, §4), M the
  only trainable weight. Then I − (|W| + |W|ᵀ)/2 ⪰ m·I: (1 − m)D − (|M| + |M|ᵀ)/2 is diagonally
  dominant with a non-negative diagonal, hence PSD, and D^{-1/2}(·)D^{-1/2} keeps it so.
  By Lemma 3.4 the IBP operator Ŵ then has I₂ₕ − Ŵ ⪰ m·I too, so the standard (Eq. 2.4) and
  the interval (Eq. 3.3) equilibria both exist and are unique (Theorem 3.1).
* ``lben`` — W = Γ D^{-1/2} M D^{-1/2} Γ⁻¹ (Eq. 3.7), Γ = diag((γ−1)/γ·sigmoid(β) + 1/γ)
  (§4; per channel for convolutions, App. B). Because Γ is a positive diagonal and ReLU
  commutes with positive scaling, y = Γ⁻¹z solves y = relu(W_ibp y + Γ⁻¹v): the LBEN layer is
  the ``ibp`` layer in rescaled coordinates, and so is its interval fixed point. The cell
  therefore always iterates y (:meth:`MonotoneCell.to_y` / :meth:`MonotoneCell.from_y`).
  (With a linear/BN injection and head, Γ can be absorbed into them: the two classes compute
  the same functions; they differ in how they train.)
* ``mon`` — W = (1 − m)I − AᵀA + B − Bᵀ (Winston & Kolter 2020): I − W ⪰ m·I, but I − |W| need
  not be PD, and the interval iteration can diverge (Fig. 2 right, Example 3.6).

Dense W acts on (B, h) states; convolutional W on (B, C, H, W) states with 'same' padding
(M, A, B are k×k convolutions; D is then a diagonal over all C·H·W units, computed with one
convolution of |K| and one transposed convolution of ones, as the paper does).

Devices: U, M (A and B for ``mon``) and the head are ``nn.Linear`` / ``nn.Conv2d``, so a
device maps them to crossbars; D^{-1/2}, Γ, c and BN stay digital (``digital_periphery``).
For ``mon`` only A y and B y run on the device — the transposed products Aᵀ(·) and Bᵀ(·)
use the digital weights (device layers read forward only).

Solvers: :mod:`noisydeq.models.splitting` (forward–backward with α, Peaceman–Rachford) run
through the shared solver loop (``unroll``, ``anderson``, any stop rule); the gradient is
attached through the forward–backward map at the fixed point with the existing methods
(:mod:`noisydeq.solvers.gradients`; its implicit gradient equals that of z = relu(Wz + v)).

Length (about 410 lines): the three weight parametrisations (``ibp``, ``lben``, ``mon``),
dense and convolutional, share the forward–backward map, the digital periphery and the
gradient attachment; apart they would repeat them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from noisydeq.errors import NoisyDEQError
from noisydeq.limits import check_positive
from noisydeq.models.base import ModelOutput
from noisydeq.models.cells import apply_noise, input_activation
from noisydeq.models.conv import PooledHead, _check_kernel, image_shape
from noisydeq.models.deq import DEQ
from noisydeq.models.splitting import (
    cg_resolvent,
    check_splitting,
    dense_resolvent,
    forward_backward,
    solve_splitting,
)
from noisydeq.noise import Noise
from noisydeq.solvers import solve, solve_with_grad
from noisydeq.solvers.gradients import attach_gradient
from noisydeq.specs.model import MonotoneSpec
from noisydeq.specs.solver import GradientSpec, SolverSpec

Map = Callable[[Tensor], Tensor]

#: the monotone DEQ's default solver: forward–backward with Anderson acceleration (§4),
#: stop rule ‖z_{k+1} − z_k‖/‖z_{k+1}‖ (App. B, float32-sized tolerance)
MON_SOLVER = SolverSpec(name="anderson", max_iter=100, tol=1e-4, stop="rel", window=1,
                        traces=False)
#: smallest entry of D (a unit whose row and column of M are zero: W's row and column are 0)
D_FLOOR = 1e-8


def ibp_init_(module: nn.Module) -> None:
    """IBP initialisation (Shi et al. 2021): weights N(0, σ²) with σ = √(2π)/fan_in."""
    w = module.weight
    fan_in = w[0].numel()
    with torch.no_grad():
        w.normal_(0.0, math.sqrt(2.0 * math.pi) / fan_in)
        if getattr(module, "bias", None) is not None:
            module.bias.zero_()


def make_linear(width: int, image: tuple[int, int, int] | None, kernel: int,
                in_features: int | None = None, bias: bool = False) -> nn.Module:
    """``nn.Linear(in, width)`` or a 'same' ``nn.Conv2d(C_in, width, k)``."""
    if image is None:
        return nn.Linear(width if in_features is None else in_features, width, bias=bias)
    c_in = width if in_features is None else image[0]
    return nn.Conv2d(c_in, width, kernel, padding=kernel // 2, bias=bias)


class Injection(nn.Module):
    """x̃ = act(BN(U (x + ε_x))) with U an ``nn.Linear`` / ``nn.Conv2d`` carrying a bias (the
    layer before the monotone one; App. B). Flat image inputs are reshaped to (C, H, W)."""

    def __init__(self, in_features: int, width: int, input_act: str, batch_norm: bool,
                 image: tuple[int, int, int] | None, kernel: int) -> None:
        super().__init__()
        self.act_name = input_act
        self.act = input_activation(input_act)
        self.image = image
        self.U = make_linear(width, image, kernel, in_features=in_features, bias=True)
        self.bn = norm_layer(width, image) if batch_norm else None

    def shaped(self, x: Tensor) -> Tensor:
        """x as the layer expects it ((B, in) or (B, C, H, W))."""
        if self.image is not None and x.ndim == 2:
            return x.reshape(x.shape[0], *self.image)
        return x

    def forward(self, x: Tensor, noise: Noise | None = None) -> Tensor:
        s = self.U(apply_noise(noise, "input", self.shaped(x)))
        return self.act(s if self.bn is None else self.bn(s))


def norm_layer(width: int, image: tuple[int, int, int] | None) -> nn.Module:
    """BatchNorm over features (dense) or channels (conv)."""
    return nn.BatchNorm1d(width) if image is None else nn.BatchNorm2d(width)


class MonotoneCell(nn.Module):
    """The monotone cell: W (module docstring), the injection bias c and LBEN's β.

    The cell works in the coordinates y = Γ⁻¹z (y = z unless ``lben``): :meth:`ops` returns
    the maps y ↦ W_y y (through the weight modules, i.e. on a device when deployed),
    y ↦ W_yᵀ y and the dense W_y, with W_y = D^{-1/2} M D^{-1/2} (``ibp``/``lben``) or the
    ``mon`` matrix. ``m`` is the target margin; ``m_active`` (the same unless an m warm-up
    sets it, App. B) is the one used.
    """

    digital_periphery = True  # c, β and D^{-1/2} are digital: devices map M (A, B) only

    def __init__(self, width: int, spec: MonotoneSpec, image: tuple[int, int, int] | None,
                 kernel: int = 3) -> None:
        super().__init__()
        self.width = check_positive("width", width)
        self.param = spec.param
        self.m = spec.m
        # the margin in use (an m warm-up lowers it from near 1 to m; saved with the weights,
        # since D and hence W depend on it)
        self.register_buffer("m_active", torch.tensor(float(spec.m)))
        self.gamma = spec.lben_gamma
        self.image = None if image is None else (width, image[1], image[2])
        self.kernel = kernel
        if self.param == "mon":
            self.A = make_linear(width, image, kernel)
            self.B = make_linear(width, image, kernel)
        else:
            self.M = make_linear(width, image, kernel)
        shape = (width,) if image is None else (width, 1, 1)
        self.bias = nn.Parameter(torch.zeros(shape))
        if self.param == "lben":
            self.beta = nn.Parameter(torch.zeros(shape))

    @property
    def conv(self) -> bool:
        return self.image is not None

    # ------------------------------------------------------------------ coordinates
    def scale(self) -> Tensor | None:
        """Γ (LBEN, Eq. 3.7 and §4), shaped to broadcast over a state; None otherwise."""
        if self.param != "lben":
            return None
        g = self.gamma
        return (g - 1.0) / g * torch.sigmoid(self.beta) + 1.0 / g

    def to_y(self, v: Tensor) -> Tensor:
        """Γ⁻¹ v (identity unless LBEN)."""
        s = self.scale()
        return v if s is None else v / s

    def from_y(self, y: Tensor) -> Tensor:
        """z = Γ y (identity unless LBEN)."""
        s = self.scale()
        return y if s is None else y * s

    # ------------------------------------------------------------------ D and W
    def diag_inv_sqrt(self, shape: Sequence[int] | None = None) -> Tensor:
        """d = D^{-1/2} with D = (|M|1 + |M|ᵀ1) / (2(1 − m)) (§4), over one state's units."""
        w = self.M.weight
        a = w.abs()
        if not self.conv:
            sums = a.sum(1) + a.sum(0)
        else:
            c, h, wd = self.image if shape is None else shape
            ones = torch.ones((1, c, h, wd), dtype=w.dtype, device=w.device)
            pad = self.kernel // 2
            sums = (F.conv2d(ones, a, padding=pad) + F.conv_transpose2d(ones, a, padding=pad))[0]
        d = sums / (2.0 * (1.0 - self.m_active))
        return d.clamp(min=D_FLOOR).rsqrt()

    def _t(self, module: nn.Module, y: Tensor) -> Tensor:
        """Transposed product with a weight module's (digital) weight."""
        if not self.conv:
            return F.linear(y, module.weight.t())
        return F.conv_transpose2d(y, module.weight, padding=self.kernel // 2)

    def _fwd(self, module: nn.Module, y: Tensor) -> Tensor:
        """Forward product with the digital weight (no device)."""
        if not self.conv:
            return F.linear(y, module.weight)
        return F.conv2d(y, module.weight, padding=self.kernel // 2)

    def ops(self, state_shape: Sequence[int] | None = None) -> CellOps:
        """W_y as maps for one forward (D computed once)."""
        if self.param == "mon":
            m = self.m_active

            def mv(y: Tensor) -> Tensor:
                return (1.0 - m) * y - self._t(self.A, self.A(y)) + self.B(y) - self._t(self.B, y)

            def rmv(y: Tensor) -> Tensor:
                a = self._fwd(self.A, y)
                b = self._t(self.B, y) - self._fwd(self.B, y)
                return (1.0 - m) * y - self._t(self.A, a) + b

            return CellOps(self, mv, rmv, None)
        d = self.diag_inv_sqrt(state_shape)

        def mv_ibp(y: Tensor) -> Tensor:
            return d * self.M(d * y)

        def rmv_ibp(y: Tensor) -> Tensor:
            return d * self._t(self.M, d * y)

        return CellOps(self, mv_ibp, rmv_ibp, d)

    def weight_matrix(self) -> Tensor:
        """The dense W_y (digital weights); dense cells only."""
        if self.conv:
            raise NoisyDEQError("monotone cell: a convolutional W has no dense matrix here")
        return self.ops().dense()

    def hidden_weight_count(self, include_bias: bool = True) -> int:
        """M (A and B for ``mon``) plus the bias c."""
        mods = [self.A, self.B] if self.param == "mon" else [self.M]
        n = sum(int(m.weight.numel()) for m in mods)
        return n + (int(self.bias.numel()) if include_bias else 0)


class CellOps:
    """W_y of a :class:`MonotoneCell` for one forward: ``mv`` (through the weight modules),
    ``rmv`` (transpose, digital), ``d`` = D^{-1/2} (None for ``mon``)."""

    def __init__(self, cell: MonotoneCell, mv: Map, rmv: Map, d: Tensor | None) -> None:
        self.cell, self.mv, self.rmv, self.d = cell, mv, rmv, d

    def dense(self) -> Tensor:
        """The dense W_y from the digital weights."""
        cell = self.cell
        if cell.param == "mon":
            a, b = cell.A.weight, cell.B.weight
            eye = torch.eye(cell.width, dtype=a.dtype, device=a.device)
            return (1.0 - cell.m_active) * eye - a.t() @ a + b - b.t()
        assert self.d is not None
        return self.d[:, None] * cell.M.weight * self.d[None, :]

    def resolvent(self, alpha: float) -> Map:
        """r ↦ (I + α(I − W_y))⁻¹ r (Peaceman–Rachford)."""
        if not self.cell.conv:
            return dense_resolvent(self.dense(), alpha)
        digital = self.digital_mv()
        return cg_resolvent(digital, self.rmv, alpha)

    def digital_mv(self) -> Map:
        """y ↦ W_y y with the digital weights (never a device)."""
        cell = self.cell
        if cell.param == "mon":
            m = cell.m_active
            return lambda y: ((1.0 - m) * y - cell._t(cell.A, cell._fwd(cell.A, y))
                              + cell._fwd(cell.B, y) - cell._t(cell.B, y))
        d = self.d
        return lambda y: d * cell._fwd(cell.M, d * y)


def _on_device(cell: MonotoneCell) -> bool:
    mods = [cell.A, cell.B] if cell.param == "mon" else [cell.M]
    return any(type(m) not in (nn.Linear, nn.Conv2d) for m in mods)


class MonDEQ(DEQ):
    """Monotone ReLU DEQ: injection, :class:`MonotoneCell`, output BN and head (module doc).

    ``width`` is the number of units (channels for ``cell="conv"``). ``solver`` (training)
    and ``test_solver`` (eval) are the method/stop rule/cap of the splitting iteration
    (default :data:`MON_SOLVER`); ``monotone`` fixes parameterisation, m, splitting and α.
    """

    kind = "mondeq"

    def __init__(
        self,
        in_features: int,
        width: int,
        out_features: int,
        input_act: str = "relu",
        solver: SolverSpec | None = None,
        gradient: GradientSpec | None = None,
        *,
        test_solver: SolverSpec | None = None,
        depth: int = 1,
        monotone: MonotoneSpec | None = None,
        conv: bool = False,
        in_shape: Sequence[int] | None = None,
        kernel_size: int = 3,
        pool: int = 4,
    ) -> None:
        nn.Module.__init__(self)
        check_positive("out_features", out_features)
        spec = monotone if monotone is not None else MonotoneSpec()
        check_splitting(spec.splitting, spec.alpha)
        self.monotone = spec
        image = image_shape(in_features, in_shape) if conv else None
        kernel = _check_kernel(kernel_size) if conv else kernel_size
        self.proj = Injection(in_features, width, input_act, spec.batch_norm, image, kernel)
        self.cell = MonotoneCell(width, spec, image, kernel)
        self.out_bn = norm_layer(width, image) if spec.batch_norm else None
        self.head = nn.Linear(width, out_features) if image is None else PooledHead(
            width, out_features, pool)
        if spec.ibp_init:
            for mod in (self.proj.U, self.head if image is None else self.head.linear):
                ibp_init_(mod)
        self._configure(
            in_features, out_features, input_act, width, depth,
            solver if solver is not None else MON_SOLVER, gradient, None, test_solver,
        )

    # ------------------------------------------------------------------ pieces
    def inject(self, x: Tensor, noise: Noise | None = None) -> Tensor:
        """v = act(BN(U x)) + c (input noise drawn here, once per forward)."""
        return self.proj(x, noise) + self.cell.bias

    def readout(self, z: Tensor) -> Tensor:
        """logits = head(BN(z))."""
        return self.head(z if self.out_bn is None else self.out_bn(z))

    def hidden_weight_count(self, include_bias: bool = True) -> int:
        return self.cell.hidden_weight_count(include_bias)

    def equilibrium(
        self, v: Tensor, noise: Noise | None = None, *, states: list[Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, object]:
        """(z* with the gradient attached, Solution) for the injection ``v``."""
        cell = self.cell
        spec = self.monotone
        vt = cell.to_y(v)
        ops = cell.ops(tuple(v.shape[1:]) if cell.conv else None)

        def pre(y: Tensor) -> Tensor:
            s = ops.mv(apply_noise(noise, "state", y)) + vt
            return apply_noise(noise, "signal", s)

        f = forward_backward(pre, spec.alpha)
        solver = self.active_solver()
        y0 = torch.zeros_like(vt)
        grad_on = torch.is_grad_enabled()
        if spec.splitting == "pr" and (noise is not None or _on_device(cell)):
            raise NoisyDEQError(
                "monotone.splitting: 'pr' solves a linear system with the digital weights at "
                "every step; noisy or deployed models use 'fb' (one MVM per step)"
            )
        f_used = f
        if states is not None:

            def f_used(y: Tensor) -> Tensor:
                out = f(y)
                states.append(cell.from_y(out))
                return out

        if self.gradient.name == "bptt" and grad_on:
            if spec.splitting != "fb":
                raise NoisyDEQError("gradient.name: 'bptt' unrolls forward–backward only")
            solution = solve_with_grad(f_used, y0, solver, generator=generator)
            y = solution.z
        else:
            if spec.splitting == "fb":
                solution = solve(f_used, y0, solver, generator=generator)
            else:
                with torch.no_grad():
                    res = ops.resolvent(spec.alpha)
                solution = solve_splitting("pr", spec.alpha, pre, y0, solver, resolvent=res,
                                           v=vt.detach(), generator=generator)
            y_star = solution.z.detach()
            y = attach_gradient(f, y_star, self.gradient) if grad_on else y_star
        return cell.from_y(y), solution

    def forward(
        self,
        x: Tensor,
        noise: Noise | None = None,
        *,
        return_solution: bool = False,
        return_states: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor | ModelOutput:
        """Solve z* = relu(W z* + v(x)) by the splitting iteration, attach the gradient,
        return head(BN(z*)) (or a :class:`ModelOutput` when asked)."""
        states: list[Tensor] | None = [] if return_states else None
        v = self.inject(x, noise)
        z, solution = self.equilibrium(v, noise, states=states, generator=generator)
        self.last_solution = solution
        logits = self.readout(z)
        if not (return_solution or return_states):
            return logits
        return ModelOutput(logits=logits, z=z, solution=solution, states=states)
