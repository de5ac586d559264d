"""Programmed RRAM chips kept on disk, so a repeated sweep loads its chips instead of
programming them again in every process.

Programming an RRAM chip (:class:`noisydeq.hardware.rram.RRAMLayer`) draws its conductance
errors and reads out its drift compensation α; a sweep's evaluation does this once per
(model, chip, layer, static knob) in every process of every run. The result — the read-at-t
normalised weights W_t, α and the RMS of W_t — is a deterministic function of: the layer's
weights, the device spec, the layer's chip seed (chip seed and layer name), the noise
scale, the programming mode (full programming; chips of a layer that holds its programming
error or its α across weight versions are never stored), the code (a hash of the syntax of
the modules the device code can import, as for calibration entries: :data:`~noisydeq.
hardware.calibration_store.CODE`), the torch version, the machine and the intra-op thread
count (α is a mean). Their hash names one safetensors file per deployed (model, chip) under
``<cache>/chips/``: every device layer's chips at the scales its evaluation used, written
after the pair's evaluation when it programmed chips the file lacked. A chip read from it is
placed in the memory layout a programmed one has, so its reads are the same bit for bit
(tested).

The file carries its SHA-256 digest (:func:`noisydeq.store.save_tensors`); one whose
digest, format, key, layers or tensors do not check out is reported in one line and the
chips are programmed again (and the file rewritten), never used. One atomic rename per
write, no lock: two processes writing the same entry write the same chips. Its metadata
records the environment part of its key (``env``, as a calibration entry does) for
``noisydeq cache``.

``$NOISYDEQ_CHIP_CACHE=off`` turns the cache off (every chip programmed, nothing stored).
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from noisydeq import store
from noisydeq.errors import CorruptArtefact, NoisyDEQError
from noisydeq.hardware.calibration_store import device_head, head_record
from noisydeq.hardware.controls import device_layers
from noisydeq.hardware.rram import RRAMLayer
from noisydeq.store import hash_tensor

#: format of an entry (part of its key: a new format is a new file)
#: 2: the code in the key is the device code's fingerprint, not the whole package's
FORMAT = "noisydeq-chips/2"
#: the entries' directory under the cache
DIRECTORY = "chips"
#: environment variable that turns the cache off (``off``, ``0``, ``no``, ``false``)
ENV = "NOISYDEQ_CHIP_CACHE"
#: bytes of W_t one layer stores at most (beyond them, chips are programmed each run)
LAYER_BYTES = 64 * 2**20


class ChipShelf:
    """One layer's programmed chips kept beyond the process (:attr:`RRAMLayer.shelf`):
    noise scale -> (W_t normalised, drift-compensation α, RMS of W_t) for the weights
    ``weights`` (the layer's weight key when it was attached), and the scales added since
    it was read (to be written). Holds at most ``limit`` bytes of W_t."""

    __slots__ = ("added", "chips", "limit", "nbytes", "weights")

    def __init__(self, weights: tuple, chips: dict[float, tuple[Tensor, float, float]],
                 limit: int) -> None:
        self.weights, self.chips, self.limit = weights, dict(chips), int(limit)
        self.nbytes = sum(c[0].nbytes for c in self.chips.values())
        self.added: set[float] = set()

    def add(self, s: float, w_t: Tensor, alpha: float, rms: float) -> None:
        """Keep the chip at scale ``s`` to be stored (nothing once ``limit`` is reached)."""
        if s in self.chips or self.nbytes + w_t.nbytes > self.limit:
            return
        self.chips[s] = (w_t, float(alpha), float(rms))
        self.nbytes += w_t.nbytes
        self.added.add(s)


def enabled() -> bool:
    """Whether the chip cache is on (``$NOISYDEQ_CHIP_CACHE`` not ``off``/``0``/...)."""
    return os.environ.get(ENV, "").strip().lower() not in ("off", "0", "no", "false")


def _layers(deployed: nn.Module) -> dict[str, RRAMLayer]:
    """The RRAM layers of ``deployed`` whose chips may be stored (full programming)."""
    out = {}
    for name, layer in device_layers(deployed).items():
        if not isinstance(layer, RRAMLayer) or layer.hold_programming or layer.hold_drift_alpha:
            continue
        out[name] = layer
    return out


def _weights(layer: RRAMLayer) -> tuple:
    """The layer's weight key (the one :meth:`RRAMLayer._chip` keys its chips by)."""
    return (layer.weight._version, layer.weight.data_ptr(), layer.weight.device)


def chip_key(layers: dict[str, RRAMLayer], device: Any, threads: int | None = None) -> str:
    """Hash of everything the programmed chips of ``layers`` (on chip ``device``) depend on."""
    h = hashlib.blake2b(digest_size=16)
    head = device_head(FORMAT, device, threads) + ("program=full",)
    h.update(repr(head).encode())
    for name in sorted(layers):
        layer = layers[name]
        h.update(f"|{name}|{layer.static_seed}|".encode())
        hash_tensor(h, layer.matrix().detach(), name)
    return h.hexdigest()


def entry_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / DIRECTORY / f"{key}.safetensors"


def load_entry(path: Path, key: str,
               layers: dict[str, RRAMLayer]) -> dict[str, dict[float, tuple]] | None:
    """The stored chips of entry ``path`` for ``key`` — per layer, scale -> (W_t, α, RMS) —
    or None when there is none; a damaged, foreign or malformed entry is a
    :class:`CorruptArtefact`."""
    if not path.is_file():
        return None
    try:
        tensors, meta = store.load_tensors(path)
    except NoisyDEQError as err:
        if isinstance(err, CorruptArtefact):
            raise
        if not path.exists():  # removed since (noisydeq cache prune): programmed again
            return None
        raise CorruptArtefact(path, "cannot be read") from None
    if meta.get("chips") != FORMAT or meta.get("key") != key:
        raise CorruptArtefact(path, "is not the chip entry of these layers (format or key)")
    out: dict[str, dict[float, tuple]] = {}
    try:
        stored = meta["layers"]
        if not set(stored) <= set(layers):
            raise ValueError(f"layers {sorted(set(stored) - set(layers))} not in the model")
        for name, rows in stored.items():
            shape = (layers[name].n_out, layers[name].n_in)
            chips = {}
            for i, (s, alpha, rms) in enumerate(rows):
                w_t = tensors[f"{name}/{i}"]
                if (tuple(w_t.shape) != shape or w_t.dtype != torch.float32
                        or not all(math.isfinite(float(v)) for v in (s, alpha, rms))):
                    raise ValueError(f"chip {i} of layer {name} has a wrong shape or value")
                chips[float(s)] = (w_t, float(alpha), float(rms))
            out[name] = chips
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CorruptArtefact(path, f"is malformed ({err})") from None
    return out


class ChipCache:
    """The on-disk chips of one deployed (model, chip): :meth:`attach` gives every RRAM
    layer its :class:`ChipShelf` (the chips read from the entry), :meth:`save` writes the
    entry again when the layers programmed chips it lacked."""

    def __init__(self, deployed: nn.Module, device: Any, cache_dir: Path) -> None:
        self.layers = _layers(deployed)
        self.key = chip_key(self.layers, device) if self.layers else ""
        self.env = head_record(device_head(FORMAT, device))  # what the key hides
        self.path = entry_path(cache_dir, self.key)

    def attach(self) -> int:
        """Give the layers their shelves; returns how many chips were read from disk."""
        if not self.layers:
            return 0
        try:
            stored = load_entry(self.path, self.key, self.layers) or {}
        except CorruptArtefact as err:
            store.warn(f"{err}; programming the chips again")
            stored = {}
        for name, layer in self.layers.items():
            layer.shelf = ChipShelf(_weights(layer), stored.get(name, {}), LAYER_BYTES)
        return sum(len(c) for c in stored.values())

    def save(self) -> bool:
        """Write the entry when a layer added chips (an unwritable cache is said once
        and otherwise ignored: the next run programs them); True when written. The shelves
        are detached."""
        shelves = {n: layer.shelf for n, layer in self.layers.items()
                   if layer.shelf is not None}
        for layer in self.layers.values():
            layer.shelf = None
        if not any(s.added for s in shelves.values()):
            return False
        tensors, meta = {}, {}
        for name, shelf in shelves.items():
            rows = []
            for i, (s, (w_t, alpha, rms)) in enumerate(sorted(shelf.chips.items())):
                tensors[f"{name}/{i}"] = w_t
                rows.append([s, alpha, rms])
            meta[name] = rows
        try:
            store.clean_stale_temps(self.path.parent)
            store.save_tensors(self.path, tensors, {"chips": FORMAT, "key": self.key,
                                                    "layers": meta, "env": self.env})
        except OSError as err:
            store.not_cached("programmed chips", self.path, err)
            return False
        return True


def attach(deployed: nn.Module, device: Any, cache_dir: Path | None) -> ChipCache | None:
    """Attach the chip cache under ``cache_dir`` to the RRAM layers of ``deployed`` (on chip
    ``device``); None when it is off, there is no cache or no RRAM layer."""
    if cache_dir is None or not enabled():
        return None
    cache = ChipCache(deployed, device, Path(cache_dir))
    if not cache.layers:
        return None
    cache.attach()
    return cache
