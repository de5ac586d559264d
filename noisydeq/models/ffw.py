"""Feed-forward network of ``depth`` distinct Eq. 57 layers with the DEQ's projections.

Form (``form="eq57"``, default): z⁰ = 0 and z^{m+1} = tanh(W_m z^m + b_m + x̃) — every layer
is the DEQ unit cell of App. E.1 (Eq. 57: "the unit-cell of a DEQ or a layer of an FFW")
with the input injection x̃ = act(U x) at every layer, as in App. A.2.2 Eq. 41. With tied
weights (all W_m = W) this FFW is exactly ``depth`` unrolled DEQ steps from z⁰ = 0, the
comparison the paper draws. Consequence: the first layer multiplies z⁰ = 0, so W_0 gets no
gradient and layer 0 computes tanh(b_0 + x̃); its weights are still counted (the paper
counts depth·h² hidden weights).

``form="eq32"``: z⁰ = x̃ and z^{m+1} = tanh(W_m z^m + b_m) — the additive-noise analysis
form of App. A.2.1 (Eq. 32, also Eq. 51), no injection after the first layer.

Noise sites per layer, as in the DEQ cell: ``state`` (z^m before W_m), ``signal``
(pre-activation); ``input`` (x before U) is drawn once per forward.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from noisydeq.errors import NoisyDEQError
from noisydeq.models.base import CountingMixin, ModelOutput
from noisydeq.models.cells import InputProjection, TanhLayer, check_positive
from noisydeq.noise import Noise

FFW_FORMS = ("eq57", "eq32")


def check_form(form: str) -> str:
    """Validate the FFW layer form name."""
    if form not in FFW_FORMS:
        raise NoisyDEQError(f"ffw_form: unknown form '{form}' (allowed: {', '.join(FFW_FORMS)})")
    return form


class FFW(CountingMixin, nn.Module):
    """``depth`` distinct Eq. 57 layers of ``hidden`` units between U and the output head."""

    kind = "ffw"

    def __init__(
        self,
        in_features: int,
        hidden: int,
        depth: int,
        out_features: int,
        input_act: str = "relu",
        *,
        form: Literal["eq57", "eq32"] = "eq57",
    ) -> None:
        super().__init__()
        check_positive("out_features", out_features)
        self._record_sizes(in_features, out_features, input_act, hidden, depth)
        self.form = check_form(form)
        self.proj = InputProjection(in_features, hidden, input_act)
        self.layers = nn.ModuleList(TanhLayer(hidden) for _ in range(depth))
        self.head = nn.Linear(hidden, out_features)

    def inject(self, x: Tensor, noise: Noise | None = None) -> Tensor:
        """x̃ = act(U (x + ε_x)) (input noise drawn once per forward)."""
        return self.proj(x, noise)

    def pool(self, z: Tensor) -> Tensor:
        """Map the last hidden state to head features (identity here)."""
        return z

    def hidden_weight_count(self, include_bias: bool = True) -> int:
        """Σ_m parameters of W_m: depth·(h² + h) (depth·h² without biases), App. E.1."""
        return sum(layer.hidden_weight_count(include_bias) for layer in self.layers)

    def forward(
        self,
        x: Tensor,
        noise: Noise | None = None,
        *,
        return_solution: bool = False,
        return_states: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor | ModelOutput:
        """Run the layers (Eq. 57 or Eq. 32) and the head; noise is drawn at every layer.

        Same signature as :meth:`DEQ.forward`; ``generator`` is unused (no solver).
        """
        xt = self.inject(x, noise)
        if self.form == "eq57":
            z, inj = torch.zeros_like(xt), xt
        else:
            z, inj = xt, torch.zeros_like(xt)
        states: list[Tensor] | None = [] if return_states else None
        for layer in self.layers:
            z = layer(z, inj, noise)
            if states is not None:
                states.append(z)
        logits = self.head(self.pool(z))
        if not (return_solution or return_states):
            return logits
        return ModelOutput(logits=logits, z=z, solution=None, states=states)
