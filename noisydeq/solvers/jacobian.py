"""Jacobian regulariser: Hutchinson estimate of ‖J_f‖²_F (Bai et al., "Stabilizing
equilibrium models by Jacobian regularization", the paper's JacobianRegSpec).

For probes v ~ N(0, I), E‖vᵀ J‖² = ‖J‖²_F. With the batch stacked, J is block diagonal, so
one vector–Jacobian product per probe gives Σ_b ‖J_b‖²_F. The returned value is normalised
per element: Σ_probes ‖vᵀJ‖² / (n_samples · B · d), i.e. the batch mean of ‖J_b‖²_F / d with
d the elements of one sample — the same normalisation as torchdeq's ``jac_reg``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from noisydeq.errors import NoisyDEQError
from noisydeq.solvers.draws import Draws


def jacobian_frobenius_hutchinson(
    f_out: Tensor,
    z_in: Tensor,
    n_samples: int = 1,
    generator: torch.Generator | Draws | None = None,
    create_graph: bool = True,
) -> Tensor:
    """Unbiased estimate of mean_b ‖∂f_b/∂z_b‖²_F / d from ``f_out = f(z_in)`` (scalar tensor).

    ``generator`` draws the probes: a :class:`~noisydeq.noise.NoiseStream` (each sample's
    probe a function of its address), a ``torch.Generator``, or ``None`` (the global RNG).
    ``z_in`` must require grad and ``f_out`` must have been computed from it. With
    ``create_graph`` (default) the estimate is differentiable, for use as a training loss.
    """
    if n_samples < 1:
        raise NoisyDEQError(f"jacobian_reg.n_samples: must be >= 1, got {n_samples}")
    if not z_in.requires_grad or not f_out.requires_grad:
        raise NoisyDEQError(
            "jacobian_reg: f_out must be computed from z_in with z_in.requires_grad=True"
        )
    total = f_out.new_zeros(())
    for _ in range(n_samples):
        if generator is not None and not isinstance(generator, torch.Generator):  # a stream
            v = generator.randn(f_out.shape, f_out.dtype, f_out.device)
        else:
            v = torch.randn(
                f_out.shape,
                generator=generator,
                dtype=f_out.dtype,
                device=generator.device if generator is not None else f_out.device,
            ).to(f_out.device)
        (vj,) = torch.autograd.grad(f_out, z_in, v, retain_graph=True, create_graph=create_graph)
        total = total + vj.pow(2).sum()
    return total / (n_samples * z_in.numel())
