"""What DEQ and FFW models share: the :class:`ModelOutput` record and parameter counting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from noisydeq.limits import check_positive


@dataclass
class ModelOutput:
    """Everything one forward pass can report.

    ``logits``: head output. ``z``: the hidden state fed to the head (the DEQ fixed point
    z* with its gradient attached, or the last FFW layer). ``solution``: the forward solver's
    ``Solution`` (DEQ only). ``states``: per-iteration (DEQ: the cell output of every
    f-evaluation of the forward solve) or per-layer (FFW) states, only when asked for.
    ``jac_loss``: the weighted Jacobian regulariser term (DEQ, training, regulariser on).
    """

    logits: Tensor
    z: Tensor
    solution: Any | None = None
    states: list[Tensor] | None = None
    jac_loss: Tensor | None = None


class CountingMixin:
    """``parameter_count`` for any ``nn.Module``; models add ``hidden_weight_count``."""

    def _record_sizes(
        self, in_features: int, out_features: int, input_act: str, width: int, depth: int
    ) -> None:
        """Validate and keep the sizes every DEQ/FFW exposes (width, depth named in errors)."""
        self.width = check_positive("width", width)
        self.depth = check_positive("depth", depth)
        self.in_features = in_features
        self.out_features = out_features
        self.input_act = input_act

    def parameter_count(self) -> int:
        """Number of trainable parameters (all weights and biases, projections and head)."""
        assert isinstance(self, nn.Module)
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
