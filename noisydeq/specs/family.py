"""A depth-matched family of DEQs and FFWs (:class:`FamilySpec`) and the choices a family
and a sweep share (:class:`FamilyChoices`)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from noisydeq import limits
from noisydeq.specs.base import InfFloat, StrictModel, check_choice, parse_comma_list
from noisydeq.specs.cell import CellSpec, check_cell
from noisydeq.specs.model import FfwForm, LyapunovSpec, MonotoneSpec
from noisydeq.specs.noise import NoiseSpec, SnrScale, parse_snr_value
from noisydeq.specs.training import DEQ_ONLY_TRAIN_FIELDS, TrainSpec, check_preset

#: the model kinds a family (and a sweep) may hold
MODEL_KINDS = ("deq", "ffw", "mondeq", "ffw_relu", "lyadeq")


def check_kinds(v: Any, allowed: tuple[str, ...] = MODEL_KINDS) -> Any:
    """A list of model kinds, each one of ``allowed``: a bad one is one line naming it, a
    "did you mean" and the allowed kinds (pydantic said ``kinds.1: Input should be …``);
    one kind written without its list (``kinds = "deq"``) says how to write it (pydantic
    said ``kinds: Input should be a valid list``)."""
    if not isinstance(v, (list, tuple)):
        example = f'["{v}"]' if isinstance(v, str) and v in allowed else '["deq", "ffw"]'
        raise ValueError(f"a list of model kinds, e.g. kinds = {example} (got {v!r})")
    for k in v:
        check_choice(k if isinstance(k, str) else str(k), allowed, "model kind")
    return v


def parse_depths(v: Any) -> list[int]:
    """FFW depths of a family or sweep: a list, one integer or a comma string (``1,3,5,7``),
    each a positive integer up to ``limits.MAX_DEPTH``, each once; sorted."""
    out = parse_comma_list(
        v, _depth, "depths must be a non-empty list of positive integers, e.g. 1,3,5,7",
        scalars=(int,))
    if len(out) > limits.MAX_SEEDS:
        raise ValueError(f"{len(out)} depths; at most {limits.MAX_SEEDS}")
    return out


def _depth(d: Any) -> int:
    """One depth: a positive integer (``3``, ``"3"``, ``3.0``) up to ``limits.MAX_DEPTH``."""
    try:
        ok = not isinstance(d, bool) and float(d) == int(float(d)) and int(float(d)) >= 1
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"depth '{d}' is not a positive integer (e.g. 1,3,5,7)")
    if int(float(d)) > limits.MAX_DEPTH:
        raise ValueError(f"depth {int(float(d))} is above the largest allowed, "
                         f"{limits.MAX_DEPTH}")
    return int(float(d))


def check_lyapunov_members(lyapunov: LyapunovSpec | None, kinds: list[str]) -> None:
    """Lyapunov settings only where a ``lyadeq`` member takes them (else a no-op: an error)."""
    if lyapunov is not None and "lyadeq" not in kinds:
        raise ValueError("lyapunov: settings given but 'lyadeq' is not in kinds")


class FamilyChoices(StrictModel):
    """What a sweep and a family share: the FFW layer form, the SNR scale, the task and the
    members' depths, kinds and hidden size (declared here first, so both keep their field
    order and dumps), and the checks of the member fields both have (depths, cell, preset,
    Lyapunov settings).

    ``ffw_form`` (:data:`FFW_FORMS`; ``None`` = the default ``eq57x``) is refused when
    ``kinds`` has no ``ffw`` member; ``snr_scale`` (:data:`SNR_SCALES`) is how model-noise
    SNRs are read (:class:`NoiseSpec`).
    """

    NO_REPEATS = frozenset({"depths", "kinds"})

    ffw_form: FfwForm | None = None
    snr_scale: SnrScale = "realised"
    task: str = "digits"
    data_dir: str | None = None
    depths: list[int] = Field(default_factory=lambda: [1, 3, 5, 7])
    kinds: list[Literal["deq", "ffw", "mondeq", "ffw_relu", "lyadeq"]] = Field(
        default_factory=lambda: ["deq", "ffw"])
    hidden: int = Field(default=128, ge=1, le=limits.MAX_WIDTH)

    @model_validator(mode="after")
    def _form_needs_ffw(self) -> FamilyChoices:
        kinds = list(self.kinds)
        if self.ffw_form is not None and "ffw" not in kinds:
            raise ValueError(
                f"ffw_form '{self.ffw_form}' is given but kinds {kinds} has no 'ffw' member "
                "(drop ffw_form or add 'ffw' to kinds)"
            )
        return self

    # the members' fields a family and a sweep both declare (``depths``, ``cell``,
    # ``train_preset``, ``lyapunov``/``kinds``) are checked once, here
    @model_validator(mode="after")
    def _lyapunov_members(self) -> FamilyChoices:
        check_lyapunov_members(getattr(self, "lyapunov", None), list(self.kinds))
        return self

    @field_validator("depths", mode="before")
    @classmethod
    def _depths(cls, v: Any) -> list[int]:
        return parse_depths(v)

    @field_validator("kinds", mode="before")
    @classmethod
    def _kinds(cls, v: Any) -> Any:
        return check_kinds(v)

    @field_validator("cell", check_fields=False)
    @classmethod
    def _cell(cls, v: CellSpec, info: Any) -> CellSpec:
        return check_cell(v, info)

    @field_validator("train_preset", check_fields=False)
    @classmethod
    def _preset(cls, v: str) -> str:
        return check_preset(v)


class FamilySpec(FamilyChoices):
    """A depth-matched family: FFW(depth, ``hidden``) and DEQ(matched_width(depth)) per depth.

    Both kinds share the input projection (``input_act``) and output head shapes of the task
    (App. E.1). Each member is trained with ``train_preset`` for its kind plus ``train``
    overrides, with training noise at ``train_site`` / ``train_snr_db`` (``inf`` = none) and
    the optional hardware ``device`` in the loop; ``seed`` seeds weights, data order and noise;
    ``data_seed`` draws the task's train/test split (independent of ``seed``: the members of
    every seed of a sweep see one split).
    ``monotone``: options of ``mondeq`` / ``ffw_relu`` members (:class:`MonotoneSpec`).
    ``ffw_form`` (:class:`FamilyChoices`) enters the FFW members' specs only, so a family's
    DEQs do not depend on it; ``snr_scale`` is the SNR scale of the training noise.
    A ``lyadeq`` member (``lyapunov`` settings) has ``hidden`` units at every depth; its FFW
    counterpart is the family's FFW of that depth. ``cell`` (:class:`CellSpec`): ``mlp``
    (Eq. 57), ``conv`` (App. E.3: ``hidden`` channels, 3×3 kernels, weight-normalised, one
    square input channel) or a cell beyond Eq. 57, with its options.
    """

    cell: CellSpec = Field(default_factory=CellSpec)
    input_act: Literal["relu", "silu", "identity"] = "relu"
    seed: int = Field(default=0, ge=-limits.MAX_SEED, le=limits.MAX_SEED)
    data_seed: int = Field(default=0, ge=0, le=limits.MAX_SEED)
    train_preset: str = "quick"
    train: dict[str, Any] = Field(default_factory=dict)
    train_snr_db: InfFloat = math.inf
    train_site: Literal["signal", "state", "input"] = "signal"
    device: str | None = None
    monotone: MonotoneSpec | None = None
    lyapunov: LyapunovSpec | None = None

    @field_validator("train_snr_db", mode="before")
    @classmethod
    def _snr(cls, v: Any) -> float:
        return parse_snr_value(v)

    def noise(self) -> NoiseSpec:
        """The training noise: multiplicative at ``train_site`` / ``train_snr_db``, or none."""
        if math.isinf(self.train_snr_db):
            return NoiseSpec()
        return NoiseSpec(site=self.train_site, kind="multiplicative", snr_db=self.train_snr_db,
                         snr_scale=self.snr_scale)

    def train_spec(self, kind: Literal["deq", "ffw", "mondeq", "ffw_relu", "lyadeq"]) -> TrainSpec:
        """The resolved :class:`TrainSpec` of a member of ``kind``.

        DEQ-only overrides in ``train`` (:data:`DEQ_ONLY_TRAIN_FIELDS`) are left out of an
        FFW's spec: they do not change its weights, so they do not change its cache key.
        """
        over = {"seed": self.seed, **self.train}
        if kind == "ffw":
            over = {k: v for k, v in over.items() if k not in DEQ_ONLY_TRAIN_FIELDS}
        if self.device is not None:
            over.setdefault("device", self.device)
        return TrainSpec.preset(self.train_preset, kind, self.noise(), **over)
