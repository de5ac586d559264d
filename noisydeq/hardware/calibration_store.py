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

An entry carries its SHA-256 digest (:mod:`noisydeq.store`); one whose digest, key, layers,
levels or values do not check out (a finite control for every layer and every level) is
reported in one line and searched again, never used. An entry is one file written by one
atomic rename, so it takes no lock: two processes computing the same entry write the same
controls.
"""

from __future__ import annotations

import functools
import hashlib
import math
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from noisydeq import store
from noisydeq.errors import CorruptArtefact
from noisydeq.hardware.base import device_layers
from noisydeq.store import hash_tensor

#: 2: digests (integrity); 3: counter-based calibration noise (noisydeq.rng)
FORMAT = "noisydeq-calibration/3"


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


def load_entry(
    path: Path, key: str, names: list[str], levels: list[float]
) -> dict[str, dict[Any, float]] | None:
    """The stored controls of the entry ``path`` for ``key`` (device layers ``names``,
    finite SNR ``levels``), or ``None`` when there is none; a damaged, foreign or incomplete
    entry is a :class:`CorruptArtefact`."""
    if not path.exists():
        return None
    data = store.read_signed_json(path, "calibration entry")
    if data.get("format") != FORMAT or data.get("key") != key:
        raise CorruptArtefact(path, "is not the entry of this calibration (format or key)")
    try:
        layers = data["layers"]
        if sorted(layers) != sorted(names):
            raise ValueError(f"layers {sorted(layers)}, expected {sorted(names)}")
        out = {n: {(k if isinstance(k, str) else float(k)): float(v) for k, v in layers[n]}
               for n in names}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CorruptArtefact(path, f"is malformed ({err})") from None
    for name, controls in out.items():
        gaps = [v for v in levels if v not in controls]
        if gaps:
            raise CorruptArtefact(path, f"lacks layer {name}'s control at {gaps[0]:g} dB")
        # a level's control is a finite number; a stored measurement ("max": the layer's
        # SNR ceiling) may be inf (a layer that sees only zeros), never NaN
        bad = [k for k, v in controls.items()
               if math.isnan(v) or (not isinstance(k, str) and math.isinf(v))]
        if bad:
            raise CorruptArtefact(path, f"holds a non-finite control for layer {name} "
                                        f"({bad[0]})")
    return out


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
        try:
            stored = load_entry(path, key, list(layers), finite)
        except CorruptArtefact as err:
            store.warn(f"{err}; calibrating again")
            stored = None
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
            store.clean_stale_temps(path.parent)
            store.write_signed_json(path, record)
        except OSError:
            pass  # an unwritable cache only costs the next run its calibration
    return False
