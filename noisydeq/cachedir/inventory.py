"""The entries of an on-disk cache, per kind, with their size, age and status.

Layout (``docs/architecture.md``, "The on-disk cache"): ``models/<20 hex>/`` (one trained
model: ``model.safetensors`` + ``model.json``, or ``resume.safetensors`` while it trains),
``calibration/<32 hex>.json``, ``chips/<32 hex>.safetensors``, ``figures/<32 hex>.json``
(a sweep's figures, :mod:`noisydeq.figure_cache`) and ``code/<32 hex>.json`` (the code
fingerprint's memo, :mod:`noisydeq.fingerprint`: the one this process reads is current, a
memo of other code or another Python stale). Status comes from the
fields an entry records (:mod:`noisydeq.cachedir.current`): a model's training config and a
chip file's metadata are read from their safetensors header (no tensor is read), a
calibration entry is read whole (its digest checked); an entry that cannot be read is stale
(no run uses it: it is computed again and replaced). Anything else under the cache is
*other*: counted, never deleted. The temporary files of writers in the kinds' directories
are counted apart: a live writer's is left alone, a killed one's is removed by ``noisydeq
cache prune`` and ``clear``. A model directory holding nothing but its lock file (one
``noisydeq cache`` emptied, or one a run has just locked) is no entry. A directory that
holds more than the kinds' directories is not a cache (:func:`check_root`).
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noisydeq import store
from noisydeq.cachedir import KINDS
from noisydeq.cachedir.current import device_status, memo_status, model_status
from noisydeq.errors import NoisyDEQError
from noisydeq.fingerprint import MEMO_NAME

#: an entry's name per kind
NAMES = {"models": re.compile(r"^[0-9a-f]{20}$"),
         "calibration": re.compile(r"^[0-9a-f]{32}\.json$"),
         "chips": re.compile(r"^[0-9a-f]{32}\.safetensors$"),
         "figures": re.compile(r"^[0-9a-f]{32}\.json$"),
         "code": MEMO_NAME}
#: the files of a model entry whose header holds its training config, in order of trust
MODEL_FILES = ("model.safetensors", "resume.safetensors")
#: largest safetensors header read
MAX_HEADER = 16 * 2**20


@dataclass
class Entry:
    """One cache entry: ``path`` (a file, or a model's directory) and its ``files``."""

    kind: str
    path: Path
    files: list[Path]
    size: int
    mtime: float
    status: str  # "stale", "current" or "unknown"
    reason: str = ""

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.path.name}"


@dataclass
class Inventory:
    """What the cache ``root`` holds: its entries, the other files (never deleted) and the
    temporary files of writers (:func:`noisydeq.store.atomic_open`) in the kinds'
    directories: (kind, path, size, stale — its writer is gone)."""

    root: Path
    entries: list[Entry] = field(default_factory=list)
    other: list[tuple[Path, int]] = field(default_factory=list)
    temps: list[tuple[str, Path, int, bool]] = field(default_factory=list)

    def of(self, kind: str) -> list[Entry]:
        return [e for e in self.entries if e.kind == kind]


def check_root(root: Path) -> None:
    """Refuse (one line) a cache path that is a file or a directory holding more than the
    kinds' directories and lock files: nothing below it is ever deleted."""
    if not root.exists():
        return
    if not root.is_dir():
        raise NoisyDEQError(f"cache {root} is not a directory")
    foreign = sorted(p.name for p in root.iterdir()
                     if not (p.name in KINDS and p.is_dir()
                             and not p.is_symlink())
                     and p.name != store.LOCK_FILE)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise NoisyDEQError(
            f"cache {root} does not look like a noisydeq cache (it holds "
            f"{', '.join(repr(n) for n in foreign[:3])}{more}; a cache holds only "
            f"{', '.join(k + '/' for k in KINDS)}): nothing read or deleted")


def header_meta(path: Path) -> dict[str, Any]:
    """The noisydeq metadata of a safetensors file (``store.save_tensors``), from its header
    alone (its digest is checked when the tensors are read). ``ValueError`` if unreadable."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if not 0 < n <= MAX_HEADER:
            raise ValueError("no safetensors header")
        header = json.loads(fh.read(n))
    meta = json.loads((header.get("__metadata__") or {}).get("noisydeq", "null"),
                      parse_constant=store.parse_constant)
    if not isinstance(meta, dict):
        raise ValueError("no noisydeq metadata")
    return meta


def _status(kind: str, path: Path) -> tuple[str, str]:
    try:
        if kind == "models":
            found = [path / f for f in MODEL_FILES if (path / f).is_file()]
            if not found:
                return "stale", "no model file"
            config = header_meta(found[0]).get("config")
            if not isinstance(config, dict):
                raise ValueError("no config")
            return model_status(config)
        if kind in ("calibration", "figures"):
            return device_status(kind, store.read_signed_json(path, f"{kind} entry"))
        if kind == "code":
            return memo_status(path.name, store.read_signed_json(path, "code memo"))
        return device_status(kind, header_meta(path))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError, AttributeError):
        return "stale", "unreadable"


def _files(kind: str, path: Path) -> list[Path] | None:
    """The regular files of an entry (a model's directory: those in it); None when it is or
    holds anything else (a link, a directory), so it is no entry this package wrote."""
    mode = path.lstat().st_mode
    if kind != "models":
        return [path] if stat.S_ISREG(mode) else None
    if not stat.S_ISDIR(mode):
        return None
    files = list(path.iterdir())
    if any(not stat.S_ISREG(f.lstat().st_mode) for f in files):
        return None
    return files


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    for kind in KINDS:
        d = root / kind
        if d.is_dir() and not d.is_symlink():
            for p in sorted(d.iterdir()):
                yield kind, p


def scan(root: str | os.PathLike) -> Inventory:
    """The entries of the cache ``root`` (none when it does not exist); see the module."""
    inv = Inventory(Path(root))
    check_root(inv.root)
    for kind, p in _walk(inv.root):
        try:
            temp = store.stale_temp(p)
            if temp is not None and stat.S_ISREG(p.lstat().st_mode):
                inv.temps.append((kind, p, p.lstat().st_size, temp))
                continue
            files = _files(kind, p) if NAMES[kind].match(p.name) else None
            if files is None:
                if p.name != store.LOCK_FILE:
                    inv.other.append((p, p.lstat().st_size))
                continue
            if kind == "models" and not [f for f in files if f.name != store.LOCK_FILE]:
                continue  # a husk: no model (yet), its lock file kept (cachedir.prune)
            stats = [f.lstat() for f in files]
        except OSError:  # removed while we looked
            continue
        mtime = max((s.st_mtime for s in stats), default=p.lstat().st_mtime)
        status, reason = _status(kind, p)
        inv.entries.append(Entry(kind, p, files, sum(s.st_size for s in stats), mtime,
                                 status, reason))
    return inv
