"""What a run of this code would key its cache entries with, and whether an entry's recorded
fields can still match it — without importing torch or the modules that write the entries.

An entry is *stale* when a field it records differs from this process's: the package
version, code fingerprint (the kind's, :data:`CODES`), torch version or machine (device
entries), the entry format, and for trained models the training schema, versions and
device-gradient rule. The thread count is recorded but never makes an entry stale: any run
can ask for it again (``--threads``).
*Current* means only that the recorded fields match (the rest of the key — weights, specs,
data — is a hash). An entry that records none of them (written before they were) is
*unknown*.

The formats and the schema are constants of the writing modules, which import torch; they
are read here from those modules' source (:func:`constant`), and ``tests/test_cache_cli.py``
checks them against the imported values.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from noisydeq import __version__
from noisydeq.fingerprint import code_fingerprint, machine, torch_version

#: the module (under ``noisydeq/``) and constant naming each kind's current format
FORMATS = {"calibration": ("hardware/calibration_store.py", "FORMAT"),
           "chips": ("hardware/chip_store.py", "FORMAT"),
           "figures": ("figure_cache.py", "FORMAT")}
#: the module and constant naming the code fingerprint each kind is keyed by
#: (:func:`~noisydeq.fingerprint.code_fingerprint`; chips share the calibration head)
CODES = {"calibration": ("hardware/calibration_store.py", "CODE"),
         "chips": ("hardware/calibration_store.py", "CODE"),
         "figures": ("figure_cache.py", "CODE")}
#: the drawing libraries whose versions a figure entry's key holds
LIBRARIES = ("figure_cache.py", "LIBRARIES")
#: the training schema and device-gradient rule of a model's config
SCHEMA = ("train_config.py", "TRAIN_SCHEMA")
GRADIENT = ("train_config.py", "DEVICE_GRADIENT")


@functools.cache
def constant(module: str, name: str) -> Any:
    """The literal value of the top-level ``name = ...`` in ``noisydeq/<module>``."""
    import noisydeq

    path = Path(noisydeq.__file__).parent / module
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) and node.value else [])
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"{name} not found in noisydeq/{module}")


def library_versions() -> dict[str, str]:
    """The versions of the drawing libraries (``figure_cache.LIBRARIES``) as a figure entry
    records them (``""``: not installed), from their metadata: nothing imported."""
    from importlib import metadata

    out = {}
    for name in constant(*LIBRARIES):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = ""
    return out


def device_fields(kind: str) -> dict[str, Any]:
    """The recorded environment fields (``calibration_store.RECORDED`` but the thread
    count) a ``kind`` entry of this process would carry; a figure entry's also its drawing
    libraries' versions (in its key; recorded since 2026-12-07: older entries are judged
    without them)."""
    fields = {"format": constant(*FORMATS[kind]), "version": __version__,
              "code": code_fingerprint(constant(*CODES[kind])), "torch": torch_version(),
              "machine": machine()}
    if kind == "figures":
        fields["libraries"] = library_versions()
    return fields


def _differs(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    """The first recorded field that is not the wanted one, as ``field value`` (a mapping's
    first differing item as ``key value``); ``""``."""
    for field, value in wanted.items():
        if field in recorded and recorded[field] != value:
            seen = recorded[field]
            if isinstance(seen, Mapping) and isinstance(value, Mapping):
                return next((f"{k} {seen.get(k, '(none)')}" for k in sorted({*seen, *value})
                             if seen.get(k) != value.get(k)), field)
            return f"{field} {seen}"
    return ""


def device_status(kind: str, meta: Mapping[str, Any]) -> tuple[str, str]:
    """(status, reason) of a calibration or chip entry from its recorded fields: the
    entry format (``format`` / ``chips``), the package ``version`` a chip file carries, and
    the ``env`` newer entries record."""
    want = device_fields(kind)
    fmt = meta.get("chips") if kind == "chips" else meta.get("format")
    seen = {"format": fmt, **({"version": meta["version"]} if "version" in meta else {})}
    env = meta.get("env")
    if isinstance(env, Mapping):
        seen.update({k: env[k] for k in want if k in env})
    reason = _differs(seen, want)
    if reason:
        return "stale", reason
    return ("current", "") if isinstance(env, Mapping) else ("unknown", "")


def memo_status(name: str, memo: Mapping[str, Any]) -> tuple[str, str]:
    """(status, reason) of the code fingerprint's memo file ``name`` holding ``memo``: the
    one this process reads is current; one of other modules' bytes (``raw``) is stale for
    their ``code``, one of these bytes under another name for another Python (or memo
    format)."""
    from noisydeq.fingerprint import current_memo

    want, raw = current_memo()
    if memo.get("raw") != raw:
        return "stale", f"code {memo.get('code')}"
    if name != want:
        return "stale", "another Python or memo format"
    return "current", ""


def model_status(config: Mapping[str, Any]) -> tuple[str, str]:
    """(status, reason) of a model entry from its training config (``train_config.
    run_config``: schema, versions; a device-trained model's gradient rule)."""
    versions = config.get("versions") or {}
    seen = {"schema": config.get("schema"), "noisydeq": versions.get("noisydeq"),
            "torch": versions.get("torch")}
    want = {"schema": constant(*SCHEMA), "noisydeq": __version__,
            "torch": torch_version().split("+")[0]}
    if "device_spec" in config:
        seen["device_gradient"] = config.get("device_gradient")
        want["device_gradient"] = constant(*GRADIENT)
    reason = _differs(seen, want)
    return ("stale", reason) if reason else ("current", "")
