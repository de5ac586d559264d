"""What the running code is, as the on-disk cache entries record it — without torch.

The device caches (:mod:`noisydeq.hardware.calibration_store`, :mod:`~noisydeq.hardware.
chip_store`) key their entries by the package's code (:func:`code_fingerprint`), the torch
version and the machine, among others; ``noisydeq cache`` compares what an entry recorded
with what this process would key (:func:`torch_version`, :func:`machine`) to tell the
entries no run of this code can hit again, without paying for ``import torch``.
"""

from __future__ import annotations

import functools
import hashlib
import platform
from importlib import metadata
from pathlib import Path


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the package's code (every module, ``noisydeq.rng`` included): a change to
    how layers, models, solvers or random numbers compute invalidates the stored knobs (the
    package version alone does not change between commits)."""
    import noisydeq

    root = Path(noisydeq.__file__).parent
    h = hashlib.blake2b(digest_size=8)
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def torch_version() -> str:
    """``torch.__version__`` as the installed distribution states it (``2.13.0+cpu``), read
    from its metadata rather than by importing torch; ``""`` when torch is not installed."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return ""


def machine() -> str:
    """The machine architecture the caches key by (``platform.machine()``)."""
    return platform.machine()
