"""Training of one model (:class:`TrainSpec`, paper Tables 1-2 and 5-6, App. E.1-E.2) and
its named presets."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from noisydeq import limits
from noisydeq.errors import NoisyDEQError
from noisydeq.specs.base import InfFloat, StrictModel, build, suggest_name
from noisydeq.specs.device import NoiseMode
from noisydeq.specs.noise import NoiseSpec, parse_snr_value
from noisydeq.specs.optimizer import (
    AdversarialSpec,
    IBPTrainSpec,
    OptimizerSpec,
    RandomStateSpec,
)
from noisydeq.specs.solver import (
    GradientSpec,
    JacobianRegSpec,
    SolverSpec,
    lyapunov_solver,
    paper_solver,
)

TRAIN_PRESETS = ("quick", "paper", "adversarial", "adversarial-quick")

#: DEQ test solver of the ``quick`` preset: unroll, threshold 40, Eq. 54 ``mean_rel`` 0.05 over
#: a window of 20. Eq. 54's noise floor falls as 1/w (docs/analysis.md): with w = 20 it lies
#: below 0.05 from about 5 dB signal SNR up (measured: every sample of a digits family
#: converges at 5 dB and above, and at 0 dB on the rram device), where the previous window of
#: 5 converged nowhere below 15 dB; noise-free it no longer stops after ~10 steps, the
#: early stop that made a regression DEQ's MSE worse at ∞ than at 15 dB.
QUICK_TEST_SOLVER = SolverSpec(name="unroll", max_iter=40, tol=0.05, stop="mean_rel", window=20)


#: the largest ``device_calibration`` step count
MAX_CALIBRATION_STEPS = 2**31
#: ``device_calibration = N``: every N ≥ 2 steps (1 is ``"step"``)
CalibrationSteps = Annotated[int, Field(ge=2, le=MAX_CALIBRATION_STEPS)]


def parse_calibration(v: Any) -> str | int | None:
    """A ``device_calibration`` value as the spec holds it: ``epoch`` (the default) → None,
    ``step`` or 1 → ``"step"``, a step count N ≥ 2 (an integer or its text) → N; anything
    else a ValueError (one line)."""
    if v is None or v == "epoch":
        return None
    n = v
    if isinstance(v, str) and v.strip().isdigit():
        n = int(v.strip())
    if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_CALIBRATION_STEPS:
        return "step" if n == 1 else n
    if v == "step":
        return "step"
    raise ValueError(f"want 'epoch', 'step' or a number of steps in 1..{MAX_CALIBRATION_STEPS}, "
                     f"got {v!r}")


def check_preset(name: str) -> str:
    """``name`` if it is a training preset, else a "did you mean" error (pydantic validators)."""
    if name not in TRAIN_PRESETS:
        raise ValueError(suggest_name("preset", name, TRAIN_PRESETS))
    return name


class TrainSpec(StrictModel):
    """Training of one model (issue 4; paper Tables 1-2, App. E.1-E.2).

    Adam (``lr``, ``weight_decay``) for ``epochs`` passes over the task's training set in
    mini-batches of ``batch_size`` shuffled by a generator seeded from ``seed``.
    ``noise``: training noise injected by the model (the paper trains with signal noise at
    0 dB, 10 dB or none, Eq. 3-4). ``device``: optional hardware model in the loop (preset
    name or TOML path), calibrated to ``device_snr_db`` (None = its native SNR): the model is
    deployed, trained through the device's noisy MVMs and its digital weights are saved;
    ``device_noise_mode`` (None = ``physical``) says which part of its noise that SNR sets,
    ``digital_layers`` names layers kept digital (e.g. ``["proj.U", "head"]``). A fresh
    chip is drawn every epoch (static noise seen as a distribution), read noise at every MVM
    (docs/devices.md, "Hardware-aware training"). ``device_adc_gain`` (photonic devices
    with a calibrated ADC gain): ``step`` (None) measures the ADC full scale with every
    step's weights, ``epoch`` once per epoch when its chip is deployed, then holds it.
    ``device_drift_alpha`` (rram devices with drift compensation): ``step`` (None)
    measures the global drift compensation's α with every step's programmed chip,
    ``epoch`` once per epoch's chip and noise scale, then holds it.
    ``device_programming`` (rram and photonic devices with programming noise): ``step``
    (None) programs the chip afresh with every step's weights, ``epoch`` programs it once
    per epoch's chip and noise scale and holds that programming's error (in units of
    max|W|) on every later step's weights (docs/devices.md, "Programming per epoch").
    ``device_calibration`` (with ``device_snr_db``): when the device's noise scale is
    calibrated to ``device_snr_db`` on the clean training activations — ``epoch`` (None)
    once per epoch's chip, with the weights of the epoch's start; ``step`` before every
    step, with that step's weights; an integer N every N steps (N = 1 is ``step``) — so
    that the realised SNR stays at the target while the weights change within an epoch
    (docs/devices.md, "Calibration per step").
    DEQ only: ``solver`` (training), ``test_solver`` (evaluation), ``gradient`` and
    ``jac_reg`` replace the model's own when set. ``max_train_samples``: use only the
    first N training samples. ``ibp``: interval-bound-propagation training
    (:class:`IBPTrainSpec`). ``spectral_cap`` (DEQ with the mlp or conv cell): after every
    optimiser step W is rescaled so that ‖W‖₂ ≤ spectral_cap
    (:func:`noisydeq.models.spectral_cap.cap_spectral_norm`); below 1 the cell is a
    contraction and its fixed point unique (None: no cap).
    ``lr_schedule``: ``constant``, or ``cosine`` — epoch e of E runs at
    lr·(1 + cos(πe/E))/2 (PyTorch's ``CosineAnnealingLR`` stepped per epoch with T_max = E).
    Presets: :meth:`TrainSpec.preset` (``quick``, ``paper``).
    """

    NO_REPEATS = frozenset({"digital_layers"})

    epochs: int = Field(default=6, ge=0, le=limits.MAX_EPOCHS)
    batch_size: int = Field(default=64, ge=1, le=limits.MAX_BATCH)
    lr: float = Field(default=1e-3, gt=0.0, le=1e3)
    weight_decay: float = Field(default=0.0, ge=0.0, le=1e3)
    seed: int = Field(default=0, ge=-limits.MAX_SEED, le=limits.MAX_SEED)
    noise: NoiseSpec = Field(default_factory=NoiseSpec)
    device: str | None = None
    device_snr_db: InfFloat | None = None
    device_noise_mode: NoiseMode | None = None
    device_adc_gain: Literal["step", "epoch"] | None = None
    device_drift_alpha: Literal["step", "epoch"] | None = None
    device_programming: Literal["step", "epoch"] | None = None
    device_calibration: Literal["step"] | CalibrationSteps | None = None
    digital_layers: list[str] | None = None
    solver: SolverSpec | None = None
    test_solver: SolverSpec | None = None
    gradient: GradientSpec | None = None
    jac_reg: JacobianRegSpec | None = None
    max_train_samples: int | None = Field(default=None, ge=1, le=limits.MAX_SAMPLES)
    ibp: IBPTrainSpec | None = None
    lr_schedule: Literal["constant", "cosine"] = "constant"
    adversarial: AdversarialSpec | None = None
    random_state: RandomStateSpec | None = None
    optimizer: OptimizerSpec | None = None
    spectral_cap: float | None = Field(default=None, gt=0.0, le=1e3)

    @field_validator("device_snr_db", mode="before")
    @classmethod
    def _device_snr(cls, v: Any) -> Any:
        return v if v is None else parse_snr_value(v)

    @field_validator("device_adc_gain", "device_drift_alpha", "device_programming")
    @classmethod
    def _adc_gain(cls, v: str | None) -> str | None:
        return None if v == "step" else v  # the default: the cache key of earlier models

    @field_validator("device_calibration", mode="before")
    @classmethod
    def _calibration(cls, v: Any) -> Any:
        return parse_calibration(v)

    @field_validator("digital_layers")
    @classmethod
    def _digital(cls, v: list[str] | None) -> list[str] | None:
        return None if not v else list(v)

    @model_validator(mode="after")
    def _device_options(self) -> TrainSpec:
        if self.device is None:
            for name in ("device_snr_db", "device_noise_mode", "device_adc_gain",
                         "device_drift_alpha", "device_programming", "device_calibration",
                         "digital_layers"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: set for a training device, but device is unset")
        elif self.device_calibration is not None and self.device_snr_db is None:
            raise ValueError("device_calibration: calibrates the device to device_snr_db; at "
                             "the native SNR (device_snr_db unset) nothing is calibrated")
        return self

    @model_validator(mode="after")
    def _cap_digital(self) -> TrainSpec:
        if self.spectral_cap is not None and self.device is not None:
            raise ValueError("spectral_cap: caps the digital cell's W after each step; "
                             "not with a training device")
        return self

    @model_validator(mode="after")
    def _ibp_clean(self) -> TrainSpec:
        if self.ibp is not None and self.noise.active:
            raise ValueError("ibp: interval-bound-propagation training runs the clean model; "
                             "set no training noise")
        return self

    @classmethod
    def preset(
        cls,
        name: str = "quick",
        kind: Literal["deq", "ffw", "mondeq", "ffw_relu", "lyadeq"] = "deq",
        noise: NoiseSpec | None = None,
        *,
        _names: dict[str, str] | None = None,
        **overrides: Any,
    ) -> TrainSpec:
        """A named training preset for a model ``kind``, with field ``overrides`` (an error
        calls a field by its ``_names`` entry: the option that set it, ``lr`` → ``--lr``, and
        an unknown preset by its entry ``preset``; underscored, as no field is, so that no
        override is taken for it).

        ``quick``: 6 epochs, batch 64; DEQ trained with a 30-step unroll (rel 1e-3) and the
        phantom gradient (5 damped steps, λ = 0.5, App. C), evaluated with :data:`QUICK_TEST_SOLVER`
        (unroll 40, ``mean_rel`` 0.05 over a window of 20: converges from about 5-10 dB up) —
        sized for the two-minute default sweep.
        ``paper``: Table 1 (DEQ: 30 epochs, batch 16, Jacobian regulariser weight 1.0 until
        epoch 55, unroll 60 with rel 1e-3 — or mean_rel 0.05 when training with noise —
        tested with unroll 60, mean_rel 0.05 over a window of 40: converges down to about
        0 dB) and Table 2 (FFW: 64 epochs, batch 16). Why these windows: the noise floor of
        Eq. 54 falls as 1/window (``docs/analysis.md``); the measurements behind the choice
        are in ``docs/reproduction.md``.
        ``lyadeq`` (Chu et al. 2024, training configurations): Adam at 1e-3 with a cosine
        annealed learning rate, Anderson acceleration (:func:`lyapunov_solver`) and the
        implicit (IFT) gradient, batch 64 (the paper gives none); ``paper``: 10 epochs (its
        MNIST setting), ``quick``: 6.
        ``adversarial``: Tables 5-6 (64 epochs, batch 32, Adam lr 1e-3 with AMSGrad,
        learning rate ×0.1 from epoch 45; DEQ: Broyden with threshold M = 8 forward, the
        phantom gradient K = 9, λ = 0.5 backward, App. C Eq. 55) with PGD-AT at ε = 0.3,
        step 0.1, 10 steps (:class:`AdversarialSpec`). ``adversarial-quick``: the same for a
        CPU: 8 epochs, learning rate ×0.1 from epoch 6, batch 64, ε ramped up linearly over
        the first 3 epochs. A ``lyadeq`` under them keeps its own solver and gradient.
        """
        if name not in TRAIN_PRESETS:
            called = (_names or {}).get("preset", "train preset")
            raise NoisyDEQError(f"{called}: {suggest_name('preset', name, TRAIN_PRESETS)}")
        noise = noise if noise is not None else NoiseSpec()
        data: dict[str, Any] = {"noise": noise, "lr": 1e-3, "weight_decay": 0.0}
        if name.startswith("adversarial"):
            data.update(_adversarial_preset(name, kind))
        elif kind == "lyadeq":
            data.update(epochs=6 if name == "quick" else 10, batch_size=64,
                        lr_schedule="cosine", solver=lyapunov_solver(),
                        test_solver=lyapunov_solver(), gradient=GradientSpec(name="ift"))
        elif name == "quick":
            data.update(epochs=6, batch_size=64)
            if kind == "deq":
                data.update(
                    solver=SolverSpec(name="unroll", max_iter=30, tol=1e-3, stop="rel",
                                      traces=False),
                    test_solver=QUICK_TEST_SOLVER.model_copy(),
                    gradient=GradientSpec(name="phantom", phantom_steps=5, phantom_lambda=0.5),
                )
        else:
            if kind == "deq":
                data.update(
                    epochs=30, batch_size=16,
                    solver=paper_solver(train=True, noisy=noise.active),
                    test_solver=paper_solver(train=False),
                    jac_reg=JacobianRegSpec(weight=1.0, stop_epoch=55),
                )
            else:
                data.update(epochs=64, batch_size=16)
        data.update(overrides)
        return build(cls, data, where=f"train preset '{name}'", names=_names)


def _adversarial_preset(name: str, kind: str) -> dict[str, Any]:
    """Fields of the ``adversarial`` (Tables 5-6) and ``adversarial-quick`` presets."""
    quick = name == "adversarial-quick"
    data: dict[str, Any] = {
        "epochs": 8 if quick else 64, "batch_size": 64 if quick else 32,
        "optimizer": OptimizerSpec(amsgrad=True, milestones=[6 if quick else 45], gamma=0.1),
        # 8 epochs at the full ε = 0.3 from a random start stay at chance accuracy (an
        # MLP FFW on mnist10k: 11 % after 8 epochs); the quick preset ramps ε over 3
        "adversarial": AdversarialSpec(warmup_epochs=3.0 if quick else 0.0),
    }
    if kind == "deq":
        # Table 5 "Solver (Train/Test) Broyden/Phantom, Threshold 8/9": forward Broyden with
        # M = 8 (the tolerance is not printed: 1e-3 rel), backward phantom K = 9, λ = 0.5
        broyden = SolverSpec(name="broyden", max_iter=8, tol=1e-3, stop="rel", window=1,
                             traces=False)
        data.update(solver=broyden, test_solver=broyden,
                    gradient=GradientSpec(name="phantom", phantom_steps=9, phantom_lambda=0.5))
    return data


#: TrainSpec fields only a DEQ uses (an FFW member's spec leaves them out)
DEQ_ONLY_TRAIN_FIELDS = ("solver", "test_solver", "gradient", "jac_reg", "random_state",
                         "spectral_cap")
