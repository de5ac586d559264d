"""The typed attack grid of ``noisydeq attack`` (:class:`AttackRunSpec`, recorded in the run
directory's ``config.toml``; :mod:`noisydeq.attacks.grid` expands it into its points and
re-exports it). Torch-free, so the command checks every option of the grid before its
heavy imports."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from noisydeq import limits
from noisydeq.specs.attack import check_norm, expand_estimator, parse_defence
from noisydeq.specs.attack_names import attack_families
from noisydeq.specs.base import InfFloat, StrictModel
from noisydeq.specs.noise import snr_list

DEFAULT_ATTACKS = ["pgd-eps", "pgd-steps", "aa", "aa-rand", "speckle", "salt-pepper"]
MODES = ("digital", "device", "transfer")
#: most points of one strength grid (ε, σ, fractions, steps)
MAX_POINTS = 1000


def _floats(v: Any, name: str) -> list[float]:
    if isinstance(v, str):
        parts = [p.strip() for p in v.split(",")]
        if any(not p for p in parts) and v.strip():
            raise ValueError(f"'{v}' has an empty item")
        parts = [p for p in parts if p]
        out = []
        for p in parts:
            try:
                nums = [float(t) for t in p.split(":")]
                if len(nums) > 3:
                    raise ValueError
            except ValueError:
                raise ValueError(f"'{p}' is not a number or start:stop:step") from None
            if not all(math.isfinite(t) for t in nums):
                raise ValueError(f"'{p}': values must be finite numbers")
            if len(nums) > 1:  # start:stop[:step]
                a, b, *c = nums
                step = c[0] if c else 0.05
                if step <= 0:
                    raise ValueError(f"step must be > 0 in '{p}'")
                span = (b - a) / step
                if not math.isfinite(span) or span + 1 > MAX_POINTS:
                    raise ValueError(f"'{p}' has more than {MAX_POINTS} points, the most a "
                                     "grid holds")
                n = int(math.floor(span + 1e-9)) + 1
                out += [round(a + i * step, 10) for i in range(max(n, 0))]
            else:
                out.append(nums[0])
        v = out
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, (list, tuple)) or not v:
        raise ValueError(f"{name} must be a non-empty list of numbers, e.g. 0,0.1,0.2")
    if len(v) > MAX_POINTS:
        raise ValueError(f"{name}: {len(v)} points; a grid holds at most {MAX_POINTS}")
    try:
        if any(isinstance(x, bool) for x in v):
            raise TypeError("a boolean is not a number")
        return [float(x) for x in v]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of numbers, e.g. 0,0.1,0.2") from None


class AttackRunSpec(StrictModel):
    """Everything that defines the results of one ``noisydeq attack`` run (see module doc).

    ``samples`` test inputs are attacked (the first ones of the test split); the
    early-state defence's n is chosen on the last ``val_samples`` test inputs (disjoint).
    ``estimators`` apply to DEQs (FFWs are differentiated by backprop); ``defences`` to DEQs
    (FFWs predict with their last layer). ``device``/``noise_site``/``snr_db``: as for
    sweeps — ``device`` noise at each SNR level (``inf`` = the digital model) or the
    model's own noise at a site. ``transfer``: also evaluate, at every finite level,
    examples crafted on the noise-free digital twin. ``chips``: chip instances (static
    noise draws) per level. ``train_noise``: a model trained with noise at its input or
    state as a defence (main paper App. E.3) runs with that noise at the digital level too
    — "the same SNR at inference" — and attacks see it (EOT with ``eot``).
    ``transfer_from`` (``noisydeq adversarial`` only): also judge every model on examples
    crafted, without noise, on the model of the same kind, depth, training method and seed
    trained with this training defence (``none``: the undefended one; mode
    ``transfer-source``, :mod:`noisydeq.attacks.runner`); unset, nothing changes.
    Estimators: ``unrolled-grid[:n,k,lam]`` stands for the regulation paper's grid of
    intermediate-state attacks (Eq. 11, :func:`noisydeq.attacks.spec.expand_estimator`).
    """

    NO_REPEATS = frozenset({"attacks", "eps", "pgd_steps", "steps", "sigma", "fraction",
                            "estimators", "defences", "snr_db"})

    family: str
    task: str = ""
    data_dir: str | None = None
    samples: int = Field(default=200, ge=1, le=limits.MAX_SAMPLES)
    val_samples: int = Field(default=100, ge=0, le=limits.MAX_SAMPLES)
    attacks: list[str] = Field(default_factory=lambda: list(DEFAULT_ATTACKS))
    eps: list[float] = Field(default_factory=lambda: [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3,
                                                      0.35, 0.4])
    pgd_steps: list[int] = Field(default_factory=lambda: [10, 50])
    steps: list[int] = Field(default_factory=lambda: [1, 2, 5, 10, 20, 50])
    steps_eps: float = Field(default=0.3, ge=0.0)
    sigma: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 1.5, 2.0])
    fraction: list[float] = Field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.3, 0.4])
    norm: Literal["linf", "l2"] = "linf"
    alpha: float | None = Field(default=None, gt=0.0)
    restarts: int = Field(default=1, ge=1, le=limits.MAX_ITER)
    eot: int = Field(default=1, ge=1, le=limits.MAX_ITER)
    queries: int = Field(default=5000, ge=1, le=limits.MAX_ITER)
    estimators: list[str] = Field(default_factory=lambda: ["exact"])
    defences: list[str] = Field(default_factory=lambda: ["final"])
    device: str = "ideal"
    noise_site: Literal["device", "signal", "state", "input"] = "device"
    snr_db: list[InfFloat] = Field(default_factory=lambda: [math.inf])
    chips: int = Field(default=1, ge=1, le=limits.MAX_CHIPS)
    transfer: bool = False
    train_noise: bool = True
    transfer_from: str | None = None
    seed: int = Field(default=0, ge=0, le=limits.MAX_SEED)
    torch_device: str = "cpu"

    @field_validator("attacks", mode="before")
    @classmethod
    def _attacks(cls, v: Any) -> list[str]:
        return attack_families(v)

    @field_validator("eps", "sigma", "fraction", mode="before")
    @classmethod
    def _grid(cls, v: Any, info: Any) -> list[float]:
        return _floats(v, info.field_name)

    @field_validator("pgd_steps", "steps", mode="before")
    @classmethod
    def _ints(cls, v: Any, info: Any) -> list[int]:
        vals = _floats(v, info.field_name)
        if any(x != int(x) or x < 1 for x in vals):
            # pydantic names the field (``steps: …``): the message does not again
            raise ValueError("steps must be positive integers, got "
                             + ", ".join(f"{x:g}" for x in vals))
        if max(vals) > limits.MAX_ITER:
            raise ValueError(f"{int(max(vals))} steps is above the largest allowed, "
                             f"{limits.MAX_ITER}")
        return [int(x) for x in vals]

    @field_validator("snr_db", mode="before")
    @classmethod
    def _snr(cls, v: Any) -> list[float]:
        return snr_list(v)

    @field_validator("norm", mode="before")
    @classmethod
    def _norm(cls, v: Any) -> str:
        return check_norm(v)

    @field_validator("estimators", "defences", mode="before")
    @classmethod
    def _names(cls, v: Any, info: Any) -> list[str]:
        if isinstance(v, str):  # commas separate items unless inside name:k=v,k=v
            v = _split_items(v)
        parse = expand_estimator if info.field_name == "estimators" else parse_defence
        for item in v:
            parse(item)  # one line with a suggestion for a bad name
        return [str(i) for i in v]

    @model_validator(mode="after")
    def _check(self) -> AttackRunSpec:
        for field, vals in (("eps", self.eps), ("steps_eps", [self.steps_eps])):
            for e in vals:
                if e < 0 and self.norm == "l2":
                    raise ValueError(f"{field}: {e:g} is negative (an l2 radius is >= 0)")
                if e < 0 or (self.norm == "linf" and e > 1):
                    raise ValueError(f"{field}: {e:g} is outside [0, 1]")
        if self.device != "ideal" and self.noise_site != "device":
            # the model's own noise replaces the device (attacks.hardware.make_level): the
            # run would be digital while its rows named the device
            raise ValueError(f"device {self.device!r} applies with noise_site 'device' only; "
                             f"noise_site '{self.noise_site}' draws the model's own noise on "
                             "the digital weights (drop --device, or use --noise-site device)")
        if any(p < 0 or p > 1 for p in self.fraction):
            raise ValueError("fraction: salt-and-pepper fractions must lie in [0, 1]")
        if any(s < 0 for s in self.sigma):
            raise ValueError("sigma: speckle strengths must be >= 0")
        return self


def _split_items(text: str) -> list[str]:
    """``exact,phantom:k=5,lam=0.5,adjoint`` → [exact, phantom:k=5,lam=0.5, adjoint]."""
    items: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if "=" in part and ":" not in part and items:
            items[-1] += "," + part
        else:
            items.append(part)
    return items
