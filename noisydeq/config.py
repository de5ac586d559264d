"""Typed, strict configuration: the public face of :mod:`noisydeq.specs`.

Every spec is a pydantic model with ``extra="forbid"``: a misspelt key is an error that
names the field and suggests the closest valid one; TOML load/dump round-trips exactly;
SNR ranges (``0:30``, ``0:30:2``, ``0,10,20,inf``) share one grammar with the command line.

The specs live by domain in :mod:`noisydeq.specs` (``base``: the strict base, one-line
errors, choices; ``toml``; ``noise``: SNR grammar and :class:`NoiseSpec`; ``solver``;
``model``; ``cell``; ``device``; ``optimizer``; ``training``; ``family``; ``sweep``;
``experiment``), and the package's own modules import them from there. This module keeps
every name it has always offered, so ``from noisydeq.config import ModelSpec, NoiseSpec``
(the README's Python API) and users' code keep working; it defines nothing itself.
"""

from __future__ import annotations

from noisydeq.specs.base import (
    InfFloat,
    M,
    StrictModel,
    build,
    check_choice,
    coerce,
    format_validation_error,
    suggest_name,
)
from noisydeq.specs.cell import CELL_OPTIONS, CellSpec, check_cell
from noisydeq.specs.device import CALIBRATIONS, DIGITAL_TRAINING, NOISE_MODES
from noisydeq.specs.experiment import NAME_PATTERN, ExperimentSpec
from noisydeq.specs.family import FamilyChoices, FamilySpec, check_lyapunov_members, parse_depths
from noisydeq.specs.model import (
    FFW_FORMS,
    LYAPUNOV_VARIANTS,
    MONOTONE_KINDS,
    LyapunovSpec,
    ModelSpec,
    MonotoneSpec,
)
from noisydeq.specs.noise import (
    SNR_SCALES,
    NoiseSpec,
    SNRValue,
    parse_snr_range,
    parse_snr_value,
    snr_list,
)
from noisydeq.specs.optimizer import (
    ADVERSARIAL_METHODS,
    AdversarialSpec,
    IBPTrainSpec,
    OptimizerSpec,
    RandomStateSpec,
    check_radius,
)
from noisydeq.specs.solver import (
    GradientSpec,
    JacobianRegSpec,
    SolverSpec,
    lyapunov_solver,
    paper_solver,
)
from noisydeq.specs.sweep import SweepSpec
from noisydeq.specs.toml import (
    dump_toml,
    dumps_toml,
    load_toml,
    loads_toml,
    parse_assignments,
    parse_toml,
    tomllib,
)
from noisydeq.specs.training import (
    DEQ_ONLY_TRAIN_FIELDS,
    QUICK_TEST_SOLVER,
    TRAIN_PRESETS,
    TrainSpec,
    check_preset,
)

__all__ = [
    "ADVERSARIAL_METHODS", "CALIBRATIONS", "CELL_OPTIONS", "DEQ_ONLY_TRAIN_FIELDS",
    "DIGITAL_TRAINING", "FFW_FORMS", "LYAPUNOV_VARIANTS", "MONOTONE_KINDS", "NAME_PATTERN",
    "NOISE_MODES", "QUICK_TEST_SOLVER", "SNR_SCALES", "TRAIN_PRESETS",
    "AdversarialSpec", "CellSpec", "ExperimentSpec", "FamilyChoices", "FamilySpec",
    "GradientSpec", "IBPTrainSpec", "InfFloat", "JacobianRegSpec", "LyapunovSpec", "M",
    "ModelSpec", "MonotoneSpec", "NoiseSpec", "OptimizerSpec", "RandomStateSpec", "SNRValue",
    "SolverSpec", "StrictModel", "SweepSpec", "TrainSpec",
    "build", "check_cell", "check_choice", "check_lyapunov_members", "check_preset",
    "check_radius", "coerce", "dump_toml", "dumps_toml", "format_validation_error",
    "load_toml", "loads_toml", "lyapunov_solver", "paper_solver", "parse_assignments",
    "parse_depths", "parse_snr_range", "parse_snr_value", "parse_toml", "snr_list",
    "suggest_name", "tomllib",
]
