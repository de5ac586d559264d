"""Feed-forward network of ``depth`` distinct Eq. 57 layers with the DEQ's projections.

Which FFW the paper compares with. App. E.1 fixes the *layer*: "the unit-cell of a DEQ or a
layer of an FFW then assumes the form" z^{m+1} = tanh(W z^m + b + x̃) (Eq. 57), the input
injection x̃ = act(U x) entering every layer (as in the multiplicative analysis, App. A.2.2
Eq. 41), and App. E.1 / §4.1 count every layer's weights in the parameter match
(depth · h² hidden weights against the DEQ's d²). The paper states the FFW's *start* once,
in App. A.2.1: "z⁰ = x̃ = σ₂(U x)" (Eq. 32), and its one-layer FFW of App. A.3 has
s₀ = W₁ x̃ (Eq. 51): the first hidden matrix multiplies the injection. Read together, the
FFW of the paper's experiments starts from z⁰ = x̃ and applies ``depth`` Eq. 57 layers —
every counted hidden matrix acts. That is the default form here.

Forms (``form=``; :data:`FFW_FORMS`):

* ``"eq57x"`` (default): z⁰ = x̃, z^{m+1} = tanh(W_m z^m + b_m + x̃) — App. E.1 layers from
  the App. A.2.1 start. Every W_m acts; a depth-1 FFW is tanh(W₀ x̃ + b₀ + x̃), the one-layer
  network of Eq. 51 with the Eq. 57 injection.
* ``"eq57"`` (previous default, kept by name): z⁰ = 0, z^{m+1} = tanh(W_m z^m + b_m + x̃).
  With tied weights it is exactly ``depth`` unrolled DEQ steps from z⁰ = 0, but W₀
  multiplies zero: it gets no gradient and layer 0 computes tanh(b₀ + x̃), so a depth-d FFW
  has d − 1 acting hidden matrices while all d are counted in the match.
* ``"eq32"``: z⁰ = x̃, z^{m+1} = tanh(W_m z^m + b_m) — the additive-noise analysis form of
  App. A.2.1 (Eq. 32/10), no injection after the start. Every W_m acts.

Noise sites per layer, as in the DEQ cell: ``state`` (z^m before W_m), ``signal``
(pre-activation); ``input`` (x before U) is drawn once per forward.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from noisydeq.errors import NoisyDEQError
from noisydeq.limits import check_positive
from noisydeq.models.base import CountingMixin, ModelOutput
from noisydeq.models.cells import InputProjection, TanhLayer
from noisydeq.noise import Noise
from noisydeq.specs.base import check_choice
from noisydeq.specs.model import FFW_FORMS

DEFAULT_FFW_FORM = FFW_FORMS[0]


def check_form(form: str) -> str:
    """Validate an FFW form name (:data:`noisydeq.config.FFW_FORMS`); an unknown one is one
    error with a suggestion."""
    try:
        return check_choice(form, FFW_FORMS)
    except ValueError as err:
        raise NoisyDEQError(f"ffw_form: {err}") from None


def acting_layers(form: str, depth: int) -> list[int]:
    """Indices of the layers whose hidden matrix W_m multiplies a non-zero state.

    Every layer in ``eq57x`` and ``eq32``; all but layer 0 in ``eq57`` (z⁰ = 0).
    """
    return list(range(1, depth)) if check_form(form) == "eq57" else list(range(depth))


def start_state(form: str, xt: Tensor) -> tuple[Tensor, Tensor]:
    """(z⁰, injection added at every layer) of an FFW of ``form`` for the injection x̃."""
    if form == "eq57x":
        return xt, xt
    if form == "eq57":
        return torch.zeros_like(xt), xt
    return xt, torch.zeros_like(xt)


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
        form: str = DEFAULT_FFW_FORM,
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

    def start(self, xt: Tensor) -> tuple[Tensor, Tensor]:
        """(z⁰, per-layer injection) of this FFW's form (:func:`start_state`)."""
        return start_state(self.form, xt)

    def pool(self, z: Tensor) -> Tensor:
        """Map the last hidden state to head features (identity here)."""
        return z

    def hidden_weight_count(self, include_bias: bool = True) -> int:
        """Σ_m parameters of W_m: depth·(h² + h) (depth·h² without biases), App. E.1."""
        return sum(layer.hidden_weight_count(include_bias) for layer in self.layers)

    def acting_weight_count(self, include_bias: bool = True) -> int:
        """Parameters of the hidden matrices that act (:func:`acting_layers`) plus the
        biases of the others: equal to :meth:`hidden_weight_count` except in ``eq57``."""
        acting = set(acting_layers(self.form, self.depth))
        total = 0
        for m, layer in enumerate(self.layers):
            n = layer.hidden_weight_count(include_bias)
            total += n if m in acting else n - layer.W.weight.numel()
        return total

    def forward(
        self,
        x: Tensor,
        noise: Noise | None = None,
        *,
        return_solution: bool = False,
        return_states: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor | ModelOutput:
        """Run the layers from z⁰ (:meth:`start`) and the head; noise drawn at every layer.

        Same signature as :meth:`DEQ.forward`; ``generator`` is unused (no solver).
        """
        xt = self.inject(x, noise)
        z, inj = self.start(xt)
        states: list[Tensor] | None = [] if return_states else None
        for layer in self.layers:
            z = layer(z, inj, noise)
            if states is not None:
                states.append(z)
        logits = self.head(self.pool(z))
        if not (return_solution or return_states):
            return logits
        return ModelOutput(logits=logits, z=z, solution=None, states=states)
