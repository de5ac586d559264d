"""Safe, atomic persistence: safetensors checkpoints with their config, and resume state.

Nothing here uses pickle. A checkpoint is **one** ``.safetensors`` file: the tensors plus
string metadata holding the full resolved config (JSON), its hash and the package version;
a human-readable ``.json`` sidecar with the same config sits next to it. Optimizer state is
flattened: every tensor goes into the safetensors file under ``optim/...`` and every other
value (param-group hyper-parameters, step counters stored as numbers) into JSON metadata, so a
training run can be resumed bit-for-bit. Every file is written to a temporary name in the
target directory and renamed into place (``os.replace``), so a killed process never leaves a
half-written checkpoint behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import Tensor

from noisydeq import __version__
from noisydeq.config import atomic_write_bytes, atomic_write_text
from noisydeq.errors import NoisyDEQError

FORMAT = "noisydeq-checkpoint/1"
_META_KEY = "noisydeq"


# ------------------------------------------------------------------ JSON helpers


def to_jsonable(value: Any) -> Any:
    """Plain JSON types for a config value (tuples → lists, paths → str, inf kept as float)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.device):
        return str(value)
    if hasattr(value, "model_dump"):
        return to_jsonable(value.model_dump(mode="python"))
    return value


def dumps_json(value: Any) -> str:
    """Canonical JSON (sorted keys; ``Infinity`` allowed, as Python's json reads it back)."""
    return json.dumps(to_jsonable(value), sort_keys=True, separators=(",", ":"), allow_nan=True)


def hash_tensor(h: Any, t: Tensor, label: str = "") -> None:
    """Feed ``label``, shape, dtype and the bytes of ``t`` into the hashlib object ``h``
    (model weights, data and calibration inputs in cache keys)."""
    c = t.detach().to("cpu").contiguous()
    h.update(f"{label}{tuple(c.shape)}{c.dtype}".encode())
    h.update(c.numpy().tobytes())


def config_hash(config: Any) -> str:
    """Stable 20-hex-digit hash of a config (canonical JSON, blake2b)."""
    return hashlib.blake2b(dumps_json(config).encode(), digest_size=10).hexdigest()


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def config_diff(a: Any, b: Any, limit: int = 4) -> str:
    """The dotted keys whose values differ between two configs, e.g. ``train.epochs 3 → 5``."""
    fa, fb = _flatten(json.loads(dumps_json(a))), _flatten(json.loads(dumps_json(b)))
    keys = sorted(k for k in set(fa) | set(fb) if fa.get(k, "<absent>") != fb.get(k, "<absent>"))
    parts = [f"{k} {fa.get(k, '<absent>')!r} → {fb.get(k, '<absent>')!r}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"… {len(keys) - limit} more")
    return ", ".join(parts) or "(no visible difference)"


# ---------------------------------------------------------------------- checkpoints


def _contiguous_cpu(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def save_tensors(
    path: str | os.PathLike, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]
) -> Path:
    """Write tensors + JSON-able ``meta`` into one safetensors file, atomically."""
    header = {_META_KEY: dumps_json({"format": FORMAT, "version": __version__, **meta})}
    return atomic_write_bytes(path, st_save(_contiguous_cpu(tensors), metadata=header))


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_tensors`: (tensors on CPU, meta)."""
    p = Path(path)
    if not p.is_file():
        raise NoisyDEQError(f"checkpoint not found: {p}")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        raise NoisyDEQError(f"checkpoint {p} is not a readable safetensors file ({err})") from None
    try:
        meta = json.loads(header[_META_KEY])
    except (KeyError, json.JSONDecodeError):
        raise NoisyDEQError(f"checkpoint {p} carries no noisydeq metadata") from None
    if meta.get("format") != FORMAT:
        raise NoisyDEQError(f"checkpoint {p} has format {meta.get('format')!r}, expected {FORMAT}")
    return tensors, meta


def check_config(meta: Mapping[str, Any], config: Any, path: str | os.PathLike) -> None:
    """Raise one line if a checkpoint's config hash differs from ``config``'s."""
    want = config_hash(config)
    if meta.get("config_hash") != want:
        raise NoisyDEQError(
            f"checkpoint {path} was made with a different config "
            f"(hash {meta.get('config_hash')} ≠ {want}: {config_diff(meta.get('config'), config)})"
        )


def save_checkpoint(
    path: str | os.PathLike,
    state_dict: Mapping[str, Tensor],
    config: Any,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save model weights with their full resolved ``config`` and its hash.

    Writes ``path`` (safetensors; the authoritative copy of the config lives in its
    metadata) and ``path`` with suffix ``.json`` (the same config, hash and ``extra`` —
    metrics, history — for people and tools).
    """
    p = Path(path)
    cfg = json.loads(dumps_json(config))
    meta = {"config": cfg, "config_hash": config_hash(cfg), "extra": to_jsonable(extra or {})}
    save_tensors(p, state_dict, meta)
    sidecar = {"format": FORMAT, "version": __version__, "weights": p.name, **meta}
    atomic_write_text(p.with_suffix(".json"), json.dumps(sidecar, indent=2, sort_keys=True))
    return p


def load_checkpoint(
    path: str | os.PathLike, config: Any | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load weights (CPU) and metadata; with ``config``, refuse a checkpoint of another config."""
    tensors, meta = load_tensors(path)
    if config is not None:
        check_config(meta, config, path)
    return tensors, meta


def load_into(model: torch.nn.Module, tensors: Mapping[str, Tensor], path: Any = "") -> None:
    """``model.load_state_dict`` with a one-line error for mismatched keys or shapes."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = [k for k in own if k in tensors and tuple(own[k].shape) != tuple(tensors[k].shape)]
    if missing or unexpected or shapes:
        raise NoisyDEQError(
            f"checkpoint {path} does not fit this model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, shape mismatch {shapes[:3]})"
        )
    model.load_state_dict(dict(tensors))


# ------------------------------------------------------------------- optimizer state


def flatten_optimizer(state: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors and JSON (no pickle needed).

    Tensors go under ``optim/state/<param>/<key>``; non-tensor per-parameter entries and the
    param groups go into the JSON part.
    """
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optim/state/{pid}/{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in state["param_groups"]
    ]
    tuple_keys = sorted({k for g in state["param_groups"] for k, v in g.items()
                         if isinstance(v, tuple)})
    return tensors, {"scalars": scalars, "param_groups": groups, "tuple_keys": tuple_keys}


def unflatten_optimizer(tensors: Mapping[str, Tensor], info: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim/state/"):
            continue
        _, _, pid, key = name.split("/", 3)
        state.setdefault(int(pid), {})[key] = value
    for pid, entry in info.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entry)
    tuple_keys = set(info.get("tuple_keys", []))
    groups = [
        {k: (tuple(v) if k in tuple_keys else v) for k, v in g.items()}
        for g in info["param_groups"]
    ]
    return {"state": state, "param_groups": groups}

