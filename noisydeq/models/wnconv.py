"""Weight normalisation that analog hardware can map: the MVM uses v, a digital gain g/‖v‖ follows.

Weight normalisation (Salimans & Kingma 2016; used by MDEQ, paper Table 3) writes each
output channel's weights as w_o = g_o v_o / ‖v_o‖. A convolution (or linear map) with w is
the same as the one with v followed by the per-channel gain g_o/‖v_o‖:

    conv(x, w) + b = (g / ‖v‖) ⊙ conv(x, v) + b.

:class:`WeightNorm` computes the right-hand side: ``inner`` is a plain bias-free
``nn.Conv1d``/``nn.Conv2d``/``nn.Linear`` holding v — the layer a device replaces
(``Device.deploy``), so the crossbar stores v — and the gain and bias are applied digitally
after the MVM, as an analog periphery applies per-column output scales. ``torch``'s own
``parametrizations.weight_norm`` computes w before the convolution and cannot be deployed.
At initialisation g = ‖v‖, so the layer starts as the plain layer would.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class WeightNorm(nn.Module):
    """y = (g/‖v‖) ⊙ inner(x) + b around a bias-free ``inner`` layer (v = ``inner.weight``).

    ``digital_periphery``: its own parameters (g, b) act after the MVM, digitally; devices
    map ``inner`` and leave the rest (``noisydeq.hardware``).
    """

    digital_periphery = True

    def __init__(self, inner: nn.Module, bias: bool = True) -> None:
        super().__init__()
        if getattr(inner, "bias", None) is not None:
            raise ValueError("WeightNorm: the inner layer must have no bias")
        self.inner = inner
        with torch.no_grad():
            norm = inner.weight.flatten(1).norm(dim=1)
        self.g = nn.Parameter(norm.clone())
        self.bias = nn.Parameter(torch.zeros(inner.weight.shape[0])) if bias else None
        if bias:
            fan_in = inner.weight[0].numel()
            bound = 1.0 / fan_in**0.5  # nn.Conv/nn.Linear's default bias init
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def weight(self) -> Tensor:
        """The effective weight w = g v / ‖v‖ (for analyses; the forward never forms it)."""
        v = self.inner.weight
        scale = self.g / v.flatten(1).norm(dim=1)
        return v * scale.reshape((-1,) + (1,) * (v.ndim - 1))

    def forward(self, x: Tensor) -> Tensor:
        v = self.inner.weight
        y = self.inner(x)
        shape = (1, -1) + (1,) * (y.ndim - 2)
        y = y * (self.g / v.flatten(1).norm(dim=1)).reshape(shape)
        return y if self.bias is None else y + self.bias.reshape(shape)


def conv(
    ndim: int, c_in: int, c_out: int, kernel_size: int, *, bias: bool = True,
    weight_norm: bool = False, stride: int = 1,
) -> nn.Module:
    """A 'same'-padded ``ndim``-d convolution (1 or 2), optionally weight-normalised."""
    cls = nn.Conv1d if ndim == 1 else nn.Conv2d
    layer = cls(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2,
                bias=bias and not weight_norm)
    return WeightNorm(layer, bias=bias) if weight_norm else layer


def linear(c_in: int, c_out: int, *, bias: bool = True, weight_norm: bool = False) -> nn.Module:
    """``nn.Linear``, optionally weight-normalised."""
    layer = nn.Linear(c_in, c_out, bias=bias and not weight_norm)
    return WeightNorm(layer, bias=bias) if weight_norm else layer
