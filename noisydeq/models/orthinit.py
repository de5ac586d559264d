"""Delta-orthogonal initialisation of the hidden convolutions of per-position cells.

Why. A stack of ``depth`` distinct tanh convolutions without normalisation or skips (the
prefix-sum FFW: App. E.4's conv1d unit cell, one per layer) initialised by PyTorch's default
(kaiming-uniform with a = √5, weight std 1/√(3·fan_in)) shrinks a back-propagated signal by
about 2 per layer: at 32 layers the first layer's gradient is ~10⁻⁹ of the last's and the
output's sensitivity to the first bit ~10⁻¹⁷ (measured, docs/reproduction.md) — below Adam's
ε, so nothing that needs the whole string can be learned. This is the vanishing-gradient
regime of deep vanilla tanh CNNs analysed by Xiao et al. (2018, "Dynamical isometry and a
mean field theory of CNNs: how to train 10,000-layer vanilla convolutional neural
networks", ICML), whose fix keeps the architecture and changes only the initialisation:

    W[:, :, centre] = Q (orthogonal, gain g),   W[:, :, other taps] = 0    (their Alg. 2),

so each layer starts as an isometry of the channels at every position (orthogonal weights
for deep linear/tanh nets: Saxe et al. 2014). Biases, the input projection and the head keep
their default initialisation. Only the starting point changes; the unit cell, its parameter
count and the training are those of the default model.
"""

from __future__ import annotations

import torch
from torch import nn

from noisydeq.errors import NoisyDEQError
from noisydeq.models.wnconv import WeightNorm

INITS = ("default", "delta_orthogonal")


def check_init(init: str) -> str:
    """An initialisation name of :data:`INITS`; anything else is one clear error."""
    if init not in INITS:
        raise NoisyDEQError(f"init: unknown initialisation '{init}' (allowed: "
                            f"{', '.join(INITS)})")
    return init


def delta_orthogonal_(layer: nn.Module, gain: float = 1.0) -> None:
    """Set a square 'same' convolution (or its :class:`WeightNorm` wrapper) to a delta-
    orthogonal kernel: an orthogonal c×c matrix of ``gain`` at the centre tap, zeros elsewhere
    (Xiao et al. 2018, Alg. 2). Draws from torch's global generator (seed it first). With
    weight norm the direction v is set and the gain g to ‖v_o‖ = ``gain`` per output channel,
    so the effective weight is the same kernel."""
    conv = layer.inner if isinstance(layer, WeightNorm) else layer
    w = conv.weight
    if w.ndim < 3 or w.shape[0] != w.shape[1] or any(k % 2 == 0 for k in w.shape[2:]):
        raise NoisyDEQError(f"init: delta_orthogonal needs a square convolution with odd "
                            f"kernels, got weight shape {tuple(w.shape)}")
    q = torch.empty(w.shape[0], w.shape[1], dtype=w.dtype)
    nn.init.orthogonal_(q, gain=gain)
    centre = tuple(k // 2 for k in w.shape[2:])
    with torch.no_grad():
        w.zero_()
        w[(slice(None), slice(None), *centre)] = q
        if isinstance(layer, WeightNorm):
            layer.g.copy_(w.flatten(1).norm(dim=1))


def hidden_convolutions(model: nn.Module) -> list[nn.Module]:
    """The hidden (state → state) convolutions of a per-position DEQ or FFW: ``W`` of every
    conv1d layer, ``W1`` and ``W2`` of every residual block — not the input projection U or
    the head."""
    from noisydeq.models.spatial import ConvLayer, ResidualLayer

    out: list[nn.Module] = []
    for mod in model.modules():
        if isinstance(mod, ConvLayer):
            out.append(mod.W)
        elif isinstance(mod, ResidualLayer):
            out.extend((mod.W1, mod.W2))
    return out


def apply_init(model: nn.Module, init: str) -> nn.Module:
    """Re-initialise ``model``'s hidden convolutions per ``init`` (``default``: unchanged)."""
    if check_init(init) == "delta_orthogonal":
        layers = hidden_convolutions(model)
        if not layers:
            raise NoisyDEQError("init: delta_orthogonal applies to the per-position cells "
                                "(conv1d, residual) only")
        for layer in layers:
            delta_orthogonal_(layer)
    return model
