"""Per-layer Jacobian regularisation of an FFW (paper §3.3 after Eq. 12, App. D.2 Fig. 13).

A DEQ is regularised at its fixed point only (Table 1: ‖J_f(z*)‖²_F/d, weight 1.0); the FFW
counterpart needs a term at every layer m: Σ_m ‖∂z^{m+1}/∂z^m‖²_F / d, each estimated with
Hutchinson probes by :func:`noisydeq.solvers.jacobian_frobenius_hutchinson`, over the layers
whose matrix acts (:func:`noisydeq.models.ffw.acting_layers`): every layer in the default
``eq57x`` form; in the ``eq57`` form the first layer acts on z⁰ = 0, so its Jacobian has no
effect and is left out.

:class:`JacRegFFW` is an :class:`~noisydeq.models.FFW` that, in training mode with a positive
weight, returns a ``ModelOutput`` whose ``jac_loss`` ``noisydeq.train.train_model`` adds to
the task loss (the same hook the DEQ uses); in eval mode it is exactly the FFW. Its weights
load into a plain FFW, so trained checkpoints work with every analysis command.
"""

from __future__ import annotations

import torch
from torch import Tensor

from noisydeq.models.base import ModelOutput
from noisydeq.models.ffw import DEFAULT_FFW_FORM, FFW, acting_layers
from noisydeq.noise import Noise, NoiseStream
from noisydeq.solvers import jacobian_frobenius_hutchinson
from noisydeq.specs.solver import JacobianRegSpec


def layer_inputs_regularised(form: str, depth: int) -> list[int]:
    """Indices of the layers whose Jacobian is regularised: those whose matrix acts."""
    return acting_layers(form, depth)


class JacRegFFW(FFW):
    """FFW trained with Σ_m weight · ‖J_m‖²_F / d over its layers (Fig. 13, 'FFW + Jac. reg.')."""

    def __init__(self, *args, jac_reg: JacobianRegSpec | None = None,
                 form: str = DEFAULT_FFW_FORM, **kw) -> None:
        super().__init__(*args, form=form, **kw)
        self.jac_reg = jac_reg
        self.jac_reg_active = True
        #: draws the Hutchinson probes (set per batch by training; None: global RNG)
        self.jac_generator: torch.Generator | NoiseStream | None = None

    def layer_penalty(self, x: Tensor, noise: Noise | None = None, n_samples: int = 1,
                      generator: torch.Generator | NoiseStream | None = None,
                      ) -> tuple[Tensor, Tensor]:
        """(logits, Σ_m ‖∂z^{m+1}/∂z^m‖²_F/d Hutchinson estimate) of one forward pass."""
        xt = self.inject(x, noise)
        z, inj = self.start(xt)
        keep = set(layer_inputs_regularised(self.form, self.depth))
        total = xt.new_zeros(())
        for m, layer in enumerate(self.layers):
            if m in keep and not z.requires_grad:
                z = z.detach().requires_grad_(True)
            elif m in keep and z is inj:  # eq57x layer 0: ∂/∂z⁰ only, not via the injection
                z = z.view_as(z)
            z_next = layer(z, inj, noise)
            if m in keep:
                total = total + jacobian_frobenius_hutchinson(
                    z_next, z, n_samples, generator=generator, create_graph=True)
            z = z_next
        return self.head(self.pool(z)), total

    def forward(self, x: Tensor, noise: Noise | None = None, *, return_solution: bool = False,
                return_states: bool = False) -> Tensor | ModelOutput:
        reg = self.jac_reg
        if (reg is None or reg.weight <= 0 or not self.jac_reg_active or not self.training
                or not torch.is_grad_enabled() or return_states):
            return super().forward(x, noise, return_solution=return_solution,
                                   return_states=return_states)
        logits, est = self.layer_penalty(x, noise, reg.n_samples, self.jac_generator)
        return ModelOutput(logits=logits, z=logits, jac_loss=reg.weight * est)
