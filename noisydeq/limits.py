"""Bounds on what a run may ask for, and the up-front memory estimate.

Every size, count and grid a user gives (CLI, ``--set``, presets, experiment files) is
checked against these bounds when its spec is validated, so an impossible request is one
line within a second instead of a ``MemoryError`` a minute later. A request inside the
bounds whose models still cannot fit is refused by :func:`check_memory` before anything is
written.

SNR bounds: below -100 dB the noise is 10¹⁰ times the signal power and above 200 dB it is
below float64 resolution (float32 already resolves nothing beyond ~140 dB), so neither end
is a meaningful operating point; ``inf`` (no noise) is always allowed.
"""

from __future__ import annotations

import os
from pathlib import Path

from noisydeq.errors import NoisyDEQError

SNR_MIN_DB = -100.0
SNR_MAX_DB = 200.0
#: most levels in one SNR grid (a 0:30 sweep has 31)
MAX_SNR_LEVELS = 1000
#: most FFW layers (the paper goes to 13)
MAX_DEPTH = 1000
#: widest layer (units or channels)
MAX_WIDTH = 65536
MAX_CHIPS = 10000
#: most seeds (or training SNRs) in one sweep
MAX_SEEDS = 1000
#: seeds are 63-bit integers (``derive_seed``'s range)
MAX_SEED = 2**63 - 1
MAX_EPOCHS = 100_000
MAX_ITER = 1_000_000
MAX_BATCH = 2**20
#: rows of one evaluation forward (levels stacked × test samples)
MAX_ROWS = 2**24
#: samples of a task subset
MAX_SAMPLES = 10**9

#: bytes per stored float (float32 models)
FLOAT = 4
#: weight-sized copies while a model trains (weights, gradient, two Adam moments, the
#: deployed copy and the initial weights) or is evaluated on a device (programmed weights,
#: per-chip draws, the digital reference)
WEIGHT_COPIES = 8
#: activation-sized buffers per row and unit during a solve (solver history, residual
#: window, traces, device intermediates)
ACTIVATION_COPIES = 32


def fmt_bytes(n: float) -> str:
    """``1.5 GiB`` style text of a byte count: three significant digits, whole numbers from
    100 up (``1000 KiB``, not ``1e+03 KiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            if unit == "B":
                return f"{int(n)} B"
            return f"{n:.0f} {unit}" if n >= 100 else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} EiB"  # pragma: no cover


def _cgroup_limit() -> int | None:
    """The container's memory limit (cgroup v2 or v1), when one is set."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
    return None


def memory_bytes(torch_device: str = "cpu") -> int | None:
    """Memory a run can use: the GPU's for a CUDA device, else RAM (or the container's
    limit); ``None`` when the platform does not say."""
    if str(torch_device).startswith("cuda"):
        try:
            import torch

            dev = torch.device(torch_device)
            return int(torch.cuda.get_device_properties(dev).total_memory)
        except Exception:  # noqa: BLE001 - unknown: no check
            return None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - e.g. Windows
        return None
    limit = _cgroup_limit()
    return min(total, limit) if limit else total


def model_bytes(params: int, rows: int, width: int) -> int:
    """Peak bytes of training or evaluating one model of ``params`` weights on ``rows``
    rows of ``width`` units (see :data:`WEIGHT_COPIES`, :data:`ACTIVATION_COPIES`)."""
    return FLOAT * (WEIGHT_COPIES * params + ACTIVATION_COPIES * rows * width)


def check_memory(need: int, what: str, torch_device: str = "cpu", hint: str = "") -> None:
    """Refuse in one line when ``need`` bytes exceed the memory of ``torch_device``."""
    have = memory_bytes(torch_device)
    if have is None or need <= have:
        return
    where = "GPU" if str(torch_device).startswith("cuda") else "this machine"
    tail = f"; {hint}" if hint else ""
    raise NoisyDEQError(
        f"{what} needs about {fmt_bytes(need)} of memory, {where} has {fmt_bytes(have)}{tail}"
    )


def check_positive(name: str, value: int) -> int:
    """A positive integer, or a :class:`NoisyDEQError` naming the field."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise NoisyDEQError(f"{name}: must be a positive integer, got {value!r}")
    return value
