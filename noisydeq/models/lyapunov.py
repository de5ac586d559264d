"""Lyapunov-stable DEQ (LyaDEQ; Chu, Wei, Liu, Zhao and Miyatake, AAAI 2024).

The model of their Fig. 1: feature extractor → DEQ → Lyapunov stability module → final FC.

* Feature extractor: x̃ = act(U x), one fully connected layer ``in_features → width``
  (MNIST: 784 → 64, "Training configurations"), the ``input`` noise site on x.
* DEQ cell (Eq. 7): y = W₂ BN₁(ReLU(W₁ z + b₁)) + b₂ and f(z, x̃) = BN₂(ReLU(x̃ + y)),
  solved for z* = f(z*, x̃) from z⁰ = 0 (Anderson acceleration by default). Noise sites:
  ``state`` (z before W₁) and ``signal`` (the pre-activation x̃ + y).
* Lyapunov function (Eq. 5): V(z) = σ(g(z) − g(0)) + ‖z‖², σ the smooth ReLU of Eq. 8 and
  g the input-convex network of Eq. 6 (:class:`ICNN`, non-negative U_i): V is convex,
  V(0) = 0 and V(z) ≥ ‖z‖² (Proposition 1), so its only minimum is the origin.
* Projected dynamics (Eq. 4): with F(z) = f(z, x̃) − z and φ = ∇Vᵀ F + cV,
  F̂ = F where φ ≤ 0, else F − ∇V φ / ‖∇V‖² (:func:`project`), so that ∇Vᵀ F̂ ≤ −cV
  everywhere: V decays at least as e^{−ct} along ż = F̂(z).
* Orthogonal final FC (variants ``orthogonal``/``both``): torch's
  ``parametrizations.orthogonal`` keeps the head's weight W (out × width) semi-orthogonal,
  W Wᵀ = I — the paper's ZᵀZ = I with Z = Wᵀ (its orthonormal columns are the class
  directions; out ≤ width).

Choices where the paper is silent, and why (tested in ``tests/models/test_lyapunov.py``):

* **How the fixed point is read from the projected field.** F̂ has one equilibrium, the
  origin (F̂(z) = 0 with z ≠ 0 would give ∇Vᵀ F̂ = 0 > −cV(z)), so solving z = z + F̂(z)
  would map every input to 0. The paper applies F̂ to the DEQ's fixed point z* ("F̂(z*)",
  Eq. 4; the stability module sits after the DEQ, Fig. 1). We read the state after one
  unit step of the projected dynamics from z*: h = z* + F̂(z*), the projected cell f̂ at
  the fixed point. The plain DEQ reads f(z*) = z* + F(z*), so the variants differ only by
  the projection, and at a converged z* (F ≈ 0, φ ≈ cV > 0) the module moves the state by
  −c V ∇V / ‖∇V‖² towards V's minimum. F is evaluated at the gradient-carrying fixed
  point (one extra cell call), so the readout's gradient is exact under IFT.
* **c = 1**: the projected flow decays V at unit rate, the time scale of the unit step the
  readout takes; for V ≈ ‖z‖² the step is z ↦ (1 − c/2) z, which never overshoots the
  equilibrium for c ≤ 2. Kolter and Manek (2019), whose projection this is, default to
  0.01, which would leave the state almost unchanged.
* **d = 1** (Eq. 8's quadratic piece on (0, 1)): Kolter and Manek's default; g − g(0) is of
  order one at initialisation, so σ is neither a pure ReLU nor a pure quadratic there.
* **ICNN**: one hidden layer of 64 units (the paper's "2-layer" ICNN, Fig. 2), σ = the
  smooth ReLU in every layer, U_i = softplus(Ũ_i) ≥ 0, V's gradient computed in closed
  form (checked against autograd), so it needs no nested autograd and twice
  differentiable training sees the exact second derivatives.
* **BatchNorm during the solve**: the cell's BN layers normalise with their running
  statistics in every call of a forward (the solve, the gradient and the readout use one
  fixed f; a solver skipping converged samples sees the same per-sample map). In training
  mode the statistics then take one momentum step on the batch's fixed-point activations.

Device mapping (``Device.deploy``): U, W₁, W₂ and the head are matrix-vector products and
run on the device; BN, the ICNN and the projection stay digital (``stays_digital``): the
projection needs ∇V, i.e. transposed products with the ICNN weights, and the decrease
guarantee holds only if V and ∇V are exact — it is a certificate computed beside the analog
core, like BN's affine periphery.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import orthogonal

from noisydeq.errors import NoisyDEQError
from noisydeq.limits import check_positive
from noisydeq.models.cells import InputProjection, apply_noise
from noisydeq.models.deq import DEQ
from noisydeq.noise import Noise
from noisydeq.solvers.registry import GRAD_SOLVERS
from noisydeq.specs.base import coerce
from noisydeq.specs.model import LyapunovSpec
from noisydeq.specs.solver import GradientSpec, SolverSpec, lyapunov_solver

# ------------------------------------------------------------------ Eq. 8 and Eq. 6


def smooth_relu(x: Tensor, d: float) -> Tensor:
    """σ(x) = 0 (x ≤ 0), x²/2d (0 < x < d), x − d/2 (x ≥ d) (Eq. 8): convex, non-decreasing,
    continuously differentiable, σ(0) = 0."""
    r = x.clamp(min=0.0)
    return torch.where(r < d, r * r / (2.0 * d), r - d / 2.0)


def smooth_relu_grad(x: Tensor, d: float) -> Tensor:
    """σ'(x) = clamp(x / d, 0, 1), the derivative of :func:`smooth_relu`."""
    return (x / d).clamp(0.0, 1.0)


def _inverse_softplus(u: Tensor) -> Tensor:
    return torch.log(torch.expm1(u))


class ICNN(nn.Module):
    """Input-convex network g of Eq. 6 with ``k = len(hidden) + 1`` layers and one output.

    q₁ = σ(A₀ z + b₀), q_{i+1} = σ(U_i q_i + A_i z + b_i), g(z) = q_k with A_i = W_iᵀ real
    and U_i = softplus(Ũ_i) ≥ 0, so g is convex in z (σ convex and non-decreasing,
    Proposition 1). Stays digital on a device (see the module docstring).
    """

    stays_digital = True

    def __init__(self, dim: int, hidden: Sequence[int], d: float = 1.0) -> None:
        super().__init__()
        check_positive("width", dim)
        sizes = list(hidden) + [1]
        if not hidden or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                             for n in hidden):
            raise NoisyDEQError(
                f"lyapunov.icnn_hidden: must be a non-empty list of positive integers, "
                f"got {list(hidden)}"
            )
        if not d > 0:
            raise NoisyDEQError(f"lyapunov.d: must be > 0, got {d}")
        self.d = float(d)
        self.A = nn.ParameterList(nn.Parameter(torch.empty(s, dim)) for s in sizes)
        self.b = nn.ParameterList(nn.Parameter(torch.empty(s)) for s in sizes)
        self.U_raw = nn.ParameterList(
            nn.Parameter(torch.empty(sizes[i + 1], sizes[i])) for i in range(len(sizes) - 1)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """A_i, b_i as ``nn.Linear`` (uniform ±1/√dim); U_i ≈ U(0.1, 2)/fan_in, so each
        layer's non-negative mixing starts at order one."""
        for a, b in zip(self.A, self.b, strict=True):
            bound = 1.0 / a.shape[1] ** 0.5
            nn.init.uniform_(a, -bound, bound)
            nn.init.uniform_(b, -bound, bound)
        for u in self.U_raw:
            with torch.no_grad():
                u.copy_(_inverse_softplus(torch.empty_like(u).uniform_(0.1, 2.0) / u.shape[1]))

    def U(self, i: int) -> Tensor:
        """The non-negative weight U_i = softplus(Ũ_i) of Eq. 6."""
        return F.softplus(self.U_raw[i])

    def forward(self, z: Tensor) -> Tensor:
        """g(z), shape (B,)."""
        return self.value_and_grad(z, grad=False)[0]

    def value_and_grad(self, z: Tensor, grad: bool = True) -> tuple[Tensor, Tensor | None]:
        """(g(z) (B,), ∇g(z) (B, dim) or None), the gradient by the chain rule in closed form."""
        pre: list[Tensor] = []
        q = None
        for i, (a, b) in enumerate(zip(self.A, self.b, strict=True)):
            s = F.linear(z, a, b)
            if q is not None:
                s = s + F.linear(q, self.U(i - 1))
            pre.append(s)
            q = smooth_relu(s, self.d)
        g = q[:, 0]
        if not grad:
            return g, None
        delta = smooth_relu_grad(pre[-1], self.d)  # ∂g/∂s_last, (B, 1)
        out = delta @ self.A[-1]
        for i in range(len(pre) - 2, -1, -1):
            delta = (delta @ self.U(i)) * smooth_relu_grad(pre[i], self.d)
            out = out + delta @ self.A[i]
        return g, out


class LyapunovFunction(nn.Module):
    """V(z) = σ(g(z) − g(0)) + ‖z‖² (Eq. 5) with the ICNN g of Eq. 6: positive definite,
    convex, V(0) = 0, no local minimum but the origin."""

    stays_digital = True

    def __init__(self, dim: int, hidden: Sequence[int], d: float = 1.0) -> None:
        super().__init__()
        self.g = ICNN(dim, hidden, d)
        self.d = float(d)

    def forward(self, z: Tensor) -> Tensor:
        """V(z), shape (B,)."""
        return self.value_and_grad(z, grad=False)[0]

    def value_and_grad(self, z: Tensor, grad: bool = True) -> tuple[Tensor, Tensor | None]:
        """(V(z) (B,), ∇V(z) (B, dim) or None)."""
        g, dg = self.g.value_and_grad(z, grad)
        g0 = self.g(torch.zeros_like(z[:1]))
        u = g - g0
        v = smooth_relu(u, self.d) + z.pow(2).sum(dim=1)
        if not grad:
            return v, None
        return v, smooth_relu_grad(u, self.d)[:, None] * dg + 2.0 * z


def project(
    F_z: Tensor, V: Tensor, grad_V: Tensor, c: float
) -> tuple[Tensor, Tensor]:
    """(F̂, φ) of Eq. 4: F̂ = F − ∇V·relu(φ)/‖∇V‖², φ = ∇Vᵀ F + cV, per sample.

    Where φ ≤ 0 (F already decreases V at rate c) F̂ = F exactly. At ∇V = 0 (only at the
    origin, where V = φ = 0) F̂ = F as well.
    """
    phi = (grad_V * F_z).sum(dim=1) + c * V
    norm2 = grad_V.pow(2).sum(dim=1).clamp(min=torch.finfo(grad_V.dtype).tiny)
    return F_z - grad_V * (F.relu(phi) / norm2)[:, None], phi


# ------------------------------------------------------------------------ Eq. 7


class BNReLUCell(nn.Module):
    """The LyaDEQ cell of Eq. 7: f(z, x̃) = BN₂(ReLU(x̃ + W₂ BN₁(ReLU(W₁ z + b₁)) + b₂)).

    Both BN layers normalise with the statistics passed in (:meth:`statistics`, a snapshot of
    the running ones), so one forward uses one fixed map f. ``W1`` and ``W2`` are
    ``nn.Linear`` (device-mappable); the BN layers stay digital.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = check_positive("width", width)
        self.W1 = nn.Linear(width, width)
        self.bn1 = nn.BatchNorm1d(width)
        self.W2 = nn.Linear(width, width)
        self.bn2 = nn.BatchNorm1d(width)

    def statistics(self) -> tuple[Tensor, ...]:
        """Copies of (mean₁, var₁, mean₂, var₂): later in-place updates of the running
        statistics do not touch a graph that used them."""
        return tuple(t.clone() for t in (self.bn1.running_mean, self.bn1.running_var,
                                         self.bn2.running_mean, self.bn2.running_var))

    @staticmethod
    def _bn(bn: nn.BatchNorm1d, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        return F.batch_norm(x, mean, var, bn.weight, bn.bias, training=False, eps=bn.eps)

    def forward(self, z: Tensor, xt: Tensor, stats: Sequence[Tensor],
                noise: Noise | None = None) -> Tensor:
        """One cell call with the ``state`` (z) and ``signal`` (x̃ + y) noise sites."""
        h = self._bn(self.bn1, F.relu(self.W1(apply_noise(noise, "state", z))), stats[0],
                     stats[1])
        s = apply_noise(noise, "signal", xt + self.W2(h))
        return self._bn(self.bn2, F.relu(s), stats[2], stats[3])

    @torch.no_grad()
    def update_statistics(self, z: Tensor, xt: Tensor, stats: Sequence[Tensor]) -> None:
        """One momentum step of each BN's running statistics on the activations of f(z)."""
        if z.shape[0] < 2:
            return
        a1 = F.relu(self.W1(z))
        h = self._bn(self.bn1, a1, stats[0], stats[1])
        a2 = F.relu(xt + self.W2(h))
        for bn, a in ((self.bn1, a1), (self.bn2, a2)):
            F.batch_norm(a, bn.running_mean, bn.running_var, None, None, training=True,
                         momentum=bn.momentum, eps=bn.eps)
            bn.num_batches_tracked += 1

    def hidden_weight_count(self, include_bias: bool = True) -> int:
        """Parameters of W₁ and W₂: 2d² (+ 2d biases)."""
        n = self.W1.weight.numel() + self.W2.weight.numel()
        return n + (2 * self.width if include_bias else 0)


# ------------------------------------------------------------------------ model


def check_solver_compatible(solver: SolverSpec, gradient: GradientSpec, where: str) -> None:
    """A LyaDEQ reads its fixed point: refuse solver settings that never give one."""
    if gradient.name == "bptt" and solver.name not in GRAD_SOLVERS:
        raise NoisyDEQError(
            f"{where}: gradient 'bptt' differentiates the forward iterations, which "
            f"'{solver.name}' does not record (allowed with bptt: {', '.join(GRAD_SOLVERS)})"
        )
    if solver.random_threshold:
        raise NoisyDEQError(
            f"{where}: random_threshold stops each sample at a random iteration, but the "
            "LyaDEQ's Lyapunov readout needs the fixed point; set random_threshold = false"
        )


class LyaDEQ(DEQ):
    """A Lyapunov-stable DEQ (module docstring): extractor, Eq. 7 cell, readout, head.

    ``lyapunov`` (:class:`~noisydeq.config.LyapunovSpec` or dict) picks the variant and c, d
    and the ICNN sizes. Solver, gradient and test solver as for :class:`DEQ` (default:
    Anderson, :func:`~noisydeq.config.lyapunov_solver`, and the implicit gradient).
    ``depth`` only labels the FFW depth of the family member; the width is never matched.
    ``last_readout`` keeps V(z*), φ(z*) and whether the projection acted, per sample.
    """

    kind = "lyadeq"

    def __init__(
        self,
        in_features: int,
        width: int,
        out_features: int,
        input_act: str = "relu",
        lyapunov: LyapunovSpec | dict[str, Any] | None = None,
        solver: SolverSpec | None = None,
        gradient: GradientSpec | None = None,
        *,
        test_solver: SolverSpec | None = None,
        depth: int = 1,
    ) -> None:
        nn.Module.__init__(self)
        check_positive("out_features", out_features)
        self.settings = coerce(LyapunovSpec, lyapunov, "lyapunov")
        self.cell = BNReLUCell(width)
        self.cell.proj = InputProjection(in_features, width, input_act)
        self.lyapunov = (
            LyapunovFunction(width, self.settings.icnn_hidden, self.settings.d)
            if self.settings.uses_lyapunov else None
        )
        head = nn.Linear(width, out_features)
        if self.settings.uses_orthogonal:
            if out_features > width:
                raise NoisyDEQError(
                    f"lyapunov.variant '{self.settings.variant}': an orthogonal head needs "
                    f"out_features <= width (Z^T Z = I), got {out_features} > {width}"
                )
            head = orthogonal(head)
        self.head = head
        self._configure(
            in_features, out_features, input_act, width, depth,
            solver if solver is not None else lyapunov_solver(), gradient, None, test_solver,
        )
        self.last_readout: dict[str, Tensor] | None = None
        self._ctx: tuple[Tensor, Noise | None, tuple[Tensor, ...]] | None = None
        self.check_solvers()

    @property
    def variant(self) -> str:
        return self.settings.variant

    def check_solvers(self) -> None:
        """One clear error when the solvers and gradient cannot give a LyaDEQ fixed point."""
        for name in ("solver", "test_solver"):
            spec = getattr(self, name)
            if spec is not None:
                check_solver_compatible(spec, self.gradient, f"lyadeq {name}")

    # ----------------------------------------------------------------- the DEQ hooks

    def inject(self, x: Tensor, noise: Noise | None = None) -> Tensor:
        """x̃ = act(U (x + ε_x)); also fixes this forward's BN statistics and noise."""
        xt = self.cell.proj(x, noise)
        self._ctx = (xt, noise, self.cell.statistics())
        return xt

    def _stats(self) -> tuple[Tensor, ...]:
        if self._ctx is None:  # a cell_fn asked for outside forward: the running statistics
            return self.cell.statistics()
        return self._ctx[2]

    def cell_fn(self, xt: Tensor, noise: Noise | None = None):
        stats = self._stats()
        return lambda z: self.cell(z, xt, stats, noise)

    def cell_fn_rows(self, xt: Tensor, noise: Noise | None = None):
        stats = self._stats()
        return lambda z, rows: self.cell(z, xt.index_select(0, rows), stats, noise)

    def pool(self, z: Tensor) -> Tensor:
        """The readout h of the fixed point (module docstring): z, or z + F̂(z) with the
        Lyapunov module; in training mode also the BN statistics update."""
        if self._ctx is None:
            raise NoisyDEQError("lyadeq: pool() reads a fixed point of forward(); call the model")
        xt, noise, stats = self._ctx
        if self.training:
            self.cell.update_statistics(z.detach(), xt, stats)
        if self.lyapunov is None:
            self.last_readout = None
            return z
        Fz = self.cell(z, xt, stats, noise) - z
        V, grad_V = self.lyapunov.value_and_grad(z)
        Fhat, phi = project(Fz, V, grad_V, self.settings.c)
        self.last_readout = {"V": V.detach(), "phi": phi.detach(),
                             "projected": (phi > 0).detach()}
        return z + Fhat

    def forward(self, x: Tensor, noise: Noise | None = None, **kwargs: Any):
        """As :meth:`DEQ.forward` (solve, attach the gradient, head) with the LyaDEQ readout."""
        self.check_solvers()  # solver settings may have been replaced (train overrides)
        try:
            return super().forward(x, noise, **kwargs)
        finally:
            self._ctx = None

    def hidden_weight_count(self, include_bias: bool = True) -> int:
        """Parameters of the cell's W₁ and W₂ (the matrices iterated to the fixed point)."""
        return self.cell.hidden_weight_count(include_bias)
