"""Explicit ReLU network, the IBP baseline of Wei & Kolter 2022 (Table 1, "3LAYER").

``kind = "ffw_relu"``::

    z⁰ = act(BN(U x + b_U))                     the same injection as the monotone DEQ
    z^{m+1} = relu(BN(W_m z^m + b_m))   m < depth
    logits = head(z^depth)                      FC (pooled for conv)

With ``depth = 1`` and ``cell = "conv"`` this is the paper's 3LAYER model
(Conv-C-3×3, Conv-C-3×3, pooled FC-10) and has the parameter count of the DEQ-3 IBP-MonDEQ
(:class:`noisydeq.models.mondeq.MonDEQ` with the same width): U ↔ the first conv, M ↔ the
second. BN follows every linear layer but the last (Shi et al. 2021, §4), weights may take
the IBP initialisation. Noise sites as for the other models: ``input`` (x, once per
forward), ``state`` (each layer's input), ``signal`` (each layer's W z + b).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from noisydeq.limits import check_positive
from noisydeq.models.base import CountingMixin, ModelOutput
from noisydeq.models.cells import apply_noise
from noisydeq.models.conv import PooledHead, _check_kernel, image_shape
from noisydeq.models.mondeq import Injection, ibp_init_, make_linear, norm_layer
from noisydeq.noise import Noise
from noisydeq.specs.model import MonotoneSpec


class ReluLayer(nn.Module):
    """z ← relu(BN(W (z + ε_z) + b (+ ε_s)))."""

    def __init__(self, width: int, batch_norm: bool, image: tuple[int, int, int] | None,
                 kernel: int) -> None:
        super().__init__()
        self.W = make_linear(width, image, kernel, bias=True)
        self.bn = norm_layer(width, image) if batch_norm else None

    def forward(self, z: Tensor, noise: Noise | None = None) -> Tensor:
        s = apply_noise(noise, "signal", self.W(apply_noise(noise, "state", z)))
        return torch.relu(s if self.bn is None else self.bn(s))

    def hidden_weight_count(self, include_bias: bool = True) -> int:
        n = int(self.W.weight.numel())
        return n + (int(self.W.bias.numel()) if include_bias else 0)


class ReluFFW(CountingMixin, nn.Module):
    """``depth`` ReLU layers of ``width`` units after the injection, then the head."""

    kind = "ffw_relu"

    def __init__(
        self,
        in_features: int,
        width: int,
        depth: int,
        out_features: int,
        input_act: str = "relu",
        *,
        monotone: MonotoneSpec | None = None,
        conv: bool = False,
        in_shape: Sequence[int] | None = None,
        kernel_size: int = 3,
        pool: int = 4,
    ) -> None:
        super().__init__()
        check_positive("out_features", out_features)
        self._record_sizes(in_features, out_features, input_act, width, depth)
        spec = monotone if monotone is not None else MonotoneSpec()
        image = image_shape(in_features, in_shape) if conv else None
        kernel = _check_kernel(kernel_size) if conv else kernel_size
        self.proj = Injection(in_features, width, input_act, spec.batch_norm, image, kernel)
        self.layers = nn.ModuleList(
            ReluLayer(width, spec.batch_norm, image, kernel) for _ in range(depth)
        )
        self.head = nn.Linear(width, out_features) if image is None else PooledHead(
            width, out_features, pool)
        if spec.ibp_init:
            mods = [self.proj.U, *(layer.W for layer in self.layers),
                    self.head if image is None else self.head.linear]
            for mod in mods:
                ibp_init_(mod)

    def hidden_weight_count(self, include_bias: bool = True) -> int:
        """Σ_m parameters of W_m (the hidden h×h layers)."""
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
        """Run the layers and the head (same signature as the DEQs; no solver)."""
        z = self.proj(x, noise)
        states: list[Tensor] | None = [] if return_states else None
        for layer in self.layers:
            z = layer(z, noise)
            if states is not None:
                states.append(z)
        logits = self.head(z)
        if not (return_solution or return_states):
            return logits
        return ModelOutput(logits=logits, z=z, solution=None, states=states)
