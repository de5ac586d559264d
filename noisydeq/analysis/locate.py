"""Where a family's checkpoints and data live, for ``--family PATH`` of the analysis commands.

``PATH`` may be

* a **sweep run directory** (``noisydeq sweep`` / ``noisydeq run``): it records the resolved
  :class:`~noisydeq.config.SweepSpec` in ``config.toml`` but not the models, which sit in the
  model cache (``$NOISYDEQ_CACHE`` or the user cache dir, ``--cache`` overrides) under the
  hash of each member's training config. The hashes are recomputed exactly as the sweep
  made them (:func:`noisydeq.families.family_spec_for_sweep` → ``member_spec`` →
  ``build_member`` → :func:`noisydeq.train_config.run_config`), so the analysis reads the very
  models the sweep evaluated, never trains; the sweep's ``data_dir`` is taken over.
  :func:`noisydeq.analysis.family.load_family` reads each under its cache entry's lock, as
  ``train_model`` does, so a concurrent ``noisydeq cache clear`` skips it, and an entry
  cleared between the lookup and the read is one line, a miss;
* any directory holding ``model.safetensors`` files (``noisydeq train --out DIR`` for one
  model, ``noisydeq train --depths ... --out DIR`` for a family: ``DIR/models/<hash>/``; a
  ``noisydeq study`` run directory: ``models/<id>/``);
* one checkpoint file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from noisydeq.errors import NoisyDEQError

# torch and noisydeq.train (MODEL_FILE) load inside the functions that need them:
# check_family runs before a command's heavy imports
SWEEP_CONFIG = "config.toml"
#: noisydeq.train.MODEL_FILE, named here without importing torch (tests/test_cli_imports.py
#: checks the two agree)
CHECKPOINT = "model.safetensors"


@dataclass
class FamilySource:
    """The checkpoints of a family and the data directory its run recorded (if any)."""

    root: Path
    checkpoints: list[Path]
    data_dir: str | None = None
    origin: str = "dir"  # "sweep", "dir" or "checkpoint"


def _refuse_family(run_dir: Path, err: NoisyDEQError) -> NoisyDEQError:
    """``err`` (about the run's recorded spec) as the one-line refusal of ``--family``."""
    return NoisyDEQError(f"--family {run_dir}: its {SWEEP_CONFIG} is damaged or unreadable "
                         f"({err}); restore it or re-run the sweep")


def read_sweep_spec(run_dir: Path):
    """The :class:`SweepSpec` a sweep run dir recorded (digest checked: a damaged one is one
    error naming it), or None when ``run_dir`` is not a sweep run dir (no ``config.toml``,
    or one without the digest line noisydeq writes: :func:`locate` then searches for
    checkpoints)."""
    from noisydeq import store
    from noisydeq.results import RunDir, read_recorded_spec

    rd = RunDir(run_dir)
    if not rd.config_path.is_file():
        return None
    try:
        with open(rd.config_path, "rb") as fh:
            head = fh.read(len(store.TEXT_DIGEST))
    except OSError as err:
        raise _refuse_family(run_dir, NoisyDEQError(err.strerror or str(err))) from None
    if head != store.TEXT_DIGEST.encode():
        return None  # a config.toml of something else: fall back to searching checkpoints
    return read_recorded_spec(rd.path, rd.config_path, rd.spec_cls, rd.what,
                              refuse=_refuse_family)


def sweep_checkpoints(spec, data_dir: str | None = None,
                      cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """Checkpoint paths of every family member a sweep spec trained (cache lookup only).

    Mirrors ``noisydeq.sweep.family_models``: the task is loaded with the data seed and
    each (seed, training SNR, training device) maps to one family
    (:func:`noisydeq.families.sweep_family_specs`). A missing member is one clear error
    naming the cache that was searched.
    """
    import torch

    from noisydeq.families import cache_root, prepared_member, sweep_family_specs
    from noisydeq.runtime import num_threads, thread_plan
    from noisydeq.specs.device import trained_on
    from noisydeq.tasks import load_task
    from noisydeq.train import MODEL_FILE

    task = load_task(spec.task, data_dir=data_dir or spec.data_dir, seed=spec.data_seed)
    root = cache_root(cache_dir) / "models"
    dev = torch.device(spec.torch_device)
    threads = thread_plan(None)[0]  # the sweep's default training threads (part of the key)
    found, missing = [], []
    with num_threads(threads):
        for seed, tsnr, tdev, tdev_snr, fspec in sweep_family_specs(spec):
            where = "" if tdev is None else (
                f" on {trained_on(tdev, tdev_snr, spec.train_noise_mode)}")
            for depth in fspec.depths:
                for kind in fspec.kinds:
                    entry = prepared_member(fspec, task, kind, depth, root, dev)[2]
                    path = entry / MODEL_FILE
                    if path.is_file():
                        found.append(path)
                    else:
                        missing.append(f"{kind} d{depth} seed {seed} train SNR {tsnr:g}{where}")
    if missing:
        raise NoisyDEQError(
            f"--family: {len(missing)} model(s) of the sweep trained with {threads} torch "
            f"thread(s) are not in the cache {root} (first: {missing[0]}); pass --cache (or "
            "set NOISYDEQ_CACHE to) the cache the sweep used, set NOISYDEQ_THREADS to the "
            "sweep's --threads, or re-run the sweep"
        )
    return found


def check_family(root: str | Path) -> None:
    """Refuse a ``--family`` that does not exist or a sweep run dir whose ``config.toml`` is
    damaged, in one line, without torch: commands call it before their heavy imports (and
    before their heartbeat's first line)."""
    p = Path(root)
    if p.is_file():
        return
    if not p.is_dir():
        raise NoisyDEQError(f"--family: {p} does not exist")
    read_sweep_spec(p)


def check_models(root: str | Path, what: str = "--family") -> None:
    """Refuse a ``--family`` folder that is no sweep run and holds no trained model at all,
    in one line, without torch: commands call it last among their checks, before their heavy
    imports (:func:`locate` says the same after them). ``what`` names the argument in the
    message (``certify`` takes its source as a positional argument)."""
    p = Path(root)
    if (p.is_dir() and not (p / SWEEP_CONFIG).is_file()
            and next(p.rglob(CHECKPOINT), None) is None):
        raise _no_model(p, what)


def locate(root: str | Path, *, data_dir: str | None = None,
           cache_dir: str | os.PathLike | None = None) -> FamilySource:
    """Resolve ``--family`` (see the module docstring); ``data_dir`` overrides the recorded one."""
    from noisydeq.train import MODEL_FILE

    p = Path(root)
    if p.is_file():
        return FamilySource(p, [p], origin="checkpoint")
    if not p.is_dir():
        raise NoisyDEQError(f"--family: {p} does not exist")
    spec = read_sweep_spec(p)
    if spec is not None:
        return FamilySource(p, sweep_checkpoints(spec, data_dir, cache_dir),
                            data_dir=spec.data_dir, origin="sweep")
    found = sorted(p.rglob(MODEL_FILE))
    if not found and (p / SWEEP_CONFIG).is_file():
        # a sweep run dir whose config.toml lost its digest line (truncated, overwritten)
        raise _refuse_family(p, NoisyDEQError(
            f"it lacks the digest line noisydeq writes, and no {MODEL_FILE} lies under "
            "the directory"))
    if not found:
        raise _no_model(p)
    return FamilySource(p, found)


def _no_model(p: Path, what: str = "--family") -> NoisyDEQError:
    return NoisyDEQError(f"{what}: no trained model ({CHECKPOINT}) under {p}; give a run "
                         "dir of 'noisydeq sweep'/'noisydeq study'/'noisydeq train' or a "
                         "checkpoint")
