"""Static, dynamic and total SNR of a device MVM (docs/devices.md, "Static and dynamic SNR").

For a layer with digital weights W, its chip's effective weights W_chip (the static error:
RRAM programming and drift after compensation, photonic weight encoding, the ``snr``
device's per-chip weight error) and the device output y of one read (the dynamic error:
read, shot, thermal and RIN noise, DAC/ADC), over a set of input vectors x (DESIGN §1,
batch totals, MVM outputs without bias):

* static SNR  = Σ‖Wx‖² / Σ‖(W_chip − W)x‖²   (a property of the chip and the inputs),
* dynamic SNR = Σ‖Wx‖² / Σ‖y − W_chip x‖²     (over draws at a fixed chip),
* total SNR   = Σ‖Wx‖² / Σ‖y − Wx‖².

All three share the digital signal, so with a dynamic error that is zero-mean at a fixed
chip 1/total ≈ 1/static + 1/dynamic in linear units (:func:`combine_db`). A layer whose
signal Σ‖Wx‖² is zero (all-zero inputs, zero weights) has no SNR: every part is ``nan``
("undefined"), never −∞.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

#: the SNR part a noise mode's target refers to, by name
PARTS = ("static", "dynamic", "total")


def ratio_db(signal: float, noise: float) -> float:
    """10·log10(signal/noise): ``inf`` without noise, ``nan`` without signal (undefined)."""
    if not signal > 0:  # also nan
        return math.nan
    if noise == 0:
        return math.inf
    if not math.isfinite(noise):  # a non-finite output: no SNR to speak of
        return math.nan
    return 10.0 * math.log10(signal / noise)


def combine_db(*parts_db: float) -> float:
    """Total SNR of independent error parts: 1/total = Σ 1/part (linear units)."""
    inv = 0.0
    for v in parts_db:
        if math.isnan(v):
            return math.nan
        inv += 0.0 if math.isinf(v) else 10 ** (-v / 10)
    return ratio_db(1.0, inv)


@dataclass
class Parts:
    """Summed signal and error powers of one layer (or several): Σ‖Wx‖², Σ‖static‖², ..."""

    signal: float = 0.0
    static: float = 0.0
    dynamic: float = 0.0
    total: float = 0.0

    def __iadd__(self, other: Parts) -> Parts:
        self.signal += other.signal
        self.static += other.static
        self.dynamic += other.dynamic
        self.total += other.total
        return self

    def db(self, part: str) -> float:
        """SNR (dB) of ``part`` ("static", "dynamic" or "total"); see :func:`ratio_db`."""
        return ratio_db(self.signal, getattr(self, part))

    @property
    def static_db(self) -> float:
        return self.db("static")

    @property
    def dynamic_db(self) -> float:
        return self.db("dynamic")

    @property
    def total_db(self) -> float:
        return self.db("total")

    def as_db(self) -> dict[str, float]:
        return {p: self.db(p) for p in PARTS}


def row_powers(exact: Tensor, chip: Tensor, out: Tensor) -> Tensor:
    """Per-row (signal, static, dynamic, total) powers, shape (rows, 4), float64.

    ``exact`` = Wx, ``chip`` = W_chip x, ``out`` = the device output, each (rows, n_out).
    """
    e, c, y = exact.double(), chip.double(), out.double()
    return torch.stack([e.square().sum(-1), (c - e).square().sum(-1), (y - c).square().sum(-1),
                        (y - e).square().sum(-1)], dim=-1)


def parts_of(powers: Tensor) -> Parts:
    """:class:`Parts` of summed :func:`row_powers`."""
    s = powers.reshape(-1, 4).sum(0).tolist()
    return Parts(*s)
