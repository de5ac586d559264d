"""A sweep's figures kept on disk, so a repeated sweep copies them instead of drawing them.

The other drivers' figures are kept the same way (:func:`cached_figures`, each keyed by the
arguments of its drawing function): an attack run's, an adversarial or LyaDEQ report's and
a study's, so a finished run resumed draws nothing.

Drawing a sweep's figures (:func:`noisydeq.plots.plot_sweep`: PNG and SVG of each, with
the CSV of the plotted points) imports matplotlib and renders every figure twice; a warm
main job spent ~1 CPU s of its ~31 there (2026-12-07, benchmarks/RESULTS.md). The figures
are a deterministic function of what they are drawn from (the same rows, spec, native SNR
and title give the same bytes: the SVG hash salt is fixed and no date is written), so they
are stored under ``<cache>/figures/<32 hex>.json``, keyed by:

* the rows, the spec, the native SNR and the title (canonical JSON, :func:`store.dumps_json`);
* the code: the hash of the syntax of the modules the figure code can import (this module,
  :mod:`noisydeq.plots` and every driver handing it a drawing function), docstrings and
  comments aside (:func:`noisydeq.fingerprint.code_fingerprint` of kind :data:`CODE`), so
  any change to the plotting code — or to anything it calls — draws again;
* the drawing libraries' versions (matplotlib, Pillow, NumPy) and the bytes of every
  ``matplotlibrc`` that matplotlib could read instead of its own (the working directory's,
  ``$MATPLOTLIBRC``, the user's config directory), so a changed style draws again.

An entry is signed JSON (:func:`noisydeq.store.write_signed_json`: its digest checked on
every read) holding each file's name, bytes (base64) and SHA-256; one that does not check
out is reported in one line and the figures are drawn again (and the entry replaced), never
used. A hit writes the same files, byte for byte, as drawing would (each atomically) and
returns the same paths in the same order. One atomic rename per write, no lock: two runs
writing the same entry write the same bytes.

``$NOISYDEQ_FIGURE_CACHE=off`` turns it off (figures always drawn, nothing stored).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from noisydeq import __version__, store
from noisydeq.errors import CorruptArtefact, NoisyDEQError
from noisydeq.fingerprint import code_fingerprint

#: format of an entry (part of its key: a new format is a new file); 2: the code in the key
#: is the figure code's fingerprint (:data:`CODE`), not the whole package's
FORMAT = "noisydeq-figures/2"
#: the code fingerprint an entry is keyed by (:func:`~noisydeq.fingerprint.code_fingerprint`)
CODE = "figures"
#: the entries' directory under the cache
DIRECTORY = "figures"
#: environment variable that turns the cache off (``off``, ``0``, ``no``, ``false``)
ENV = "NOISYDEQ_FIGURE_CACHE"
#: the distributions whose versions enter the key (the drawing and the PNG encoder)
LIBRARIES = ("matplotlib", "pillow", "numpy")


def enabled() -> bool:
    """Whether the figure cache is on (``$NOISYDEQ_FIGURE_CACHE`` not ``off``/``0``/...)."""
    return os.environ.get(ENV, "").strip().lower() not in ("off", "0", "no", "false")


@functools.lru_cache(maxsize=1)
def _library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = ""
    return out


def rc_files() -> list[Path]:
    """The ``matplotlibrc`` files matplotlib may read before its bundled one (whichever it
    picks: all of them enter the key): the working directory's, ``$MATPLOTLIBRC`` (a file,
    or a directory holding one) and the one in the user's matplotlib config directory
    (``$MPLCONFIGDIR``, else ``$XDG_CONFIG_HOME/matplotlib``, else ``~/.config/matplotlib``)."""
    found = [Path.cwd() / "matplotlibrc"]
    env = os.environ.get("MATPLOTLIBRC")
    if env:
        found += [Path(env), Path(env) / "matplotlibrc"]
    config = os.environ.get("MPLCONFIGDIR")
    if config:
        found.append(Path(config) / "matplotlibrc")
    else:
        xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        found.append(Path(xdg) / "matplotlib" / "matplotlibrc")
    return [p for p in found if p.is_file()]


def _rc_digest() -> str:
    h = hashlib.sha256()
    for p in rc_files():
        h.update(str(p).encode() + b"\0")
        try:
            h.update(p.read_bytes())
        except OSError:
            h.update(b"unreadable")
    return h.hexdigest()


def figure_key(inputs: Any) -> str:
    """The entry name (32 hex) of the figures drawn from ``inputs`` (any JSON-able value:
    the rows, spec, native SNR and title) by this code, these libraries and rc files."""
    head = {"format": FORMAT, "code": code_fingerprint(CODE), "libraries": _library_versions(),
            "rc": _rc_digest()}
    text = store.dumps_json({"head": head, "inputs": inputs})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def entry_path(cache: Path, key: str) -> Path:
    return Path(cache) / DIRECTORY / f"{key}.json"


def _load(path: Path, key: str, out: Path) -> list[Path] | None:
    """The files of the entry ``path`` written into ``out`` (paths in drawing order); None
    when there is no entry or it does not check out (reported in one line)."""
    if not path.is_file():
        return None
    try:
        entry = store.read_signed_json(path, "figure cache entry")
        if entry.get("format") != FORMAT or entry.get("key") != key:
            raise CorruptArtefact(path, "is not the entry of its name")
        files = entry.get("files")
        if not isinstance(files, list) or not files:
            raise CorruptArtefact(path, "lists no figure")
        blobs = []
        for item in files:
            name, data, digest = item["name"], base64.b64decode(item["data"]), item["sha256"]
            if (not isinstance(name, str) or "/" in name or "\\" in name
                    or name in ("", ".", "..")):
                raise CorruptArtefact(path, f"names a file outside its folder ({name!r})")
            if hashlib.sha256(data).hexdigest() != digest:
                raise CorruptArtefact(path, f"holds {name} not matching its SHA-256")
            blobs.append((name, data))
    except FileNotFoundError:  # removed between the check and the read (noisydeq cache)
        return None
    except (CorruptArtefact, KeyError, TypeError, ValueError) as err:
        text = str(err) if isinstance(err, CorruptArtefact) else f"{path}: malformed entry"
        store.warn(f"{text}; drawing the figures again")
        return None
    out.mkdir(parents=True, exist_ok=True)
    return [store.atomic_write_bytes(out / name, data) for name, data in blobs]


def _save(path: Path, key: str, out: Path, paths: list[Path]) -> None:
    """Store the drawn ``paths`` (all directly in ``out``) as the entry ``path``; an
    unwritable cache is said once (:func:`noisydeq.store.not_cached`) and the run goes on (the
    figures are in the run directory either way)."""
    files = []
    for p in paths:
        p = Path(p)
        if p.parent.resolve() != out.resolve():
            return  # not a flat figure folder: nothing stored, drawn every time
        data = p.read_bytes()
        files.append({"name": p.name, "data": base64.b64encode(data).decode("ascii"),
                      "sha256": hashlib.sha256(data).hexdigest()})
    entry = {"format": FORMAT, "key": key, "files": files,
             "env": {"format": FORMAT, "version": __version__, "code": code_fingerprint(CODE),
                     "libraries": _library_versions()}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        store.write_signed_json(path, entry)
    except OSError as err:
        store.not_cached("figures", path, err)
    except NoisyDEQError:
        pass


def cached_figures(inputs: Any, out: Path, draw: Callable[[], list[Path]],
                   cache: Path | None) -> list[Path]:
    """The figures ``draw()`` writes into ``out`` (returning their paths), taken from the
    cache entry of ``inputs`` when there is one (the same files, bytes and order) and
    stored there when drawn. ``cache`` None or the cache turned off: ``draw()``."""
    if cache is None or not enabled():
        return draw()
    out = Path(out)
    try:
        key = figure_key(inputs)
    except (TypeError, ValueError):  # inputs JSON cannot spell: no key, drawn every time
        return draw()
    path = entry_path(cache, key)
    found = _load(path, key, out)
    if found is not None:
        return found
    paths = draw()
    if paths:
        _save(path, key, out, paths)
    return paths
