"""Calibrated controls of a deployed model, kept on disk so a repeated sweep skips the search.

Calibrating a chip (:mod:`noisydeq.hardware.calibration`) measures every device layer at
tens of control values per target SNR. The controls found are a deterministic function of
the digital weights, the device spec, the chip seed, the calibration inputs, the target
levels and the order in which they are searched (a layer's :class:`KnobTable` reuses the
measurements of earlier targets), plus the arithmetic of the code (a hash of the device and
noise sources), torch version and intra-op thread count. Their
hash names a small JSON file under ``<cache>/calibration/``: a second sweep of the same
models on the same device loads the controls instead of searching (the default sweep's
calibration was ~40 % of its evaluation time). The chips themselves are still programmed
at the loaded controls, so the results are the ones of a run that calibrated (tested).

Targets are calibrated in ascending order up front, so the controls no longer depend on the
order in which a sweep — or a resumed sweep with some cells done — first asks for them (on
the digits DEQ's 222-wide layer, searching 11-30 dB before 0-10 dB changed 5 of 31 controls
by up to 0.3 %).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from noisydeq.config import atomic_write_text
from noisydeq.hardware.base import device_layers
from noisydeq.store import hash_tensor

#: 2: counter-based calibration noise (noisydeq.rng)
FORMAT = "noisydeq-calibration/2"


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the device, noise and random-number code: a change to how layers compute
    invalidates the stored controls (the package version alone does not change between
    commits)."""
    import noisydeq

    root = Path(noisydeq.__file__).parent
    h = hashlib.blake2b(digest_size=8)
    for path in sorted([*(root / "hardware").glob("*.py"), root / "noise.py", root / "rng.py"]):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def calibration_key(
    model: nn.Module, device: Any, calib_x: Tensor | None, levels: Iterable[float]
) -> str:
    """Hash of everything the calibrated controls of ``model`` on chip ``device`` depend on."""
    import noisydeq
    from noisydeq.train import init_hash

    h = hashlib.blake2b(digest_size=16)
    spec = device.spec.model_dump_json() if hasattr(device.spec, "model_dump_json") else ""
    # the intra-op thread count changes float rounding, hence the controls found
    head = (FORMAT, noisydeq.__version__, code_fingerprint(), torch.__version__,
            platform.machine(), torch.get_num_threads(), device.kind,
            spec, int(device.chip_seed), sorted(float(v) for v in levels), init_hash(model))
    h.update(repr(head).encode())
    if calib_x is not None:
        hash_tensor(h, calib_x)
    return h.hexdigest()


def _encode(controls: dict[Any, float]) -> list[list[Any]]:
    return [[k if isinstance(k, str) else float(k), float(v)] for k, v in controls.items()]


def _load(path: Path, key: str, names: list[str]) -> dict[str, dict[Any, float]] | None:
    """The stored controls, or ``None`` when the file is missing, unreadable or another's."""
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT or data.get("key") != key:
            return None
        layers = data["layers"]
        if sorted(layers) != sorted(names):
            return None
        return {n: {k: float(v) for k, v in layers[n]} for n in names}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def calibrate_levels(
    deployed: nn.Module,
    model: nn.Module,
    device: Any,
    calib_x: Tensor | None,
    levels: Iterable[float],
    cache_dir: Path | None,
) -> bool:
    """Give every device layer of ``deployed`` its controls for the finite ``levels``.

    ``deployed`` is ``model`` on chip ``device``, already calibrated on ``calib_x``
    (:func:`noisydeq.hardware.calibrate`). Loads the controls from ``cache_dir`` when they
    are there (returns ``True``); otherwise searches them in ascending order and stores them
    (``cache_dir=None``: no cache).
    """
    finite = sorted({float(v) for v in levels if math.isfinite(v)})
    layers = device_layers(deployed)
    if not finite or not layers:
        return False
    path = None
    if cache_dir is not None:
        key = calibration_key(model, device, calib_x, finite)
        path = Path(cache_dir) / "calibration" / f"{key}.json"
        stored = _load(path, key, list(layers))
        if stored is not None:
            for name, layer in layers.items():
                layer.load_controls(stored[name])
            return True
    for level in finite:
        for layer in layers.values():
            layer.control_for(level)
    if path is not None:
        record = {
            "format": FORMAT,
            "key": key,
            "layers": {n: _encode(layer.calibrated_controls()) for n, layer in layers.items()},
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(record, allow_nan=True))
        except OSError:
            pass  # an unwritable cache only costs the next run its calibration
    return False
