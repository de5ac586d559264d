"""Scalar operands as cached 0-dim tensors: the same arithmetic without a cast per call.

A float32 tensor operation with a Python float (``t * 0.5``, ``t.add_(c)``, ``c / t``) wraps
the number into a 0-dim float64 tensor and casts it to float32 (``aten::to``, a
``_to_copy``) at every call. On this project's small tensors (a 128-wide layer, a batch of
64) that cast costs about as much as the operation itself: measured with torch 2.13 on one
CPU thread, ``t * c`` on a 64×128 float32 tensor takes 8-16 µs with a Python float and 4-8 µs
with a 0-dim float32 tensor; ``t.mul_(c)`` 12 µs vs 1.4-5 µs. The device layers perform tens
of such operations per forward (converter steps, noise scales, the noise model's
polynomials), so they take their constants from :func:`const`.

The result is bit-identical: both forms are CPU scalars to ``TensorIterator`` (same type
promotion, same scalar kernels), and the value the kernel sees is the float rounded to the
tensor's dtype in both (``tests/test_scalars.py`` checks ``+ - * /`` both ways round).
Only for floating tensors: an integer tensor times a Python float promotes to float, times
a 0-dim integer tensor it would not.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: cached constants; cleared when it grows past this many (a knob per calibration probe)
MAX_CACHED = 4096
_CACHE: dict[tuple[float | str, torch.dtype, torch.device], Tensor] = {}


def const(value: float, like: Tensor) -> Tensor:
    """``value`` as a 0-dim tensor of ``like``'s (floating) dtype and device, cached."""
    key = (value if value == value and value != 0 else repr(float(value)), like.dtype,
           like.device)  # -0.0 == 0.0 and nan != nan: those by their text
    t = _CACHE.get(key)
    if t is None:
        if not like.dtype.is_floating_point:
            raise TypeError(f"const: a floating tensor is needed, got {like.dtype}")
        if len(_CACHE) >= MAX_CACHED:
            _CACHE.clear()
        t = _CACHE[key] = torch.tensor(float(value), dtype=like.dtype, device=like.device)
    return t
