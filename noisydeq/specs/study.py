"""The strict spec of a study: models × test sets (problem sizes) × test noise × test solvers.

A *study* is the experiment shape the SNR sweep cannot express (paper App. D.4 / Fig. 18 and
Fig. 1e / Fig. 6): a few named models (any cell), each trained once per (seed, training SNR)
on one task, then evaluated on test sets at other problem sizes or input scales (the task's
``shifted`` sets), at several test SNRs, with several DEQ test solvers and — for DEQs on
inputs of growing size — the training iteration budget or one scaled with the size
(:class:`~noisydeq.models.budget.IterationBudget`).

An experiment file holds ``name``, ``title``, ``figures``, ``description``, a ``[study]``
table with the fields of :class:`StudySpec`, and ``[quick]`` / ``[full]`` tables overriding
some of them (a whole field at a time).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from noisydeq import limits
from noisydeq.specs.base import (
    InfFloat,
    Seed,
    StrictModel,
    build,
    build_layers,
    check_choice,
)
from noisydeq.specs.model import ModelSpec
from noisydeq.specs.noise import SNR_SCALES, NoiseSpec
from noisydeq.specs.solver import SolverSpec
from noisydeq.specs.training import TrainSpec
from noisydeq.specs.variant_file import Variant, VariantFile

Budget = Literal["train", "scaled"]
#: the model kinds a study trains
STUDY_KINDS = ("deq", "ffw")


class BudgetSpec(StrictModel):
    """Test iterations ∝ (size / training size)^``exponent``, at most ``cap``."""

    exponent: float = Field(default=1.0, ge=0.0, le=10.0)
    cap: int | None = Field(default=None, ge=1, le=limits.MAX_ITER)


class StudyModel(StrictModel):
    """One named model of a study: :class:`ModelSpec` fields (the task gives in/out sizes)
    plus ``train``: :class:`TrainSpec` overrides for this model only."""

    kind: Literal["deq", "ffw"] = "deq"
    model: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, v: Any) -> Any:
        """One kind, a string; a list (as a sweep's ``kinds``) or an unknown name is one line
        saying so (pydantic said ``kind: Input should be 'deq' or 'ffw'``)."""
        if isinstance(v, (list, tuple)):
            raise ValueError(f"one model kind per model, 'deq' or 'ffw' (got the list "
                             f"{list(v)}); each model of a study is its own "
                             "[study.models.NAME] table")
        return check_choice(v if isinstance(v, str) else str(v), STUDY_KINDS, "model kind")

    @model_validator(mode="before")
    @classmethod
    def _split(cls, data: Any) -> Any:
        """Accept the ModelSpec fields flat: ``{kind = "deq", cell = "conv1d", width = 6}``."""
        if not isinstance(data, dict):
            return data
        own = {k: data[k] for k in ("kind", "model", "train") if k in data}
        rest = {k: v for k, v in data.items() if k not in own}
        own["model"] = {**own.get("model", {}), **rest}
        return own

    @model_validator(mode="after")
    def _fields(self) -> StudyModel:
        """The model fields are checked here, at the model's own location (the user writes
        them flat, ``models.NAME.width``, not under ``model``)."""
        reserved = [k for k in ("in_features", "out_features") if k in self.model]
        if reserved:
            raise ValueError(f"'{reserved[0]}' comes from the task")
        build(ModelSpec, {"in_features": 1, "out_features": 1, **self.model})
        return self



class StudySpec(StrictModel):
    """Train named models on ``task``, evaluate them over sizes × test SNRs × test solvers.

    ``task_options``: the generator arguments of an algorithmic task (``n_train``,
    ``n_test``, ``length`` / ``size`` / ``scale``). ``shifts``: the test sizes (lengths,
    maze sizes, entry scales); empty = the held-out split at the training size only.
    ``n_shift``: samples per shifted test set (default ``n_test``). ``train``:
    :class:`TrainSpec` overrides for every model (on top of the ``quick`` preset of its
    kind). ``noise_site``: where training and test noise go (``state`` = z, App. D.4);
    ``snr_scale``: how their SNRs are read (``realised`` or ``paper``, as for sweeps).
    ``test_snr_db``: test SNRs; with ``paired`` only the one equal to the model's training
    SNR (the paper's trained-and-tested-at protocol). ``test_solvers``: named DEQ test
    solvers (empty: the model's own). ``budget`` / ``budgets``: evaluate DEQs with the
    training iteration cap and/or one scaled with the size. ``fixed_snr_db``: the test SNR
    of the metric-vs-parameters figure (Fig. 1e).
    """

    NO_REPEATS = frozenset({"shifts", "train_snr_db", "test_snr_db", "budgets", "seeds"})

    task: str
    task_options: dict[str, Any] = Field(default_factory=dict)
    data_dir: str | None = None
    shifts: list[float] = Field(default_factory=list, max_length=limits.MAX_SNR_LEVELS)
    n_shift: int | None = Field(default=None, ge=1, le=limits.MAX_SAMPLES)
    models: dict[str, StudyModel]
    train: dict[str, Any] = Field(default_factory=dict)
    train_snr_db: list[InfFloat] = Field(default_factory=lambda: [math.inf])
    noise_site: Literal["state", "signal", "input"] = "state"
    snr_scale: str = "realised"
    test_snr_db: list[InfFloat] = Field(default_factory=lambda: [math.inf])
    paired: bool = False
    test_solvers: dict[str, SolverSpec] = Field(default_factory=dict)
    budget: BudgetSpec | None = None
    budgets: list[Budget] = Field(default_factory=lambda: ["train"])
    fixed_snr_db: InfFloat | None = None
    seeds: list[Seed] = Field(default_factory=lambda: [0], max_length=limits.MAX_SEEDS)
    torch_device: str = "cpu"
    eval_batch: int = Field(default=256, ge=1, le=limits.MAX_BATCH)

    @field_validator("snr_scale")
    @classmethod
    def _scale(cls, v: Any) -> str:
        return check_choice(v, SNR_SCALES)

    @field_validator("seeds")
    @classmethod
    def _seed_range(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if abs(s) > limits.MAX_SEED]
        if bad:
            raise ValueError(f"seeds must be within ±{limits.MAX_SEED}, got {bad[0]}")
        return v

    @field_validator("train_snr_db", "test_snr_db", mode="before")
    @classmethod
    def _grid(cls, v: Any) -> list[float]:
        from noisydeq.specs.noise import snr_list

        return snr_list(v)

    @field_validator("fixed_snr_db", mode="before")
    @classmethod
    def _one(cls, v: Any) -> float | None:
        from noisydeq.specs.noise import parse_snr_value

        return None if v is None else parse_snr_value(v)

    @field_validator("models")
    @classmethod
    def _some(cls, v: dict[str, StudyModel]) -> dict[str, StudyModel]:
        if not v:
            raise ValueError("a study needs at least one model")
        for name in v:
            if not name or any(c in name for c in "/\\ |"):
                raise ValueError(f"model name '{name}' must be a plain word (no / \\ | space)")
        return v

    @field_validator("seeds", "budgets")
    @classmethod
    def _non_empty(cls, v: list, info: Any) -> list:
        if not v:
            raise ValueError(f"{info.field_name} must not be empty")
        return v

    @field_validator("train")
    @classmethod
    def _train(cls, v: dict[str, Any]) -> dict[str, Any]:
        build(TrainSpec, v)  # pydantic prefixes the field name
        return v

    @model_validator(mode="after")
    def _consistent(self) -> StudySpec:
        if "scaled" in self.budgets and self.budget is None:
            raise ValueError("budgets: 'scaled' needs a budget = {exponent = …, cap = …} table")
        for name, m in self.models.items():
            build(TrainSpec, {**self.train, **m.train}, where=f"models.{name}.train")
        if self.fixed_snr_db is not None and self.fixed_snr_db not in self.test_snr_db:
            raise ValueError(f"fixed_snr_db {self.fixed_snr_db:g} is not in test_snr_db")
        return self

    def noise(self, snr_db: float) -> NoiseSpec:
        """Multiplicative noise at ``noise_site`` and ``snr_db`` (none at ``inf``)."""
        if math.isinf(snr_db):
            return NoiseSpec()
        return NoiseSpec(site=self.noise_site, kind="multiplicative", snr_db=snr_db,
                         snr_scale=self.snr_scale)

    def train_spec(self, name: str, seed: int, train_snr_db: float) -> TrainSpec:
        """The resolved :class:`TrainSpec` of model ``name`` (quick preset + overrides)."""
        m = self.models[name]
        over = {"seed": seed, **self.train, **m.train}
        return TrainSpec.preset("quick", m.kind, self.noise(train_snr_db), **over)

    def test_snrs(self, train_snr_db: float) -> list[float]:
        """The test SNRs a model trained at ``train_snr_db`` is evaluated at."""
        if self.paired:
            return [train_snr_db]
        return list(self.test_snr_db)


class StudyFile(VariantFile):
    """An experiment file for ``noisydeq study``: a base study plus ``quick``/``full``."""

    study: dict[str, Any]

    def resolve(self, variant: Variant, sets: dict[str, Any] | None = None) -> StudySpec:
        """The :class:`StudySpec` of ``variant`` (base table + its overrides + ``sets``)."""
        return build_layers(StudySpec, [("[study]", self.study),
                                        (f"[{variant}]", self.overrides(variant)),
                                        (f"[{variant}] --set", sets or {})],
                            where=f"[{variant}]")
