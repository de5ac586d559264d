"""Run-time environment choices shared by the commands: the torch device to compute on."""

from __future__ import annotations

import torch

from noisydeq.errors import NoisyDEQError


def resolve_torch_device(name: str) -> torch.device:
    """A torch device from ``--torch-device`` (``cpu``, ``cuda``, ``cuda:1``, ...).

    An unparsable name or CUDA on a machine without it is one clear error.
    """
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise NoisyDEQError(
            f"--torch-device '{name}': not a torch device (e.g. cpu, cuda, cuda:0)"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NoisyDEQError(f"--torch-device '{name}': CUDA is not available on this machine")
    return dev
