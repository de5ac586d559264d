"""Typed settings of a certification run and of certify experiment files (torch-free:
``noisydeq certify`` checks them before its heavy imports; :mod:`noisydeq.certify.spec`
re-exports them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from noisydeq import limits
from noisydeq.errors import NoisyDEQError
from noisydeq.specs.base import Seed, StrictModel, build, build_layers, parse_comma_list
from noisydeq.specs.variant_file import Variant, VariantFile

#: the model kinds IBP certification takes (:func:`noisydeq.certify.checks.check_certifiable`):
#: a monotone ReLU DEQ and explicit networks; a tanh ``deq`` or a ``lyadeq`` has no
#: guaranteed interval fixed point (Theorem 3.1)
CERTIFIABLE_KINDS = ("mondeq", "ffw_relu", "ffw")
#: a ``table2`` experiment's family kinds when its ``[family]`` tables set none: Table 2's
#: pair (a family's own default, deq and ffw, holds a tanh DEQ, which certify refuses)
TABLE2_KINDS = ("mondeq", "ffw_relu")


def _eps_list(v: Any) -> list[float]:
    """ℓ∞ radii: a list, one number or a comma string (blank pieces dropped)."""
    return parse_comma_list(v, _eps, "must be a non-empty list of radii, e.g. 0.1,0.2,0.3,0.4",
                            skip_blank=True)


def _eps(e: Any) -> float:
    """One radius: a number in [0, 1] (an ℓ∞ radius on inputs in [0, 1]: the bounds clip the
    box to [0, 1], so any ε > 1 would certify what ε = 1 does under another name)."""
    try:
        f = float(e)
    except (TypeError, ValueError):
        raise ValueError(f"'{e}' is not a number") from None
    if not f >= 0:  # also NaN
        raise ValueError(f"ε must be ≥ 0, got {e}")
    if f > 1:
        raise ValueError(f"ε {e} is outside [0, 1] (an ℓ∞ radius on inputs in [0, 1]; ε = 1 "
                         "already covers every input)")
    return f


class CertifySpec(StrictModel):
    """What ``noisydeq certify`` computes for each model.

    ``eps``: ℓ∞ radii (input units, [0, 1] pixels). ``device``: optional envelope (an rram
    preset or ``ideal``): ``chip`` = a measured programmed chip, else the Wan-2022 model
    envelope at chip-level ``coverage`` (or a given ``k``); ``dynamic`` adds the per-read
    DAC/ADC and read-noise bound, the latter at ``read_k``·σ. ``n_test``: first N test
    samples (None = all). PGD: ``pgd_steps`` steps, ``pgd_restarts`` random starts.
    ``clip``: intersect the ε-box with the valid input range [0, 1].
    """

    NO_REPEATS = frozenset({"eps"})

    eps: list[float] = Field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4])
    device: str | None = None
    chip: int | None = Field(default=None, ge=0, le=limits.MAX_CHIPS)
    coverage: float | None = Field(default=0.99, gt=0.0, lt=1.0)
    k: float | None = Field(default=None, gt=0.0, le=1e3)
    dynamic: bool = False
    read_k: float | None = Field(default=None, gt=0.0, le=1e3)
    n_test: int | None = Field(default=None, ge=1, le=limits.MAX_SAMPLES)
    batch_size: int = Field(default=500, ge=1, le=limits.MAX_BATCH)
    pgd_steps: int = Field(default=20, ge=0, le=limits.MAX_ITER)
    pgd_restarts: int = Field(default=1, ge=1, le=1000)
    clip: bool = True
    seed: int = Field(default=0, ge=-limits.MAX_SEED, le=limits.MAX_SEED)

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, v: Any) -> list[float]:
        return _eps_list(v)


#: the CertifySpec fields that shape only a device envelope (besides ``device`` itself):
#: without a device they change nothing (only the digital weights are certified)
DEVICE_ONLY = ("chip", "coverage", "k", "dynamic", "read_k")
#: the CertifySpec fields that shape only the model envelope (Wan-2022, ``k`` from
#: ``coverage``): a measured chip's envelope (``chip``) ignores them
MODEL_ENVELOPE_ONLY = ("coverage", "k")
#: the CertifySpec fields that shape only the per-read (dynamic) bound: without ``dynamic``
#: the envelope is static and ignores them
DYNAMIC_ONLY = ("read_k",)


def check_device_options(spec: CertifySpec, names: dict[str, str] | None = None,
                         device: str = "device") -> None:
    """Refuse in one line the envelope settings of ``spec`` given without a device
    (:data:`DEVICE_ONLY` set — ``coverage`` given at all, the others on): they would change
    nothing. ``names``: a field's name as the user wrote it (``--k``, ``[certify] k``);
    ``device``: how the device is given there (``--device``). With a device, ``coverage``
    or ``k`` given beside ``chip`` is refused too (:data:`MODEL_ENVELOPE_ONLY`), and
    ``read_k`` without ``dynamic`` (:data:`DYNAMIC_ONLY`)."""
    def given(fields: tuple[str, ...]) -> list[str]:
        return [f for f in fields
                if f in spec.model_fields_set and getattr(spec, f) is not None
                and getattr(spec, f) is not False]  # chip 0 is a chip

    def what(fields: list[str]) -> tuple[str, str, str]:
        it, s = ("it", "s") if len(fields) == 1 else ("they", "")
        return ", ".join((names or {}).get(f, f) for f in fields), it, s

    if spec.device is not None:
        if spec.chip is not None and given(MODEL_ENVELOPE_ONLY):
            text, it, s = what(given(MODEL_ENVELOPE_ONLY))
            raise NoisyDEQError(
                f"{text} with {(names or {}).get('chip', 'chip')}: {it} shape{s} the model "
                f"envelope, and a measured chip's envelope is the chip's own error, with no "
                f"coverage or k ({it} would change nothing)")
        if given(DYNAMIC_ONLY) and not spec.dynamic:
            dynamic = (names or {}).get("dynamic", "dynamic")
            raise NoisyDEQError(
                f"{what(given(DYNAMIC_ONLY))[0]} needs {dynamic}: it bounds each read's "
                f"noise, which only {dynamic} adds to the envelope (it would change nothing)")
        return
    if given(DEVICE_ONLY):
        text, it, s = what(given(DEVICE_ONLY))
        raise NoisyDEQError(
            f"{text} need{s} {device}: {it} shape{s} a device's envelope, and without one "
            f"only the digital weights are certified ({it} would change nothing)")


class Fig2Spec(StrictModel):
    """Fig. 2 right: mean z̄_k − z̲_k of the interval iteration (A.1) of randomly initialised
    dense monDEQ and IBP-MonDEQ layers (``width`` units) on test inputs at radius ``eps``,
    forward–backward with step ``alpha``, ``n_iter`` iterations, ``n_test`` inputs."""

    NO_REPEATS = frozenset({"alpha", "seeds"})

    task: str = "mnist"
    data_dir: str | None = None
    width: int = Field(default=128, ge=1, le=limits.MAX_WIDTH)
    eps: float = Field(default=0.1, ge=0.0)
    alpha: list[float] = Field(default_factory=lambda: [0.1])
    m: float = Field(default=0.1, gt=0.0, lt=1.0)
    n_iter: int = Field(default=200, ge=1, le=limits.MAX_ITER)
    n_test: int = Field(default=1000, ge=1, le=limits.MAX_SAMPLES)
    seeds: list[Seed] = Field(default_factory=lambda: [0])


class CertifyExperimentSpec(VariantFile):
    """A certify experiment file (``noisydeq/experiments/certify-*.toml``).

    ``kind = "table2"``: train the ``family`` (FamilySpec fields: task, hidden, kinds —
    default :data:`TABLE2_KINDS`, any outside :data:`CERTIFIABLE_KINDS` refused when the
    file loads, before training —, monotone, …) with IBP at each ``eps_train`` (Table 3),
    each monotone parameterisation of ``params`` and ``seeds`` — training settings in
    ``train`` (TrainSpec fields) and ``ibp`` (IBPTrainSpec fields but ``eps``) — then
    certify every model with ``certify``.
    ``kind = "fig2"``: the ``fig2`` study. ``quick`` / ``full`` override any of these
    sections (one level deep).
    """

    NO_REPEATS = frozenset({"eps_train", "params", "seeds"})

    kind: Literal["table2", "fig2"] = "table2"
    family: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    ibp: dict[str, Any] = Field(default_factory=dict)
    eps_train: list[float] = Field(default_factory=lambda: [0.2, 0.3, 0.4])
    params: list[Literal["ibp", "lben", "mon"]] = Field(default_factory=lambda: ["ibp"])
    seeds: list[Seed] = Field(default_factory=lambda: [0])
    certify: dict[str, Any] = Field(default_factory=dict)
    fig2: dict[str, Any] = Field(default_factory=dict)

    @field_validator("eps_train", mode="before")
    @classmethod
    def _eps(cls, v: Any) -> list[float]:
        return _eps_list(v)

    def resolve(self, variant: Variant) -> CertifyExperimentSpec:
        """This spec with ``variant``'s overrides merged in (sections one level deep); the
        result has no variants left."""
        data = self.model_dump()
        for key, value in self.overrides(variant).items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        data["quick"], data["full"] = {}, {}
        return build(CertifyExperimentSpec, data, where=f"[{variant}]")

    def section(self, variant: Variant, given: dict[str, Any] | None = None, *,
                names: dict[str, str] | None = None) -> CertifySpec | Fig2Spec:
        """The validated ``certify`` (Table 2) or ``fig2`` section of ``variant``: the base
        table, the variant's over it, ``given`` (the command line's settings) over both; an
        error names the table its key was written in (``[certify]``, ``[quick.certify]``,
        ``command line``) and a given key by its ``names`` entry (its option)."""
        over = self.overrides(variant)
        kind = over.get("kind", self.kind)
        part, model = ("certify", CertifySpec) if kind == "table2" else ("fig2", Fig2Spec)
        table = over.get(part, {})
        return build_layers(model, [(f"[{part}]", getattr(self, part)),
                                    (f"[{variant}.{part}]", table if isinstance(table, dict)
                                     else {}),
                                    ("command line", given or {})],
                            where=f"[{variant}.{part}]",
                            names={k: v for k, v in (names or {}).items() if k in (given or {})})

    def key_names(self, variant: Variant) -> dict[str, str]:
        """Each envelope setting of the ``certify`` section by the table that sets it in
        ``variant`` (``[quick.certify] k``, else ``[certify] k``), for
        :func:`check_device_options`."""
        table = self.overrides(variant).get("certify", {})
        return {f: f"[{variant}.certify] {f}" if isinstance(table, dict) and f in table
                else f"[certify] {f}" for f in DEVICE_ONLY}

    def check_variant(self, variant: Variant) -> None:
        """The variant's ``certify`` (Table 2) or ``fig2`` section is a valid spec, and the
        rest of the variant resolves."""
        over = self.overrides(variant)
        kind = over.get("kind", self.kind)
        part = "certify" if kind == "table2" else "fig2"
        if kind in ("table2", "fig2") and isinstance(over.get(part, {}), dict):
            spec = self.section(variant)  # before resolve: its error would name the variant
            if kind == "table2":  # an envelope setting without a device: by its table
                check_device_options(spec, self.key_names(variant), "a device (its key device)")
        if kind == "table2":
            self._check_training(variant)
        if self.quick or self.full:
            self.resolve(variant)  # validated: checks the resolved spec's members too
        elif kind == "table2":
            self._check_members()

    def _check_training(self, variant: Variant) -> None:
        """The ``family``, ``train`` and ``ibp`` tables of ``variant`` are valid, an error
        naming the table its key was written in (``[family]``, ``[quick.train]``, …; it
        named the experiment, ``certify-mnist family: …``, and came after the data
        loaded)."""
        from noisydeq.specs.family import FamilySpec
        from noisydeq.specs.optimizer import IBPTrainSpec
        from noisydeq.specs.training import TrainSpec

        over = self.overrides(variant)

        def layers(part: str) -> list[tuple[str, dict[str, Any]]]:
            table = over.get(part, {})
            return [(f"[{part}]", getattr(self, part)),
                    (f"[{variant}.{part}]", table if isinstance(table, dict) else {})]

        family = build_layers(FamilySpec, [(p, self.family_base(t)) if p == "[family]"
                                           else (p, t) for p, t in layers("family")],
                              where=f"[{variant}.family]")
        # refused here, not after the family trained (plan refused each model then)
        bad = [k for k in family.kinds if k not in CERTIFIABLE_KINDS]
        if bad:
            place = next((f"{p} kinds" for p, t in reversed(layers("family"))
                          if "kinds" in t), "[family] kinds")
            raise NoisyDEQError(
                f"{place}: certify needs monotone or explicit models "
                f"({', '.join(CERTIFIABLE_KINDS)}); {', '.join(map(repr, bad))} "
                f"{'has' if len(bad) == 1 else 'have'} no guaranteed interval fixed point "
                "(IBP certification, Theorem 3.1)")
        params = over.get("params", self.params)
        if family.cell.name == "conv" and "mondeq" in family.kinds and isinstance(
                params, list) and "mon" in params:
            raise NoisyDEQError(
                f"{'[' + variant + '] ' if 'params' in over else ''}params 'mon' with "
                "a convolutional cell: certify needs I − |W| ≻ 0, which cannot be checked "
                "for a convolution (without it the interval fixed point need not exist, "
                "Lemma 3.4); use 'ibp' or 'lben'")
        build_layers(TrainSpec, layers("train"), where=f"[{variant}.train]")
        eps_train = over.get("eps_train", self.eps_train)
        for eps in eps_train if isinstance(eps_train, list) else []:
            build_layers(IBPTrainSpec, [*layers("ibp"), ("eps_train", {"eps": eps})],
                         where=f"[{variant}.ibp]")

    def _check_members(self) -> None:
        """Every member's family (:meth:`member_family`) of this spec without variants is
        valid (what the tables do together: the one-table checks passed)."""
        from noisydeq.specs.family import FamilySpec

        base = build(FamilySpec, self.family_base(self.family)).model_dump()
        for seed in self.seeds:
            for eps in self.eps_train:
                for j, param in enumerate(self.params):
                    build(FamilySpec, self.member_family(base, seed, eps, j, param))

    def task(self) -> str:
        """The task this experiment reads: its ``fig2`` table's, or its family's."""
        if self.kind == "fig2":
            return self.fig2.get("task", Fig2Spec.model_fields["task"].default)
        from noisydeq.specs.family import FamilySpec

        return self.family.get("task", FamilySpec.model_fields["task"].default)

    @staticmethod
    def family_base(table: dict[str, Any]) -> dict[str, Any]:
        """A ``table2`` experiment's ``[family]`` ``table`` with its defaults: depth 1 and
        :data:`TABLE2_KINDS` where it sets none."""
        return {"depths": [1], "kinds": list(TABLE2_KINDS), **table}

    def member_family(self, base: dict[str, Any], seed: int, eps_train: float, j: int,
                      param: str) -> dict[str, Any]:
        """The family of one (seed, ε_train, ``params[j]``) of a resolved ``table2``
        experiment, over ``base`` (its validated ``family`` table): the explicit baseline
        trains with the first parameterisation only (it does not depend on the DEQ's)."""
        kinds = base["kinds"] if j == 0 else [k for k in base["kinds"] if k == "mondeq"]
        mono = {**(self.family.get("monotone") or {}), "param": param}
        return {**base, "seed": seed, "kinds": kinds, "monotone": mono,
                "train": {**self.train, "ibp": {**self.ibp, "eps": eps_train}}}
