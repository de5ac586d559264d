"""Deep Equilibrium model: z* = f(z*; x) under noise, then an output head (paper Eq. 1-6).

The forward pass solves z* = f(z*) from z⁰ = 0 (Eq. 1) with a ``SolverSpec``; with noise
the cell draws fresh state/signal noise at every f-evaluation (dynamic noise, Eq. 3), so
the solver finds z = E[f(z + ε_z, x + ε_x)] (Eq. 6). Input noise ε_x is drawn once per
forward (Eq. 3 gives it no iteration index). The backward pass is made by a separate
``GradientSpec`` (IFT, phantom, JFB, BPTT); the Jacobian regulariser (Table 1) is computed
at z* when training.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from noisydeq.errors import NoisyDEQError
from noisydeq.limits import check_positive
from noisydeq.models.base import CountingMixin, ModelOutput
from noisydeq.models.cells import MLPCell
from noisydeq.noise import Noise, NoiseStream
from noisydeq.solvers import solve, solve_with_grad
from noisydeq.solvers.gradients import attach_gradient
from noisydeq.solvers.jacobian import jacobian_frobenius_hutchinson
from noisydeq.specs.solver import GradientSpec, JacobianRegSpec, SolverSpec, paper_solver


class DEQ(CountingMixin, nn.Module):
    """MLP DEQ: x̃ = act(U x), z* = tanh(W z* + b + x̃) (Eq. 57), logits = head(z*).

    ``solver`` is used in training mode, ``test_solver`` (default: ``solver``) in eval mode.
    ``depth`` labels the FFW depth this DEQ is parameter-matched to (1 = unmatched); it does
    not change the computation. ``jac_reg``: ``weight · ‖J_f(z*)‖²_F / d`` estimate exposed
    as ``ModelOutput.jac_loss`` in training mode when the weight is positive; set
    ``jac_reg_active = False`` to switch it off (e.g. after ``stop_epoch``).
    """

    kind = "deq"

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
    ) -> None:
        super().__init__()
        check_positive("out_features", out_features)
        self.cell = MLPCell(in_features, width, input_act)
        self.head = nn.Linear(width, out_features)
        self._configure(
            in_features, out_features, input_act, width, depth, solver, gradient, jac_reg,
            test_solver,
        )

    def _configure(
        self,
        in_features: int,
        out_features: int,
        input_act: str,
        width: int,
        depth: int,
        solver: SolverSpec | None,
        gradient: GradientSpec | None,
        jac_reg: JacobianRegSpec | None,
        test_solver: SolverSpec | None,
    ) -> None:
        self._record_sizes(in_features, out_features, input_act, width, depth)
        self.solver = solver if solver is not None else paper_solver(train=True)
        self.test_solver = test_solver
        self.gradient = gradient if gradient is not None else GradientSpec()
        self.jac_reg = jac_reg
        self.jac_reg_active = True
        self.last_solution = None

    # ------------------------------------------------------------------ pieces

    def active_solver(self) -> SolverSpec:
        """The solver of the current mode (``solver`` when training, else ``test_solver``)."""
        if self.training or self.test_solver is None:
            return self.solver
        return self.test_solver

    def inject(self, x: Tensor, noise: Noise | None = None) -> Tensor:
        """x̃ for a batch x (input noise drawn here, once per forward)."""
        return self.cell.project(x, noise)

    def cell_fn(self, xt: Tensor, noise: Noise | None = None) -> Callable[[Tensor], Tensor]:
        """f(z) = cell(z, x̃) with dynamic noise: each call draws fresh state/signal noise."""
        return lambda z: self.cell(z, xt, noise)

    def cell_fn_rows(
        self, xt: Tensor, noise: Noise | None = None
    ) -> Callable[[Tensor, Tensor], Tensor]:
        """f on the rows ``rows`` of the batch: cell(z_rows, x̃_rows) (for skipping stopped
        samples in the solver; noise sources pick their rows, :class:`noisydeq.noise.RowSubset`)."""
        return lambda z, rows: self.cell(z, xt.index_select(0, rows), noise)

    def initial_state(self, xt: Tensor) -> Tensor:
        """z⁰ = 0 (Eq. 1), shaped like the injection."""
        return torch.zeros_like(xt)

    def hidden_weight_count(self, include_bias: bool = True) -> int:
        """Parameters of the cell's W (d² + d; d² without the bias), as matched in App. E.1."""
        return self.cell.hidden_weight_count(include_bias)

    # ----------------------------------------------------------------- forward

    def forward(
        self,
        x: Tensor,
        noise: Noise | None = None,
        *,
        return_solution: bool = False,
        return_states: bool = False,
        generator: torch.Generator | NoiseStream | None = None,
        z0: Tensor | None = None,
    ) -> Tensor | ModelOutput:
        """Solve z* = f(z*; x) (Eq. 1/3), attach the gradient, return head(z*).

        Returns the logits, or a :class:`ModelOutput` when ``return_solution`` or
        ``return_states`` is set. ``generator`` (a :class:`~noisydeq.noise.NoiseStream`, or a
        ``torch.Generator``) feeds the solver's random threshold and the Hutchinson probes
        of the Jacobian regulariser (global torch RNG when ``None``).
        ``z0``: initial state of the solve (default z⁰ = 0, Eq. 1), e.g. the fixed point of
        a nearby input to warm-start from (attacks); used detached, shaped like x̃.
        """
        xt = self.inject(x, noise)
        f = self.cell_fn(xt, noise)
        states: list[Tensor] | None = [] if return_states else None

        def f_forward(z: Tensor) -> Tensor:
            out = f(z)
            if states is not None:
                states.append(out)
            return out

        spec = self.active_solver()
        if z0 is None:
            z0 = self.initial_state(xt)
        elif z0.shape != xt.shape:
            raise NoisyDEQError(
                f"z0: initial state must be shaped like the injection {tuple(xt.shape)}, "
                f"got {tuple(z0.shape)}"
            )
        else:
            z0 = z0.detach().to(dtype=xt.dtype, device=xt.device)
        grad_on = torch.is_grad_enabled()
        if self.gradient.name == "bptt" and grad_on:
            solution = solve_with_grad(f_forward, z0, spec, generator=generator)
            z = solution.z
        else:
            f_rows = None if states is not None else self.cell_fn_rows(xt, noise)
            solution = solve(f_forward, z0, spec, generator=generator, f_rows=f_rows)
            z_star = solution.z.detach()
            z = attach_gradient(f, z_star, self.gradient, f_rows=f_rows) if grad_on \
                else z_star
        self.last_solution = solution

        jac_loss = None
        reg = self.jac_reg
        if reg is not None and reg.weight > 0 and self.jac_reg_active and self.training and grad_on:
            z_in = solution.z.detach().requires_grad_(True)
            est = jacobian_frobenius_hutchinson(
                f(z_in), z_in, n_samples=reg.n_samples, generator=generator
            )
            jac_loss = reg.weight * est

        logits = self.head(self.pool(z))
        if not (return_solution or return_states):
            return logits
        return ModelOutput(logits=logits, z=z, solution=solution, states=states, jac_loss=jac_loss)

    def pool(self, z: Tensor) -> Tensor:
        """Map the hidden state to head features (identity for the MLP cell)."""
        return z
