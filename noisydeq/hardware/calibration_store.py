"""Calibrated controls of a deployed model, kept on disk so a repeated sweep skips the search.

Calibrating a chip (:mod:`noisydeq.hardware.calibration`, :mod:`noisydeq.hardware.modes`)
measures every device layer at several knob values per target SNR, and calibrating inside
the noisy network (:mod:`noisydeq.hardware.in_network`) runs the model at every level once
(or twice). The knobs found are a deterministic function of: the digital weights and the
model's configuration (solvers, forms: :func:`model_config`), the device spec, the chip
seed, the noise mode, the calibration kind and its settings (rounds, samples), the
calibration inputs, the target levels and the order in which they are searched (a layer's
:class:`KnobTable` reuses the measurements of earlier targets), plus the arithmetic of the
code (a hash of the syntax of the modules the device code can import — the stores, models,
solvers, layers and devices and what they import — docstrings and comments aside:
:data:`CODE`; the in-network forward runs models and solvers), torch version and intra-op
thread count. Their hash names a small JSON file under ``<cache>/calibration/``: a second
sweep of the same models on the same device loads the knobs instead of searching. The chips
themselves are still programmed at the loaded knobs, so the results are the ones of a run
that calibrated (tested).

Targets are calibrated in ascending order up front, so the controls no longer depend on the
order in which a sweep — or a resumed sweep with some cells done — first asks for them (on
the digits DEQ's 222-wide layer, searching 11-30 dB before 0-10 dB changed 5 of 31 controls
by up to 0.3 %).

An entry carries its SHA-256 digest (:mod:`noisydeq.store`); one whose digest, key, layers,
levels or values do not check out (a finite control for every layer and every level) is
reported in one line and searched again, never used. An entry is one file written by one
atomic rename, so it takes no lock: two processes computing the same entry write the same
controls. Beside its key an entry records the environment part of it (``env``:
:data:`RECORDED`), from which ``noisydeq cache`` tells the entries no run of this code can
hit again.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from noisydeq import store
from noisydeq.errors import CorruptArtefact, NoisyDEQError
from noisydeq.fingerprint import code_fingerprint, machine
from noisydeq.hardware import in_network
from noisydeq.hardware.controls import calibrate, device_layers
from noisydeq.specs.device import CALIBRATIONS
from noisydeq.store import hash_tensor, init_hash

#: 2: digests (integrity); 3: counter-based calibration noise (noisydeq.rng); 4: two knobs
#: (static, dynamic) per level, noise mode and in-network calibration in the key; 5: the
#: in-network estimator measures anchor levels and interpolates between them (SPACING); 6: the
#: code in the key is the device code's fingerprint (:data:`CODE`), not the whole package's
FORMAT = "noisydeq-calibration/6"
#: the code fingerprint a device entry (calibration or chips) is keyed by
#: (:func:`~noisydeq.fingerprint.code_fingerprint`): the modules the stores and the models,
#: layers, solvers and devices they run can import — not the commands, plots or reports
CODE = "device"


def model_config(model: nn.Module) -> str:
    """The configuration of ``model`` beyond its weights: every module's class and its typed
    settings (e.g. a DEQ's solvers and gradient), as text."""
    parts = []
    for name, mod in model.named_modules():
        items = [name, type(mod).__qualname__]
        for key, value in sorted(vars(mod).items()):
            if isinstance(value, BaseModel):
                items.append(f"{key}={value.model_dump_json()}")
            elif isinstance(value, (bool, int, float, str)) and not key.startswith("_"):
                items.append(f"{key}={value!r}")
        parts.append("|".join(items))
    return "\n".join(parts)


def device_head(fmt: str, device: Any, threads: int | None = None) -> tuple:
    """What every on-disk device cache entry (calibrations; programmed chips,
    :mod:`noisydeq.hardware.chip_store`) depends on beyond its own inputs: the entry format,
    noisydeq's version and code, torch, the machine, the intra-op thread count (it changes
    float rounding; default this process's), the device kind, spec and chip seed."""
    import noisydeq

    spec = device.spec.model_dump_json() if hasattr(device.spec, "model_dump_json") else ""
    return (fmt, noisydeq.__version__, code_fingerprint(CODE), torch.__version__,
            machine(), torch.get_num_threads() if threads is None else int(threads),
            device.kind, spec, int(device.chip_seed))


#: the fields of :func:`device_head` an entry records beside its key (``"env"``), which
#: hides them: ``noisydeq cache`` tells from them the entries no run of this code can hit
RECORDED = ("format", "version", "code", "torch", "machine", "threads")


def head_record(head: tuple) -> dict[str, Any]:
    """The environment part of a :func:`device_head`, as an entry records it."""
    return dict(zip(RECORDED, head[:len(RECORDED)], strict=True))


def calibration_key(
    model: nn.Module, device: Any, calib_x: Tensor | None, levels: Iterable[float],
    settings: dict[str, Any] | None = None, threads: int | None = None,
) -> str:
    """Hash of everything the calibrated controls of ``model`` on chip ``device`` depend on
    (``threads``: the intra-op thread count they are computed with, default this process's)."""
    h = hashlib.blake2b(digest_size=16)
    head = device_head(FORMAT, device, threads) + (
        getattr(device, "noise_mode", ""),
        sorted((settings or {}).items()), sorted(float(v) for v in levels),
        init_hash(model), model_config(model))
    h.update(repr(head).encode())
    if calib_x is not None:
        hash_tensor(h, calib_x)
    return h.hexdigest()


def _settings(calibration: str, calib_x: Tensor | None, rounds: int | None = None,
              samples: int | None = None) -> dict[str, Any]:
    """The calibration settings an entry's key holds (defaults: the sweep's)."""
    settings: dict[str, Any] = {"calibration": calibration}
    if calibration == "network" and calib_x is not None:
        settings.update(rounds=in_network.ROUNDS if rounds is None else int(rounds),
                        samples=in_network.SAMPLES if samples is None else int(samples),
                        draws=in_network.DRAWS, refine_db=in_network.REFINE_DB,
                        spacing=in_network.SPACING, dense_below=in_network.DENSE_BELOW_DB)
    return settings


def entry_name(model: nn.Module, device: Any, calib_x: Tensor | None, levels: Iterable[float],
               calibration: str = "network", threads: int | None = None) -> str:
    """File name of the entry :func:`calibrate_levels` stores for these arguments (default
    rounds and samples), as computed with ``threads`` intra-op threads (default: this
    process's): a Ray driver names the entries its one-thread workers need."""
    finite = sorted({float(v) for v in levels if math.isfinite(v)})
    key = calibration_key(model, device, calib_x, finite, _settings(calibration, calib_x),
                          threads=threads)
    return f"{key}.json"


def _encode(controls: dict[float, tuple[float, float]]) -> list[list[float]]:
    return [[float(k), float(v[0]), float(v[1])] for k, v in controls.items()]


def load_entry(
    path: Path, key: str, names: list[str], levels: list[float]
) -> dict[str, dict[float, tuple[float, float]]] | None:
    """The stored knobs of the entry ``path`` for ``key`` (device layers ``names``, finite
    SNR ``levels``), or ``None`` when there is none; a damaged, foreign or incomplete entry
    is a :class:`CorruptArtefact`."""
    if not path.exists():
        return None
    try:
        data = store.read_signed_json(path, "calibration entry")
    except CorruptArtefact:
        raise
    except NoisyDEQError:
        if not path.exists():  # removed since (noisydeq cache prune): searched again
            return None
        raise
    if data.get("format") != FORMAT or data.get("key") != key:
        raise CorruptArtefact(path, "is not the entry of this calibration (format or key)")
    try:
        layers = data["layers"]
        if sorted(layers) != sorted(names):
            raise ValueError(f"layers {sorted(layers)}, expected {sorted(names)}")
        out = {n: {float(k): (float(a), float(b)) for k, a, b in layers[n]} for n in names}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CorruptArtefact(path, f"is malformed ({err})") from None
    for name, controls in out.items():
        gaps = [v for v in levels if v not in controls]
        if gaps:
            raise CorruptArtefact(path, f"lacks layer {name}'s knobs at {gaps[0]:g} dB")
        bad = [k for k, v in controls.items() if not all(math.isfinite(a) for a in (k, *v))]
        if bad:
            raise CorruptArtefact(path, f"holds non-finite knobs for layer {name} ({bad[0]})")
    return out


def calibrate_levels(
    deployed: nn.Module,
    model: nn.Module,
    device: Any,
    calib_x: Tensor | None,
    levels: Iterable[float],
    cache_dir: Path | None,
    *,
    calibration: str = "network",
    rounds: int | None = None,
    samples: int | None = None,
    forward: Callable[[nn.Module, Tensor], Any] | None = None,
) -> bool:
    """Give every device layer of ``deployed`` its knobs for the finite ``levels``.

    ``deployed`` is ``model`` on chip ``device``. Its layers are calibrated on the clean
    activations of ``calib_x`` (:func:`noisydeq.hardware.calibrate`), then for every level
    inside the noisy network (``calibration="network"``,
    :func:`~noisydeq.hardware.in_network.calibrate_in_network` with ``rounds`` /
    ``samples``) or on the clean activations (``"clean"``). Loads the knobs from
    ``cache_dir`` when they are there (returns ``True``); otherwise searches them in
    ascending order and stores them (``cache_dir=None``: no cache).
    """
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}")
    finite = sorted({float(v) for v in levels if math.isfinite(v)})
    layers = device_layers(deployed)
    if calib_x is not None:
        calibrate(deployed, calib_x)
    if not finite or not layers:
        return False
    rounds = in_network.ROUNDS if rounds is None else int(rounds)
    samples = in_network.SAMPLES if samples is None else int(samples)
    settings = _settings(calibration, calib_x, rounds, samples)
    path = None
    if cache_dir is not None:
        key = calibration_key(model, device, calib_x, finite, settings)
        env = head_record(device_head(FORMAT, device))  # what the key hides, recorded
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
    if calibration == "network" and calib_x is not None:
        in_network.calibrate_in_network(deployed, calib_x, finite, rounds=rounds, samples=samples,
                             seed=int(device.chip_seed), forward=forward, clean_start=False)
    else:
        for level in finite:
            for layer in layers.values():
                layer.control_for(level)
    if path is not None:
        record = {
            "format": FORMAT,
            "key": key,
            "settings": settings,
            "env": env,
            "layers": {n: _encode(layer.calibrated_controls()) for n, layer in layers.items()},
        }
        write_entry(path, store.dumps_signed(record))
    return False


def write_entry(path: Path, text: str) -> bool:
    """Store one calibration entry (signed JSON ``text``) at ``path`` — the one writer of
    the calibration cache, for a local run and for the entries a Ray task returns to the
    driver. An unwritable cache only costs the next run its calibration: nothing is raised
    (returns False; :func:`noisydeq.store.not_cached` says so once). ``text`` that is not
    a valid entry (digest) is not written: a one-line warning, False. An entry already
    there is replaced (one atomic rename: the same key gives the same knobs, and a damaged
    file found on load is recalibrated)."""
    try:
        store.loads_signed(text, path)
    except CorruptArtefact as err:
        store.warn(f"{err}; not cached")
        return False
    try:
        store.clean_stale_temps(path.parent)
        store.atomic_write_text(path, text)
    except OSError as err:
        store.not_cached("calibration", path, err)
        return False
    return True


def cache_entries(entries: dict[str, str], cache_dir: Path) -> int:
    """Store the calibration ``entries`` (file name → signed JSON text, as a Ray task
    returns them) under ``cache_dir/calibration`` with :func:`write_entry`; returns how
    many are there now. A name that is not a plain ``<key>.json`` is skipped."""
    directory = Path(cache_dir) / "calibration"
    stored = 0
    for name, text in entries.items():
        if Path(name).name != name or not name.endswith(".json"):
            continue
        stored += write_entry(directory / name, text)
    return stored


def read_entries(cache_dir: Path, names: Iterable[str]) -> dict[str, str]:
    """The text of the calibration entries ``names`` found under ``cache_dir/calibration``
    (missing or unreadable ones left out): what the driver ships to its Ray workers."""
    directory = Path(cache_dir) / "calibration"
    out: dict[str, str] = {}
    for name in names:
        try:
            out[name] = (directory / Path(name).name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
    return out
