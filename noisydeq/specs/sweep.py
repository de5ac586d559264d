"""A sweep: trained families × inference SNR grid × chip instances (:class:`SweepSpec`)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from noisydeq import limits
from noisydeq.errors import NoisyDEQError
from noisydeq.specs.base import InfFloat
from noisydeq.specs.cell import CellSpec
from noisydeq.specs.device import DIGITAL_TRAINING, Calibration, NoiseMode
from noisydeq.specs.device_presets import load_spec
from noisydeq.specs.family import FamilyChoices
from noisydeq.specs.model import LyapunovSpec, MonotoneSpec
from noisydeq.specs.noise import NATIVE, parse_snr_range, snr_list, split_native
from noisydeq.specs.solver import SolverSpec
from noisydeq.specs.training import CalibrationSteps, parse_calibration

#: the native level inside the package (its cell key and seeds write it ``native``): nan,
#: which no SNR grid holds (:func:`~noisydeq.specs.noise.parse_snr_value` refuses it)
NATIVE_LEVEL = math.nan


def is_native(level: float) -> bool:
    """Whether ``level`` is :data:`NATIVE_LEVEL`."""
    return math.isnan(level)


class SweepSpec(FamilyChoices):
    """A sweep: trained model families × inference SNR grid × chip instances (issue 4).

    ``noise_site = "device"`` sweeps the SNR of the hardware model (``device`` calibrated to
    each SNR); ``signal`` / ``state`` / ``input`` sweep the paper's multiplicative model noise
    (Eq. 3-4) at that site while the weights run on ``device`` (usually ``ideal``).
    ``noise_mode`` (device noise): which part of the device's noise the swept SNR sets —
    ``physical`` (default: the total SNR; below each layer's native SNR only dynamic noise
    grows, above it both parts shrink together), ``dynamic`` (the dynamic SNR; static noise
    at its physical level), ``static`` (the static SNR; reads at their physical level) or
    ``both`` (the total SNR, one scale on every source); docs/devices.md. ``calibration``:
    ``network`` (default) calibrates every layer on the inputs it sees in the noisy network,
    ``clean`` on the clean activations.
    ``seeds`` and ``train_snr_db`` are grids too: one family is trained per (seed, train SNR).
    ``data_seed`` draws the data split (mnist10k, digits, generated tasks) for every seed, so
    ``seeds = [2]`` trains on the split of member 2 of ``seeds = [0, 1, 2]`` (before it was a
    field, the first seed drew the split: a run directory recorded without it is read with
    ``data_seed`` = its first seed, :func:`noisydeq.results.read_recorded_spec`).
    ``kinds`` may also hold the certified-robustness kinds ``mondeq`` / ``ffw_relu``, whose
    options are ``monotone`` (:class:`MonotoneSpec`).
    ``ffw_form`` and ``snr_scale`` (:class:`FamilyChoices`): the FFW layer form, and how the
    model-noise SNRs (swept and training) are read — ``realised`` (realised SNR = nominal at
    every width) or ``paper`` (Eq. 4 literally, nominal − 10·log10(width)); model noise only
    (a device calibrates to the realised SNR of its MVMs). ``test_solver``: the DEQs'
    evaluation solver in place of the preset's (e.g. the paper preset's window-40 solver for
    quick-trained models swept down to 0 dB).
    ``lyapunov``: settings of the ``lyadeq`` members (:class:`LyapunovSpec`; needs
    ``"lyadeq"`` in ``kinds``). ``cell``: the members' cell and its options
    (:class:`CellSpec`, e.g. ``"conv"`` or ``{name = "conv1d", weight_norm = false}``; a
    per-position task needs ``conv1d`` or ``residual``).
    ``train_device`` / ``train_device_snr_db`` / ``train_noise_mode`` / ``train_adc_gain``:
    hardware-aware training (:class:`TrainSpec` ``device*``; ``train_adc_gain = "epoch"``
    applies to the training devices that measure an ADC gain, e.g. ``photonic``;
    ``train_drift_alpha = "epoch"`` to those with a drift compensation, e.g. ``rram``;
    ``train_programming = "epoch"`` to those with programming noise, ``rram`` and
    ``photonic``; ``train_calibration`` is every training device's ``device_calibration``:
    ``epoch``, ``step`` or a step count N, with a ``train_device_snr_db`` grid).
    ``snr_db`` may hold ``"native"`` (``--snr 0:30,native``; device noise only): one more
    level, the device at its own physical knobs — the preset's programming (static) and
    read (dynamic) noise, no SNR scaling, the same in every noise mode — on the same chips,
    seeds and test rows as the other levels. It is kept in :attr:`snr_native` (``snr_db``
    holds the numbers) and written back into ``snr_db`` when the spec is serialised, so a
    spec without it keeps its identity. Its rows (:mod:`noisydeq.sweep`) carry the
    device's native SNR of the swept part as ``snr_db`` and ``native = True``.
    """

    NO_REPEATS = FamilyChoices.NO_REPEATS | frozenset({
        "seeds", "train_snr_db", "snr_db", "fixed_snr_db", "train_device",
        "train_device_snr_db", "digital_layers"})

    input_act: Literal["relu", "silu", "identity"] = "relu"
    train_snr_db: list[InfFloat] = Field(default_factory=lambda: [math.inf])
    train_site: Literal["signal", "state", "input"] = "signal"
    train_preset: str = "quick"
    epochs: int | None = Field(default=None, ge=0, le=limits.MAX_EPOCHS)
    device: str = "rram"
    noise_site: Literal["device", "signal", "state", "input"] = "device"
    noise_mode: NoiseMode = "physical"
    calibration: Calibration = "network"
    snr_db: list[InfFloat] = Field(default_factory=lambda: parse_snr_range("0:30"))
    #: the grid holds the ``native`` level (``snr_db`` serialises it as its last item)
    snr_native: bool = False
    chips: int = Field(default=3, ge=1, le=limits.MAX_CHIPS)
    seeds: list[int] = Field(default_factory=lambda: [0])
    data_seed: int = Field(default=0, ge=0, le=limits.MAX_SEED)
    torch_device: str = "cpu"
    max_rows: int = Field(default=4096, ge=1, le=limits.MAX_ROWS)
    max_train_samples: int | None = Field(default=None, ge=1, le=limits.MAX_SAMPLES)
    max_test_samples: int | None = Field(default=None, ge=1, le=limits.MAX_SAMPLES)
    fixed_snr_db: list[InfFloat] = Field(default_factory=lambda: [0.0])
    batched: bool = True
    test_solver: SolverSpec | None = None
    monotone: MonotoneSpec | None = None
    lyapunov: LyapunovSpec | None = None
    cell: CellSpec = Field(default_factory=CellSpec)
    train_device: list[str] = Field(default_factory=list)
    train_device_snr_db: list[InfFloat] = Field(default_factory=list)
    train_noise_mode: NoiseMode = "physical"
    train_adc_gain: Literal["step", "epoch"] = "step"
    train_drift_alpha: Literal["step", "epoch"] = "step"
    train_programming: Literal["step", "epoch"] = "step"
    train_calibration: Literal["epoch", "step"] | CalibrationSteps = "epoch"
    digital_layers: list[str] = Field(default_factory=list)

    @field_validator("train_device", "digital_layers", mode="before")
    @classmethod
    def _names(cls, v: Any, info: Any) -> list[str]:
        if isinstance(v, str):
            v = [p.strip() for p in v.split(",") if p.strip()]
        if not isinstance(v, (list, tuple)) or not all(isinstance(p, str) and p for p in v):
            raise ValueError(f"{info.field_name} must be a list of names")
        if len(v) > limits.MAX_SEEDS:
            raise ValueError(f"{info.field_name}: {len(v)} entries; at most {limits.MAX_SEEDS}")
        return list(v)

    @field_validator("train_calibration", mode="before")
    @classmethod
    def _train_calibration(cls, v: Any) -> Any:
        return parse_calibration(v) or "epoch"

    @field_validator("train_device_snr_db", mode="before")
    @classmethod
    def _train_device_grid(cls, v: Any) -> list[float]:
        return [] if v in ([], (), None, "") else snr_list(v)

    @model_validator(mode="after")
    def _train_device_options(self) -> SweepSpec:
        hardware = [d for d in self.train_device if d != DIGITAL_TRAINING]
        if not hardware:
            for name, unset in (("train_device_snr_db", []), ("train_noise_mode", "physical"),
                                ("train_adc_gain", "step"), ("train_drift_alpha", "step"),
                                ("train_programming", "step"), ("train_calibration", "epoch")):
                if getattr(self, name) != unset:
                    raise ValueError(f"{name}: set for a training device, but none is "
                                     "given (--train-device, train_device)")
        elif self.train_calibration != "epoch" and not self.train_device_snr_db:
            raise ValueError("train_calibration: calibrates the training device to its SNR "
                             "(--train-device-snr, train_device_snr_db); at the native SNR "
                             "(none given) nothing is calibrated")
        return self

    def training_devices(self) -> list[tuple[str | None, float | None]]:
        """The (training device, its SNR) of each family of a seed and training SNR:
        ``[(None, None)]`` (digital training) unless ``train_device`` names devices —
        then one per device and ``train_device_snr_db`` level (None: the device's native
        SNR), and ``(None, None)`` for an entry ``none``."""
        if not self.train_device:
            return [(None, None)]
        levels: list[float | None] = list(self.train_device_snr_db) or [None]
        out: list[tuple[str | None, float | None]] = []
        for dev in self.train_device:
            if dev == DIGITAL_TRAINING:
                out.append((None, None))
            else:
                out += [(dev, lvl) for lvl in levels]
        return out

    def family_count(self) -> int:
        """How many families the sweep trains: one per seed, training SNR and
        :meth:`training_devices` entry (``families.sweep_family_specs`` yields them)."""
        return len(self.seeds) * len(self.train_snr_db) * len(self.training_devices())

    @model_validator(mode="before")
    @classmethod
    def _native_level(cls, data: Any) -> Any:
        """``"native"`` in ``snr_db`` (a list item or a ``--snr`` text item) sets
        :attr:`snr_native`; the numbers stay in ``snr_db`` (empty when it was all)."""
        if isinstance(data, dict) and "snr_db" in data:
            rest, native = split_native(data["snr_db"])
            if native:
                data = {**data, "snr_db": [] if rest is None else rest, "snr_native": True}
        return data

    @model_serializer(mode="wrap")
    def _omit_plain_cell(self, handler: Any) -> dict[str, Any]:
        # added later: the default cell is left out so earlier sweeps keep their identity
        data = handler(self)
        # the native level, added later: an item of snr_db, present only when asked for
        if data.pop("snr_native", False) and isinstance(data.get("snr_db"), list):
            data["snr_db"] = [*data["snr_db"], NATIVE]
        if data.get("cell") == "mlp":
            data.pop("cell")
        # hardware-aware training, added later: left out unset (earlier identities stay)
        for key, unset in (("train_device", []), ("train_device_snr_db", []),
                           ("train_noise_mode", "physical"), ("digital_layers", []),
                           ("train_adc_gain", "step"), ("train_drift_alpha", "step"),
                           ("train_programming", "step"), ("train_calibration", "epoch")):
            if key in data and data[key] == unset:
                data.pop(key)
        return data

    @field_validator("snr_db", "train_snr_db", "fixed_snr_db", mode="before")
    @classmethod
    def _grid(cls, v: Any, info: Any) -> list[float]:
        if info.field_name == "snr_db" and isinstance(v, (list, tuple)) and not v:
            return []  # the native level alone (checked by _native_needs_device)
        return snr_list(v)

    @model_validator(mode="after")
    def _native_needs_device(self) -> SweepSpec:
        if not self.snr_db and not self.snr_native:
            raise ValueError("snr_db must be a non-empty SNR grid such as '0:30' or "
                             "[0, 10, inf] (or 'native')")
        if self.snr_native and self.noise_site != "device":
            raise ValueError(
                f"snr_db 'native': the device at its own knobs is a level of device noise "
                f"(noise_site = 'device'); noise_site '{self.noise_site}' sweeps the "
                "paper's model noise, whose SNR has no native level")
        return self

    @model_validator(mode="after")
    def _scale_for_model_noise(self) -> SweepSpec:
        if self.snr_scale != "realised" and self.noise_site == "device":
            raise ValueError(
                f"snr_scale '{self.snr_scale}' applies to the paper's model noise; with "
                "noise_site 'device' the device is calibrated to the realised SNR of its "
                "MVMs (use noise_site signal, state or input)"
            )
        return self

    @field_validator("seeds", "kinds", "train_snr_db", mode="after")
    @classmethod
    def _non_empty(cls, v: list, info: Any) -> list:
        if not v:
            raise ValueError(f"{info.field_name} must not be empty")
        if len(v) > limits.MAX_SEEDS:
            raise ValueError(f"{info.field_name}: {len(v)} entries; at most {limits.MAX_SEEDS}")
        return v

    @model_validator(mode="after")
    def _mode_needs_device(self) -> SweepSpec:
        if self.noise_site != "device" and self.noise_mode in ("static", "both"):
            raise ValueError(
                f"noise_mode '{self.noise_mode}' sets part of a device's noise "
                f"(noise_site = 'device'); model noise at '{self.noise_site}' is dynamic"
            )
        return self

    @property
    def swept_mode(self) -> str:
        """The noise mode the results report: the device's, or ``dynamic`` for model noise
        (drawn at every evaluation)."""
        return self.noise_mode if self.noise_site == "device" else "dynamic"

    @field_validator("seeds", mode="after")
    @classmethod
    def _seed_range(cls, v: list[int]) -> list[int]:
        for s in v:
            if not 0 <= s <= limits.MAX_SEED:
                raise ValueError(f"seed {s} is outside 0..2^63-1")
        return v


def check_native_device(sweep: SweepSpec, kind: str) -> None:
    """Refuse (one line) the native level on a device of ``kind`` without noise knobs: the
    ideal device runs the digital weights, its native point is the ``inf`` level."""
    if sweep.snr_native and kind == "ideal":
        raise NoisyDEQError(f"--snr native: device '{sweep.device}' is ideal (no noise, no "
                            "knobs): its native point is the digital model, the level inf")


def check_device_presets(sweep: SweepSpec) -> None:
    """``sweep``'s device and each training device name a readable, valid preset (one line,
    torch-free: ``noisydeq sweep`` checks them before its heavy imports; the reachable SNRs
    are checked on the devices themselves later). The messages are those of the later
    checks (:class:`noisydeq.sweep.hardware.Hardware`,
    :func:`noisydeq.families.check_training_devices`)."""
    check_native_device(sweep, load_spec(sweep.device).kind)
    for dev, _ in sweep.training_devices():
        if dev is None:
            continue
        try:
            load_spec(dev)
        except NoisyDEQError as err:
            raise NoisyDEQError(f"train_device: {err}") from None


def adc_gain_lines(sweep: SweepSpec) -> list[str]:
    """What ``sweep``'s photonic devices do with their ADC gain, one line each (its printed
    summary; the tables have no column for it: one setting per device and sweep): the
    inference device's gain, and each photonic training device's, with how often a
    calibrated one is measured while the weights train (``train_adc_gain``)."""
    out = []
    spec = load_spec(sweep.device)
    if spec.kind == "photonic":
        out.append(f"device {sweep.device}: {spec.adc_text()}")
    for dev in dict.fromkeys(d for d, _ in sweep.training_devices() if d is not None):
        spec = load_spec(dev)
        if spec.kind != "photonic":
            continue
        when = ""
        if spec.adc_gain == "calibrated":
            when = ("; training measured it once per epoch's chip (train_adc_gain = epoch)"
                    if sweep.train_adc_gain == "epoch"
                    else "; training measured it with every step's weights")
        out.append(f"training device {dev}: {spec.adc_text()}{when}")
    return out
