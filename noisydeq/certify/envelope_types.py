"""What a device envelope is: per-layer weight uncertainty and dynamic-error bounds.

An :class:`Envelope` states, for each device-mapped layer (by its module name in the
model), that the chip's effective weights satisfy |W_chip − W| ≤ ``delta`` elementwise and,
optionally, that each read adds an error of at most ``dyn_i · max|x|`` to output i (x the
vector the crossbar reads; the rram device normalises every input vector by its max |x|).
Certificates computed with an envelope hold for every chip inside it; ``assumption`` says
in words what that means for the physical device. Builders: :mod:`noisydeq.certify.envelope`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class LayerEnvelope:
    """|W_chip − W| ≤ ``delta`` (weight-shaped, ≥ 0); read error ≤ ``dyn`` · max|x| (per
    output unit, or None for no dynamic part)."""

    delta: Tensor
    dyn: Tensor | None = None

    def dyn_bound(self, abs_max_in: Tensor, ndim: int) -> Tensor | None:
        """Error bound on the layer output for inputs of per-sample max |x| ``abs_max_in``
        (B,), broadcast to an output of ``ndim`` dimensions."""
        if self.dyn is None:
            return None
        per = self.dyn.reshape((1, -1) + (1,) * (ndim - 2))
        return per * abs_max_in.reshape((-1,) + (1,) * (ndim - 1))


@dataclass
class Envelope:
    """Per-layer :class:`LayerEnvelope` s by module name, a short ``label`` and the
    ``assumption`` under which a certificate computed with it holds."""

    layers: dict[str, LayerEnvelope] = field(default_factory=dict)
    label: str = "none"
    assumption: str = "exact digital weights"
    facts: dict[str, float] = field(default_factory=dict)

    def layer(self, name: str) -> LayerEnvelope | None:
        return self.layers.get(name)

    @property
    def dynamic(self) -> bool:
        return any(le.dyn is not None for le in self.layers.values())

    def to(self, **kw) -> Envelope:
        """The envelope with tensors moved/cast (``Tensor.to`` keywords)."""
        out = {
            k: LayerEnvelope(v.delta.to(**kw), None if v.dyn is None else v.dyn.to(**kw))
            for k, v in self.layers.items()
        }
        return Envelope(out, self.label, self.assumption, dict(self.facts))
