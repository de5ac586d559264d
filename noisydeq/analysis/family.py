"""Find and load the trained models of a family (a ``noisydeq sweep``/``train`` output dir).

The checkpoints are found by :mod:`noisydeq.analysis.locate` (a sweep run dir: through
the model cache; otherwise every ``model.safetensors`` below the path). Every checkpoint
that ``noisydeq.train.train_model`` wrote is a member: its metadata holds the full config
(model spec, training spec, task), so the model is rebuilt with ``build_model`` and its
weights loaded without pickle. Members are grouped by (seed, training noise, training
device) and paired by depth: a DEQ labelled with FFW depth n is the parameter-matched
partner of the n-layer FFW (paper §4.1, App. E.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from noisydeq import store
from noisydeq.errors import CorruptArtefact, NoisyDEQError
from noisydeq.specs.device import DIGITAL
from noisydeq.specs.device import trained_on as device_words


@dataclass
class Member:
    """One trained model of a family and the facts the analyses report about it."""

    path: Path
    model: nn.Module
    kind: str
    depth: int
    width: int
    params: int
    task: str
    task_seed: int
    seed: int
    train_snr_db: float
    test_metric: float
    fingerprint: str | None = None  # hash of the training data (noisydeq.tasks.Task)
    data_dir: str | None = None  # where the data are (recorded by a sweep or --data-dir)
    train: dict[str, Any] = field(default_factory=dict)  # the recorded TrainSpec
    task_options: dict[str, Any] = field(default_factory=dict)  # generator arguments

    chip: int | None = None  # the chip it is programmed on (noisydeq.analysis.on_device)

    @property
    def trained_on(self) -> str:
        """Where it was trained: ``digital``, or the training device and its SNR
        (``rram native``, ``photonic 10 dB``; its noise mode when not ``physical``)."""
        return trained_on(self.train)

    @property
    def group(self) -> tuple:
        """(seed, training SNR, where trained), and the chip when the member is on one:
        members are paired within a group."""
        base = (self.seed, self.train_snr_db, self.trained_on)
        return base if self.chip is None else (*base, self.chip)



def group_order(group: tuple) -> tuple:
    """Sort key of a :attr:`Member.group`: seed, training SNR, digitally trained first."""
    seed, snr, where, *chip = group
    return (seed, snr, where != DIGITAL, where, *chip)


def training_text(member: Member) -> str:
    """How a member was trained, in words: ``trained at 10 dB`` / ``trained without noise``
    for a digitally trained one, ``trained on rram native[, signal noise 10 dB]`` else."""
    from noisydeq.figures import trained_text

    if member.trained_on == DIGITAL:
        return trained_text(member.train_snr_db)
    noise = "" if math.isinf(member.train_snr_db) else f", signal noise {member.train_snr_db:g} dB"
    return f"trained on {member.trained_on}{noise}"


def trained_on(train: dict[str, Any]) -> str:
    """The training device of a recorded TrainSpec, in words (:attr:`Member.trained_on`,
    :func:`noisydeq.specs.device.trained_on`)."""
    return device_words(train.get("device"), train.get("device_snr_db"),
                        train.get("device_noise_mode"))


def _train_snr(train: dict[str, Any]) -> float:
    noise = train.get("noise") or {}
    if noise.get("site", "none") == "none":
        return math.inf
    value = noise.get("snr_db", math.inf)
    return math.inf if value is None else float(value)


def load_member(path: Path, check: Any = None) -> Member:
    """Rebuild one checkpoint; one clear error when it is not a trained DEQ/FFW of the package
    (:func:`noisydeq.analysis.probe.check_model`) or its metadata is malformed.

    ``check(model) -> kind`` replaces that test (``noisydeq certify`` passes its own,
    ``noisydeq attack`` :func:`deq_or_ffw`)."""
    from noisydeq.analysis.probe import check_model
    from noisydeq.models.factory import as_model_spec, build_model, resolved_width
    from noisydeq.specs.base import build
    from noisydeq.specs.training import TrainSpec
    from noisydeq.train_config import apply_overrides

    tensors, meta = store.load_checkpoint(path)
    try:
        config = meta.get("config") or {}
        spec = (config.get("model") or {}).get("spec")
        if not isinstance(spec, dict):
            raise NoisyDEQError(f"checkpoint {path}: no model spec in its metadata (not written "
                                "by noisydeq train)")
        train = config.get("train") or {}
        extra = meta.get("extra") or {}
        if not isinstance(train, dict) or not isinstance(extra, dict):
            raise TypeError("train / extra are not objects")
        epochs = train.get("epochs", 0)
        if isinstance(epochs, bool) or not isinstance(epochs, int):
            raise TypeError(f"train.epochs is {epochs!r}")
        if epochs <= 0 or "test_metric" not in extra:
            raise NoisyDEQError(f"checkpoint {path}: the model is untrained (0 epochs)")
        test_metric = float(extra["test_metric"])
        task = config.get("task") or {}
        if not isinstance(task, dict):
            raise TypeError(f"task is {task!r}")
        mspec = as_model_spec(spec)
        width = resolved_width(mspec)
        hidden = width * width * (mspec.depth if mspec.kind == "ffw" else 1)
        if hidden > sum(t.numel() for t in tensors.values()):  # before allocating the model
            raise ValueError(f"its model spec (width {width}) is larger than its weights")
        model = build_model(mspec)
        apply_overrides(model, build(TrainSpec, train, where=f"{path} train"))
        store.load_into(model, tensors, path)
        kind = (check or check_model)(model)
        return Member(
            path=path, model=model.eval(), kind=kind, depth=int(model.depth),
            width=int(model.width), params=int(model.hidden_weight_count()),
            task=str(task.get("name", "digits")), task_seed=int(task.get("seed", 0)),
            seed=int(train.get("seed", 0)), train_snr_db=_train_snr(train),
            test_metric=test_metric,
            fingerprint=task.get("fingerprint"), train=dict(train),
            task_options=dict(task.get("options") or {}),
        )
    except NoisyDEQError as err:
        if str(path) in str(err):
            raise
        raise NoisyDEQError(f"checkpoint {path}: {err}") from None
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CorruptArtefact(path, f"carries malformed metadata ({reason})") from None


def load_cached_member(path: Path, check: Any = None) -> Member:
    """:func:`load_member` of a model in the model cache, under its entry's lock (the
    :class:`noisydeq.store.DirLock` that ``train_model`` and ``noisydeq cache prune/clear``
    take): a concurrent clear skips the entry while it is read. A cache read-only to this
    process (a read-only mount, no write permission) is read without the lock, writing
    nothing (:func:`noisydeq.store.reading_lock`). An entry emptied after
    :func:`noisydeq.analysis.locate.locate` found it (a clear between the two) is a miss,
    said in one line, like a model the cache never held."""
    entry = path.parent
    if entry.is_dir():  # DirLock would create a directory the clear removed
        lock = store.reading_lock(entry, "model directory")
        try:
            if path.is_file():
                return load_member(path, check)
        finally:
            if lock is not None:
                lock.release()
    raise NoisyDEQError(
        f"--family: the cached model {path} was removed (by another process: noisydeq cache "
        "clear or prune) after it was found; re-run the sweep to train it again")


def deq_or_ffw(model: nn.Module) -> str:
    """``"deq"`` or ``"ffw"`` for any model of those kinds (a ``check`` of :func:`load_member`)."""
    kind = getattr(model, "kind", None)
    if kind not in ("deq", "ffw"):
        raise NoisyDEQError(f"not a DEQ or FFW (kind={kind!r})")
    return kind


def load_family(root: str | Path, device: torch.device | str = "cpu", *,
                data_dir: str | None = None, cache_dir: str | None = None,
                check: Any = None, data_dir_as: str = "--data-dir") -> list[Member]:
    """All members of ``root`` (sweep run dir, train output, checkpoint), sorted by group,
    kind and depth. ``data_dir`` overrides the data directory a sweep recorded; members
    carry the one to use (``Member.data_dir``); given for a task that reads no data files
    (digits, the generated tasks) it is refused in one line, as the analysis commands
    refuse their other options that do not apply (``data_dir_as``: how it arrived, leading
    the refusal). ``check``: see :func:`load_member`."""
    from noisydeq.analysis.locate import locate
    from noisydeq.specs.task_names import refuse_data_dir

    source = locate(root, data_dir=data_dir, cache_dir=cache_dir)
    if source.origin == "sweep":
        members = [load_cached_member(p, check) for p in source.checkpoints]
    else:
        members = [load_member(p, check) for p in source.checkpoints]
    tasks = {m.task for m in members}
    if len(tasks) > 1:
        raise NoisyDEQError(f"--family: members were trained on different tasks {sorted(tasks)}")
    refuse_data_dir(data_dir, tasks, "the family's", data_dir_as)
    for m in members:
        m.model.to(device)
        m.data_dir = data_dir or source.data_dir
    return sorted(members, key=lambda m: (*group_order(m.group), m.kind, m.depth))


def load_family_task(members: list[Member], data_dir: str | None = None):
    """The task the family was trained on, checked against the recorded data fingerprint.

    ``data_dir`` (``--data-dir``) wins over the directory the run recorded. Data that differ
    from the training data (another MNIST copy, another split) are refused in one line.
    """
    from noisydeq.tasks import load_task

    m = members[0]
    where = data_dir or m.data_dir
    task = load_task(m.task, data_dir=where, seed=m.task_seed, **m.task_options)
    if m.fingerprint is not None and task.fingerprint != m.fingerprint:
        raise NoisyDEQError(
            f"--data-dir: the {m.task} data found in {where or 'the default location'} differ "
            f"from the data the models were trained on (fingerprint {task.fingerprint} != "
            f"{m.fingerprint}); give the directory used for training"
        )
    return task


def attack_members(root: str | Path, data_dir: str | None = None,
                   data_dir_as: str = "--data-dir") -> tuple[list[Any], Any, str | None]:
    """(the members of the family at ``root`` as ``noisydeq attack`` attacks them — each
    with its recorded training's defences, :func:`noisydeq.attacks.members.defended_model`
    —, the family's task, the data directory it recorded). What the attack cells are
    computed on, so it lives here, in the code of the cells' fingerprint (kind ``attacks``,
    :mod:`noisydeq.fingerprint`), not in the command. Two members of one id are refused in
    one line; ``data_dir_as``: how the data directory arrived (:func:`load_family`)."""
    from noisydeq.attacks.members import defended_model

    loaded = load_family(root, "cpu", data_dir=data_dir, check=deq_or_ffw,
                         data_dir_as=data_dir_as)
    task = load_family_task(loaded, data_dir)
    members = [defended_model(m.model, m.kind, m.depth, m.width, m.params, m.seed, m.train)
               for m in loaded]
    ids = [m.model_id for m in members]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise NoisyDEQError(f"--family: several models share the id {dup[0]} (same kind, "
                            "depth, width, seed and training); attack them one run at a time")
    return members, task, loaded[0].data_dir


@dataclass
class Pair:
    """A DEQ and an FFW of the same depth and group (either may be missing)."""

    depth: int
    group: tuple
    deq: Member | None
    ffw: Member | None

    def count_warning(self, tolerance: float = 0.02) -> str | None:
        """A warning line when the hidden-parameter counts differ by more than ``tolerance``."""
        if self.deq is None or self.ffw is None:
            return None
        a, b = self.deq.params, self.ffw.params
        if abs(a - b) > tolerance * max(a, b):
            return (
                f"warning: depth {self.depth}: DEQ (width {self.deq.width}) has {a} hidden "
                f"parameters but the FFW has {b}; the pair is not parameter-matched"
            )
        return None


def pairs(members: list[Member]) -> list[Pair]:
    """Pair DEQ and FFW members by (group, depth)."""
    table: dict[tuple[tuple, int], dict[str, Member]] = {}
    for m in members:
        slot = table.setdefault((m.group, m.depth), {})
        if m.kind in slot:
            raise NoisyDEQError(
                f"--family: two {m.kind} models of depth {m.depth} in one group: "
                f"{slot[m.kind].path} and {m.path}"
            )
        slot[m.kind] = m
    return [
        Pair(depth, group, slot.get("deq"), slot.get("ffw"))
        for (group, depth), slot in sorted(
            table.items(), key=lambda kv: (group_order(kv[0][0]), kv[0][1]))
    ]
