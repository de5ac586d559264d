"""LyaDEQ experiments: the paper's Table 1 grid under attack, and accuracy vs device SNR.

An experiment file (``noisydeq/experiments/lyapunov-*.toml``, :class:`LyapunovExperimentSpec`) names
the task, seeds, LyaDEQ settings and training, plus an ``[attack]`` table (variants ×
I-FGSM/PGD × ε, Chu et al. 2024 Table 1) and/or a ``[device]`` table (LyaDEQ vs the plain
Eq. 7 DEQ vs the depth-matched DEQ and FFW, accuracy vs the SNR of each device). Models
come from the family cache (:func:`noisydeq.families.train_family`), so a model trained for
one table is reused by the other.

Output directory::

    config.toml                    the resolved experiment (digest line first)
    attack/<variant>-s<seed>.json  one finished (variant, seed) cell, the code that computed
                                   it, its model's weights digest and family cache entry,
                                   written atomically with its digest (a damaged or foreign
                                   cell is refused, naming it; one of other weights or of
                                   format 1 is computed again, one of other code too unless
                                   ``keep_other_code``: :class:`ExperimentDir`)
    attack.csv                     one row per variant × seed × attack × ε
    device/<device>-<group>/       one sweep run directory per device and model group
    device.csv                     their tidy tables, with the model group as ``model``
    report.md, figures/            tables and figures (:mod:`noisydeq.analysis.lyapunov_report`)

Re-running the same experiment into the same directory skips every finished cell of this
code (:func:`run_attacks`; the device sweeps' keys hold the code too), knowing which are
served before any model is trained or loaded: a cell is tied to the weights it was
computed on, so one whose model's cache entry was cleared is served, not retrained for;
one process writes a directory at a time (its lock, :class:`ExperimentDir`). PGD's
random start is counter-based: a test sample's start depends on (seed, ε, its index) only,
not on the batch it is attacked in.

Length (about 590 lines): one experiment's spec, output directory and driver (attack cells,
device sweeps, tables) — the report is :mod:`noisydeq.analysis.lyapunov_report`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator

from noisydeq import limits, store
from noisydeq.attacks.robust import correct
from noisydeq.errors import CorruptArtefact, NoisyDEQError
from noisydeq.noise import NoiseStream, derive_seed
from noisydeq.results import LockedDir, other_code_note, other_weights_note
from noisydeq.specs.base import InfFloat, StrictModel, build, suggest_name
from noisydeq.specs.family import FamilySpec
from noisydeq.specs.model import LYAPUNOV_VARIANTS, LyapunovSpec
from noisydeq.specs.noise import parse_snr_range, snr_list
from noisydeq.specs.sweep import SweepSpec
from noisydeq.specs.toml import dumps_toml
from noisydeq.specs.variant_file import ExperimentName

#: format tag of an attack cell file; 2: robust = right clean *and* attacked
#: (noisydeq.attacks.robust); cells of format 1 counted the attacked input only
CELL_FORMAT = "noisydeq-lyapunov-cell/2"
FORMAT_1 = "noisydeq-lyapunov-cell/1"
#: column order of attack.csv (a cell file stores its rows with sorted keys)
ATTACK_CSV_ORDER = ("variant", "seed", "params", "train_seconds", "test_metric", "mean_steps",
                    "converged_frac", "attack", "eps_255", "steps", "accuracy", "seconds",
                    "mean_V", "projected_frac")

ATTACKS = ("ifgsm", "pgd")
#: the model groups of the device comparison: the LyaDEQ (``lyadeq``, variant ``both``), its
#: ablations (``lyadeq-<variant>``) and the parameter-matched DEQ and FFW of the paper's unit
#: cell (Eq. 57)
DEVICE_GROUPS = ("lyadeq", "lyadeq-plain", "lyadeq-lyapunov", "lyadeq-orthogonal", "deq",
                 "ffw")


def _choices(values: list[str], allowed: tuple[str, ...], field: str) -> list[str]:
    for v in values:
        if v not in allowed:
            raise ValueError(suggest_name(field, v, allowed))
    if not values:
        raise ValueError(f"give at least one {field} (allowed: {', '.join(allowed)})")
    return values


class AttackGrid(StrictModel):
    """The attack table: ``variants`` × ``attacks`` × ``eps_255`` (ε in units of 1/255),
    step size ``alpha_255``/255 and the paper's step count (or ``steps`` at every ε);
    ``max_test_samples`` caps the test set (all of it by default)."""

    NO_REPEATS = frozenset({"variants", "attacks", "eps_255"})

    variants: list[str] = Field(default_factory=lambda: list(LYAPUNOV_VARIANTS))
    attacks: list[str] = Field(default_factory=lambda: list(ATTACKS))
    eps_255: list[float] = Field(default_factory=lambda: [2.0, 4.0, 6.0, 8.0])
    alpha_255: float = Field(default=1.0, gt=0.0)
    steps: int | None = Field(default=None, ge=1, le=limits.MAX_ITER)
    max_test_samples: int | None = Field(default=None, ge=1, le=limits.MAX_SAMPLES)
    batch_size: int = Field(default=500, ge=1, le=limits.MAX_BATCH)

    @field_validator("variants")
    @classmethod
    def _variants(cls, v: list[str]) -> list[str]:
        return _choices(v, LYAPUNOV_VARIANTS, "variant")

    @field_validator("attacks")
    @classmethod
    def _attacks(cls, v: list[str]) -> list[str]:
        return _choices(v, ATTACKS, "attack")

    @field_validator("eps_255")
    @classmethod
    def _eps(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 < e <= 255.0 for e in v):
            raise ValueError(f"eps_255: values in (0, 255] (ε·255), got {v}")
        return sorted(v)


class DeviceGrid(StrictModel):
    """The device comparison: per device (preset name or path) the model ``groups`` to run
    (:data:`DEVICE_GROUPS`) at ``snr_db`` (device noise, ``chips`` instances). The ``deq``
    and ``ffw`` groups are the family members of ``depths`` trained with
    ``baseline_preset`` (and ``baseline_epochs`` when set)."""

    NO_REPEATS = frozenset({"depths"})

    groups: dict[str, list[str]] = Field(
        default_factory=lambda: {"rram": list(DEVICE_GROUPS), "photonic": list(DEVICE_GROUPS)})
    snr_db: list[InfFloat] = Field(default_factory=lambda: parse_snr_range("0:30:3,inf"))
    chips: int = Field(default=3, ge=1, le=limits.MAX_CHIPS)
    depths: list[int] = Field(default_factory=lambda: [1])
    baseline_preset: str = "quick"
    baseline_epochs: int | None = Field(default=None, ge=0, le=limits.MAX_EPOCHS)
    max_test_samples: int | None = Field(default=None, ge=1, le=limits.MAX_SAMPLES)

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        if not v:
            raise ValueError('give at least one device, e.g. rram = ["lyadeq", "deq"]')
        return {device: _choices(g, DEVICE_GROUPS, "group") for device, g in v.items()}

    @field_validator("snr_db", mode="before")
    @classmethod
    def _snr(cls, v: Any) -> list[float]:
        return snr_list(v)


class LyapunovExperimentSpec(StrictModel):
    """An experiment file: shared model/training settings and the ``attack`` and ``device``
    tables (at least one). ``lyapunov`` holds c, d and the ICNN sizes (the variant comes
    from the tables); ``train_preset``/``train`` as in :class:`~noisydeq.config.FamilySpec`."""

    NO_REPEATS = frozenset({"seeds"})

    name: ExperimentName
    title: str = ""
    description: str = ""
    task: str = "mnist10k"
    data_dir: str | None = None
    seeds: list[int] = Field(default_factory=lambda: [0])
    hidden: int = Field(default=64, ge=1, le=limits.MAX_WIDTH)
    input_act: str = "relu"
    lyapunov: dict[str, Any] = Field(default_factory=dict)
    train_preset: str = "paper"
    train: dict[str, Any] = Field(default_factory=dict)
    attack: AttackGrid | None = None
    device: DeviceGrid | None = None

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("give at least one seed")
        for s in v:  # as a sweep's and train's seeds (it ran a negative one)
            if not 0 <= s <= limits.MAX_SEED:
                raise ValueError(f"seed {s} is outside 0..2^63-1")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _valid(self) -> LyapunovExperimentSpec:
        if self.attack is None and self.device is None:
            raise ValueError("the experiment needs an [attack] or a [device] table")
        if "variant" in self.lyapunov:
            raise ValueError("lyapunov.variant: the variants come from the [attack] and "
                             "[device] tables")
        build(LyapunovSpec, self.lyapunov, where="lyapunov")
        self.family_spec(self.seeds[0], "both").train_spec("lyadeq")  # preset + overrides
        return self

    # ------------------------------------------------------------------ specs

    def model_settings(self, variant: str) -> dict[str, Any]:
        return {**self.lyapunov, "variant": variant}

    def family_spec(self, seed: int, variant: str) -> FamilySpec:
        """The one-member family of a LyaDEQ ``variant`` (the cache entry both tables use)."""
        return build(FamilySpec, {
            "task": self.task, "data_dir": self.data_dir, "depths": [1], "kinds": ["lyadeq"],
            "hidden": self.hidden, "input_act": self.input_act, "seed": seed,
            "train_preset": self.train_preset, "train": self.train,
            "lyapunov": self.model_settings(variant),
        }, where="experiment")

    def sweep_spec(self, device: str, group: str) -> SweepSpec:
        """The sweep of one device and model group (device noise, all seeds)."""
        grid = self.device
        assert grid is not None
        data: dict[str, Any] = {
            "task": self.task, "data_dir": self.data_dir, "seeds": self.seeds,
            "hidden": self.hidden, "input_act": self.input_act, "device": device,
            "noise_site": "device", "snr_db": grid.snr_db, "chips": grid.chips,
            "max_test_samples": grid.max_test_samples,
        }
        if group in ("deq", "ffw"):
            data.update(kinds=[group], depths=grid.depths,
                        train_preset=grid.baseline_preset, epochs=grid.baseline_epochs,
                        max_train_samples=self.train.get("max_train_samples"))
        else:
            variant = "both" if group == "lyadeq" else group.removeprefix("lyadeq-")
            extra = set(self.train) - {"epochs", "max_train_samples"}
            if extra:
                raise NoisyDEQError(
                    "train: a device sweep passes only 'epochs' and 'max_train_samples' to "
                    f"its families, got {', '.join(sorted(extra))}"
                )
            data.update(kinds=["lyadeq"], depths=[1], train_preset=self.train_preset,
                        lyapunov=self.model_settings(variant),
                        epochs=self.train.get("epochs"),
                        max_train_samples=self.train.get("max_train_samples"))
        return build(SweepSpec, data, where=f"device {device} {group}")


def load_experiment(path: str | Path, **overrides: Any) -> LyapunovExperimentSpec:
    """Read an experiment file; ``overrides`` replace top-level fields (``None`` = keep)."""
    from noisydeq.specs.toml import tomllib

    p = Path(path)
    if not p.is_file():
        raise NoisyDEQError(f"file not found: {p}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise NoisyDEQError(f"{p}: not valid TOML ({err})") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    return build(LyapunovExperimentSpec, data, where=str(p))


# ------------------------------------------------------------------------ attack table


def _correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return correct(model(x), y)


def attack_cell(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, grid: AttackGrid, seed: int,
) -> list[dict[str, Any]]:
    """Clean and robust accuracy of one trained model: rows (attack, ε, steps, accuracy,
    seconds); ε = 0 is the clean row. A sample is robust when it is classified correctly
    clean and attacked (:mod:`noisydeq.attacks.robust`). PGD's random start is
    counter-based: test sample i's start is a function of (seed, ε, i), whatever the batch
    size."""
    from noisydeq.analysis.iterative_attacks import ifgsm, paper_steps, pgd

    model.eval()
    n = x.shape[0]
    bs = grid.batch_size
    t0 = time.perf_counter()
    right = torch.cat([_correct(model, x[i:i + bs], y[i:i + bs]) for i in range(0, n, bs)])
    rows = [{"attack": "none", "eps_255": 0.0, "steps": 0,
             "accuracy": int(right.sum()) / n,
             "seconds": time.perf_counter() - t0}]
    alpha = grid.alpha_255 / 255.0
    for attack in grid.attacks:
        for e in grid.eps_255:
            eps = e / 255.0
            steps = paper_steps(eps) if grid.steps is None else grid.steps
            t0 = time.perf_counter()
            robust = 0
            for i in range(0, n, bs):
                xb, yb = x[i:i + bs], y[i:i + bs]
                if attack == "ifgsm":
                    adv = ifgsm(model, xb, yb, eps=eps, steps=steps, alpha=alpha)
                else:
                    gen = NoiseStream.from_seed(derive_seed(seed, "pgd", e), xb.device,
                                                samples=torch.arange(i, i + len(xb)))
                    adv = pgd(model, xb, yb, eps=eps, steps=steps, alpha=alpha, generator=gen)
                robust += int((_correct(model, adv, yb) & right[i:i + bs]).sum())
            rows.append({"attack": attack, "eps_255": e, "steps": steps,
                         "accuracy": robust / n, "seconds": time.perf_counter() - t0})
    return rows


def readout_stats(model: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Mean V(z*), the fraction of test samples whose readout the projection moved, and the
    mean solver iterations on clean inputs."""
    model.eval()
    with torch.no_grad():
        out = model(x, return_solution=True)
    stats = {"mean_steps": float(out.solution.steps.double().mean()),
             "converged_frac": float(out.solution.converged.double().mean())}
    r = getattr(model, "last_readout", None)
    if r is not None:
        stats.update(mean_V=float(r["V"].double().mean()),
                     projected_frac=float(r["projected"].double().mean()))
    return stats


class ExperimentDir(LockedDir):
    """A LyaDEQ experiment's output directory (module docstring), written by one process at
    a time (its ``--out`` lock, :class:`~noisydeq.results.LockedDir`). Its attack cells,
    ``attack/<variant>-s<seed>.json`` (key ``<variant>-s<seed>``), record the code that
    computed them, the weights digest of their model and its family cache entry; which are
    served is decided as for the attack and study runs (:meth:`LockedDir._other_code`): a
    cell of other weights never, one of other code (or written before cells recorded code
    and weights) with :attr:`keep_other_code` only. A cell of format 1 (robust samples
    counted by the attacked input only) is never served: another rule's count, as an attack
    run's cells of another robust rule."""

    records_code = True
    code_kind = "lyapunov"  # the code its computation reaches (noisydeq.fingerprint)

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self.config_path = self.path / "config.toml"
        self.cells = self.path / "attack"
        #: key → the family cache entry (:func:`noisydeq.families.cached_weights`) of the
        #: cell's model, recorded in the cells written
        self.entries: dict[str, str] = {}
        #: the cells of format 1 found while :attr:`keep_other_code` (computed again)
        self.format_1: set[str] = set()

    def open(self, text: str) -> None:
        """Lock the directory (waiting for another writer) for the experiment whose
        resolved spec is ``text``, refusing one that holds another, and record it; nothing
        is written before the check. :meth:`close` (or leaving ``with``) releases it. It
        is never sealed (``SHA256SUMS``: its sweeps are, in ``device/``)."""
        def check() -> None:
            _check_config(self.config_path, text)

        with store.open_for_writing(self.lock, check, temps=(self.cells,), unseal=False):
            store.atomic_write_text(self.config_path, store.sign_text(text))

    def cell_path(self, key: str) -> Path:
        return self.cells / f"{key}.json"

    def record(self, key: str, variant: str, seed: int) -> dict[str, Any] | None:
        """The checked record of cell ``key`` of (``variant``, ``seed``), None when it has
        not been written: its digest, format and identity checked and, format 2, its rows
        (a file that fails is a :class:`CorruptArtefact` naming it)."""
        path = self.cell_path(key)
        if not path.exists():
            return None
        try:
            data = store.read_signed_json(path, "attack cell")
            if data.get("format") not in (CELL_FORMAT, FORMAT_1):
                raise CorruptArtefact(path, f"has format {data.get('format')!r}, not "
                                      f"{CELL_FORMAT}")
            if (data.get("variant"), data.get("seed")) != (variant, seed):
                raise CorruptArtefact(path, f"belongs to variant {data.get('variant')!r} seed "
                                      f"{data.get('seed')!r}, not {variant!r} seed {seed}")
            rows = data.get("rows")
            if data["format"] == CELL_FORMAT and (not isinstance(rows, list) or not rows or
                                                  not all(isinstance(r, dict) and {
                    "attack", "eps_255", "accuracy"} <= set(r) for r in rows)):
                raise CorruptArtefact(path, "holds no attack rows")
        except CorruptArtefact as err:
            raise CorruptArtefact(path, f"{err.reason}; delete it to compute that cell again"
                                  ) from None
        return data

    def load_cell(self, key: str, data: dict[str, Any] | None) -> list[dict[str, Any]] | None:
        """The rows of the cell whose checked :meth:`record` is ``data`` when it is served
        (of these weights, :attr:`weights`, and this code or :attr:`keep_other_code`),
        else None; those not served are noted in :attr:`other_weights`,
        :attr:`other_code` or :attr:`format_1`."""
        if data is None:
            return None
        if data["format"] == FORMAT_1:  # unknown code, and another robust rule's count
            if self.keep_other_code:
                self.format_1.add(key)
            else:
                self.other_code[key] = None
            return None
        return None if self._other_code(key, data) else data["rows"]

    def save_cell(self, key: str, variant: str, seed: int, rows: list[dict[str, Any]]) -> None:
        """Record a computed cell (atomic, digest embedded) with the code, the weights of
        its model and its family cache entry."""
        entry = self.entries.get(key)
        store.write_signed_json(self.cell_path(key), {
            "format": CELL_FORMAT, "variant": variant, "seed": seed, **self.code_record(key),
            **({"entry": entry} if entry else {}), "rows": rows}, indent=2)

    def notes(self, total: int) -> list[str]:
        """The lines saying how many of the ``total`` cells are computed again, and why
        (the attack and study runs' lines, :func:`~noisydeq.results.other_code_note`)."""
        flag = "--keep-other-code"
        lines = [other_weights_note(self.other_weights, total, self.cells, what="attack cells",
                                    flag=flag),
                 other_code_note(self.other_code, total, self.cells, what="attack cells",
                                 kept=self.keep_other_code, flag=flag,
                                 recorded="their code and weights")]
        if self.format_1:
            lines.append(f"note: {len(self.format_1)} of {total} attack cells in {self.cells} "
                         "counted robust samples by the attacked input only (cell format 1): "
                         f"they are computed again ({flag} keeps other code's cells of this "
                         "robust rule only)")
        return [line for line in lines if line]


def run_attacks(spec: LyapunovExperimentSpec, run: ExperimentDir, task: Any,
                log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every (variant, seed) cell of the attack table, resumed from the open (locked)
    ``run``'s ``attack/``: a cell other noisydeq code computed
    (:func:`~noisydeq.fingerprint.code_fingerprint`), or one written before cells recorded
    code and weights, is computed again unless ``run.keep_other_code``; one on other
    weights of its model (:func:`~noisydeq.store.init_hash`: a family trained again since
    into other weights) always; one line each says how many (:meth:`ExperimentDir.notes`).

    Which cells are served is known before any model is trained or loaded: a model's
    weights digest is read from its family cache entry (:func:`~noisydeq.families
    .cached_weights`, digest-checked); when that entry holds no model (the cache cleared)
    and the cell records the same entry, the cell is served on the weights it records — a
    cell is tied to the weights it was computed on (their digest is in it), so its numbers
    are that model's whatever a retraining would give. Only a model whose cell is computed
    is trained (or loaded) — as is one whose cell records another entry and whose entry
    holds none, to learn its weights (cells written before cells recorded their entry)."""
    from noisydeq.families import cached_weights, train_family
    from noisydeq.store import init_hash

    grid = spec.attack
    assert grid is not None
    x, y = task.x_test, task.y_test
    if grid.max_test_samples is not None:
        x, y = x[:grid.max_test_samples], y[:grid.max_test_samples]
    cells = [(v, s) for v in grid.variants for s in spec.seeds]
    members: dict[str, Any] = {}

    def member(variant: str, seed: int) -> Any:
        """The trained model of a cell (from the family cache: trained when missing); the
        family's line names kind, depth and width, the same for every variant."""
        key = f"{variant}-s{seed}"
        if key not in members:
            members[key] = train_family(
                spec.family_spec(seed, variant), task,
                log=lambda text: log(f"{variant} seed {seed}: {text}")).members[0]
            run.weights[key] = init_hash(members[key].model)
        return members[key]

    found: dict[str, list[dict[str, Any]]] = {}
    for variant, seed in cells:  # what the directory serves, before anything is computed
        key = f"{variant}-s{seed}"
        data = run.record(key, variant, seed)
        entry, weights = cached_weights(spec.family_spec(seed, variant), task, "lyadeq", 1)
        run.entries[key] = entry
        if weights is None and data is not None and data.get("entry") == entry \
                and isinstance(data.get("weights"), str):
            weights = data["weights"]  # no model cached: the cell's own, of this entry
        if weights is None:
            member(variant, seed)  # weights known only by training (or loading) it
        else:
            run.weights[key] = weights
        rows = run.load_cell(key, data)
        if rows is not None:
            found[key] = rows
    for line in run.notes(len(cells)):
        log(line)
    rows_out: list[dict[str, Any]] = []
    for variant, seed in cells:
        key = f"{variant}-s{seed}"
        cell = found.get(key)
        if cell is not None:
            log(f"attack {variant} seed {seed}: done before")
        else:
            m = member(variant, seed)
            t0 = time.perf_counter()
            base = {"variant": variant, "seed": seed, "params": m.params,
                    "train_seconds": m.result.seconds, "test_metric": m.result.test_metric,
                    **readout_stats(m.model, x[:grid.batch_size])}
            cell = [{**base, **r} for r in attack_cell(m.model, x, y, grid, seed)]
            run.save_cell(key, variant, seed, cell)
            log(f"attack {variant} seed {seed}: {time.perf_counter() - t0:.1f} s")
        rows_out.extend(cell)
    for line in attack_convergence_lines(rows_out, min(grid.batch_size, len(x)),
                                         str(run.path / "attack.csv")):
        log(line)
    return rows_out


def attack_convergence_lines(rows: list[dict[str, Any]], n: int,
                             table: str = "attack.csv") -> list[str]:
    """The attack table's convergence summary (:func:`noisydeq.convergence.report_lines`):
    one line per (variant, seed) whose clean solve (``converged_frac``, of the first batch
    of test samples, ``n`` of them; the table keeps no divergence count or residual) left
    samples short of the model's stop rule."""
    from noisydeq.convergence import Tally, report_lines

    tallies: dict[str, Tally] = {}
    for r in rows:  # one clean solve per (variant, seed), repeated on each attack row
        name = f"LyaDEQ {r['variant']} seed {r['seed']}"
        if name not in tallies:
            tallies[name] = t = Tally(name, unit="clean solves")
            conv = round(float(r["converged_frac"]) * n)
            t.add(n, (n - conv) / n, None)
    return report_lines(tallies.values(), "converged_frac (clean inputs, the first batch) "
                        f"and mean_steps in {table}")


# ------------------------------------------------------------------------ device table


def run_device(spec: LyapunovExperimentSpec, out: Path, task: Any, progress: bool,
               log: Callable[[str], None]) -> list[dict[str, Any]]:
    """One sweep per (device, group) into ``out/device``; rows tagged with ``model``."""
    from noisydeq.summary import convergence_lines
    from noisydeq.sweep import run_sweep

    grid = spec.device
    assert grid is not None
    rows: list[dict[str, Any]] = []
    rules: dict[str, str] = {}
    for device, groups in grid.groups.items():
        for group in groups:
            sspec = spec.sweep_spec(device, group)
            t0 = time.perf_counter()
            res = run_sweep(sspec, out / "device" / f"{device}-{group}", task=task,
                            progress=progress, plots=False, jobs=1, echo=log)
            log(f"device {device} {group}: {res.computed_cells} cells computed, "
                f"{res.skipped_cells} resumed, {time.perf_counter() - t0:.1f} s")
            rows.extend({**r, "model": group} for r in res.rows)
            rules.update({f"{mid} on {device}": r for mid, r in res.stop_rules.items()})
    for line in convergence_lines(rows, rules, key=lambda r: f"{r['model_id']} on {r['device']}",
                                  table=f"{out / 'device.csv'}"):
        log(line)
    return rows


# ------------------------------------------------------------------------ driver


def run_experiment(
    spec: LyapunovExperimentSpec, out: str | Path, *, only: str | None = None,
    progress: bool = True, log: Callable[[str], None] = print, keep_other_code: bool = False,
) -> dict[str, Any]:
    """Run (or resume) the experiment into ``out``; returns the report's paths and tables.
    ``keep_other_code``: serve the attack cells other noisydeq code computed
    (:func:`run_attacks`; the device sweeps' keys hold the code)."""
    from noisydeq.analysis.lyapunov_report import write_report
    from noisydeq.tasks import load_task

    out = Path(out)
    store.check_out_dir(out)
    if only not in (None, "attack", "device"):
        raise NoisyDEQError(f"--only: 'attack' or 'device', got '{only}'")
    text = dumps_toml(spec)
    _check_config(out / "config.toml", text)
    task = load_task(spec.task, data_dir=spec.data_dir, seed=spec.seeds[0])
    check_heads(spec, task, only)
    from noisydeq.runtime import read_only_cache

    if read_only_cache():  # every model, calibration and chip it needs, or one line
        check_read_only_cache(spec, out, task, only)
    with ExperimentDir(out) as run:
        run.open(text)
        run.keep_other_code = keep_other_code
        attack_rows: list[dict[str, Any]] = []
        device_rows: list[dict[str, Any]] = []
        if spec.attack is not None and only in (None, "attack"):
            attack_rows = run_attacks(spec, run, task, log)
            store.atomic_write_text(out / "attack.csv", _csv(attack_rows, ATTACK_CSV_ORDER))
        if spec.device is not None and only in (None, "device"):
            device_rows = run_device(spec, out, task, progress, log)
            store.atomic_write_text(out / "device.csv", _csv(device_rows))
        return write_report(spec, out, attack_rows, device_rows)


def check_heads(spec: LyapunovExperimentSpec, task: Any, only: str | None = None) -> None:
    """Every LyaDEQ variant the run trains can be built for ``task``: an orthogonal head
    (variants ``orthogonal`` and ``both``) needs the task's outputs <= ``hidden``, which the
    model refuses as it is built — after the run directory was made, whose config.toml then
    refused the corrected file ('holds another experiment'). One line, before anything."""
    variants = set()
    if spec.attack is not None and only in (None, "attack"):
        variants |= set(spec.attack.variants)
    if spec.device is not None and only in (None, "device"):
        variants |= {"both" if g == "lyadeq" else g.removeprefix("lyadeq-")
                     for groups in spec.device.groups.values() for g in groups
                     if g.startswith("lyadeq")}
    out_features = getattr(task, "out_features", None)
    for variant in sorted(variants):
        if (LyapunovSpec(variant=variant).uses_orthogonal and out_features is not None
                and out_features > spec.hidden):
            raise NoisyDEQError(
                f"lyapunov variant '{variant}': an orthogonal head needs the task's "
                f"{out_features} outputs <= hidden (Z^T Z = I), got hidden = {spec.hidden}; "
                f"set hidden >= {out_features}")


def check_read_only_cache(spec: LyapunovExperimentSpec, out: Path, task: Any,
                          only: str | None) -> None:
    """Refuse in one line, before the experiment directory is written, the first entry a
    read-only cache (:func:`noisydeq.runtime.read_only_cache`) lacks: the attack table's
    models (:func:`noisydeq.families.require_members`; each is needed, as a cell served
    from the directory may be computed again) and, per device sweep, what
    :func:`noisydeq.sweep.cached.check_read_only_sweep` needs (run as :func:`run_device`
    runs them: one process, the default thread plan)."""
    from noisydeq.families import require_members
    from noisydeq.runtime import resolve_torch_device, thread_plan
    from noisydeq.sweep.cached import check_read_only_sweep
    from noisydeq.sweep.hardware import Hardware

    if spec.attack is not None and only in (None, "attack"):
        require_members([spec.family_spec(s, v) for v in spec.attack.variants
                         for s in spec.seeds], task)
    if spec.device is None or only not in (None, "device"):
        return
    train_threads, eval_threads = thread_plan(None)  # run_sweep's, as run_device calls it
    for device, groups in spec.device.groups.items():
        for group in groups:
            sspec = spec.sweep_spec(device, group)
            check_read_only_sweep(sspec, out / "device" / f"{device}-{group}", task,
                                  Hardware(sspec), resolve_torch_device(sspec.torch_device),
                                  train_threads=train_threads, eval_threads=eval_threads,
                                  jobs=1, progress=False)


def _check_config(config: Path, text: str) -> None:
    """Refuse an output directory that holds another (or a damaged) experiment."""
    if not config.exists():
        return
    try:
        body = store.verify_text(store.read_text(config, "config.toml"), config)
    except NoisyDEQError as err:
        raise NoisyDEQError(f"--out {config.parent}: {err}; use another --out") from None
    if body != text:
        raise NoisyDEQError(f"{config.parent} holds another experiment (its config.toml "
                            "differs); use another --out")


def _csv(rows: list[dict[str, Any]], order: tuple[str, ...] = ()) -> str:
    """CSV of ``rows``: the columns of ``order`` first (in that order), then the others as
    they first appear."""
    import csv
    import io

    if not rows:
        return ""
    seen = list(dict.fromkeys(k for r in rows for k in r))
    keys = [k for k in order if k in seen] + [k for k in seen if k not in order]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.10g}" if isinstance(v, float) and math.isfinite(v) else v)
                    for k, v in r.items()})
    return buf.getvalue()
