"""Keep a DEQ cell a contraction: project its W onto ‖W‖₂ ≤ c after every optimiser step.

The cell f(z) = tanh(W z + b + x̃) (Eq. 57, and its convolutional analogue) has Lipschitz
constant at most ‖W‖₂ in z, since tanh is 1-Lipschitz. With ‖W‖₂ ≤ c < 1, f is a
contraction: the fixed point z* of Eq. 1 exists, is unique, and the iteration reaches it at
rate c (Banach). Training does not keep that by itself: under adversarial training the conv
cell's ‖W‖₂ grew from 1.1 to above 2 within 20 batches and the solve stopped converging
(docs/robustness-conv.md, "Keeping the conv DEQ convergent").

:func:`cap_spectral_norm` rescales W by c/‖W‖₂ when ‖W‖₂ > c — the Euclidean projection of
the spectrum's top onto the cap is a rescaling only when one singular value exceeds it, so
this is the scaling form of spectral normalisation (Miyato et al. 2018, W/σ(W)), used as a
projection after each step rather than a reparametrisation, so that the saved weights carry
the bound and the model needs no change at test time or on a device.

‖W‖₂ is exact: for a linear W its largest singular value; for a 'same'-padded k×k
convolution on H×W images, the largest singular value of the circular convolution on the
(H + k − 1)×(W + k − 1) torus (Sedghi, Gupta & Long 2019: the singular values of the per-
frequency C_out×C_in matrices of the kernel's 2-D DFT). The zero-padded convolution is
that circular one restricted to an embedded H×W window, so its norm is at most this bound
(on 28×28 images within 1 % of it, tests/models/test_spectral_cap.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from noisydeq.errors import NoisyDEQError


def conv_operator_norm(weight: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """Upper bound on ‖conv_weight‖₂ of a 'same'-padded 2-D convolution on ``image_hw``
    images (exact for the circular convolution on the (H + k − 1)×(W + k − 1) torus)."""
    if weight.ndim != 4:
        raise NoisyDEQError(f"spectral_cap: a 2-D conv weight is (C_out, C_in, k, k), got "
                            f"{tuple(weight.shape)}")
    kh, kw = weight.shape[-2:]
    n1, n2 = image_hw[0] + kh - 1, image_hw[1] + kw - 1
    spec = torch.fft.fft2(weight.detach().to(torch.float64), s=(n1, n2))  # (Co, Ci, n1, n2)
    mats = spec.permute(2, 3, 0, 1)
    return torch.linalg.matrix_norm(mats, ord=2).amax().to(weight.dtype)


def _target(model: nn.Module) -> tuple[nn.Module, tuple[int, int] | None]:
    """(the cell's W layer, its image size or None for a linear W); one line otherwise."""
    cell = getattr(model, "cell", None)
    layer = getattr(cell, "W", None)
    if getattr(model, "kind", None) != "deq" or layer is None:
        raise NoisyDEQError(f"spectral_cap: only a DEQ with the mlp or conv cell has the single "
                            f"W it caps; got a '{getattr(model, 'kind', type(model).__name__)}' "
                            f"model")
    weight = layer.weight
    if weight.ndim == 2:
        return layer, None
    proj = getattr(cell, "proj", None)
    shape = getattr(proj, "in_shape", None)
    if weight.ndim == 4 and shape is not None and weight.shape[-1] == weight.shape[-2]:
        return layer, (int(shape[1]), int(shape[2]))
    raise NoisyDEQError(f"spectral_cap: the cell's W of shape {tuple(weight.shape)} is neither "
                        "a linear map nor a square-kernel 2-D conv")


def spectral_norm_of(model: nn.Module) -> float:
    """‖W‖₂ of a DEQ cell (the conv bound of :func:`conv_operator_norm`)."""
    layer, hw = _target(model)
    w = layer.weight.detach()
    if hw is None:
        return float(torch.linalg.matrix_norm(w.to(torch.float64), ord=2))
    return float(conv_operator_norm(w, hw))


@torch.no_grad()
def cap_spectral_norm(model: nn.Module, cap: float) -> float:
    """Rescale the DEQ cell's W so that ‖W‖₂ ≤ ``cap``; returns ‖W‖₂ before the rescaling.

    Under weight normalisation (w = g·v/‖v‖) the gains g are scaled, else W itself."""
    if not cap > 0:
        raise NoisyDEQError(f"spectral_cap: must be > 0, got {cap}")
    layer, _ = _target(model)
    norm = spectral_norm_of(model)
    if norm > cap:
        factor = cap / norm
        para = getattr(layer, "parametrizations", None)
        if para is not None and hasattr(para, "weight"):
            para.weight.original0.mul_(factor)  # torch's weight_norm: original0 is g
        elif isinstance(getattr(layer, "g", None), nn.Parameter):
            layer.g.mul_(factor)  # noisydeq.models.wnconv.WeightNorm
        else:
            layer.weight.mul_(factor)
    return norm
