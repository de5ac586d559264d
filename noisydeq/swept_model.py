"""One trained model of a sweep (:class:`SweepModel`; its id writes SNRs with
:func:`noisydeq.summary.fmt_db`): the sweep engine (:mod:`noisydeq.sweep`) evaluates it, and
the attack runner (:mod:`noisydeq.attacks.members`) extends it with a defence; it sits below
both."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from noisydeq.specs.sweep import SweepSpec
from noisydeq.summary import fmt_db

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


@dataclass
class SweepModel:
    """One trained model of a sweep and the facts the table reports about it.

    ``depth`` is the FFW depth of the family member: an FFW's number of layers, or for a
    DEQ the FFW depth it is parameter-matched to (so DEQ and FFW of one depth pair up).
    """

    model: nn.Module
    kind: str
    depth: int
    width: int
    params: int
    seed: int = 0
    train_snr_db: float = math.inf
    #: hardware-aware training: the training device (None: trained digitally) and the SNR
    #: it was calibrated to (None: its native SNR)
    train_device: str | None = None
    train_device_snr_db: float | None = None

    @property
    def model_id(self) -> str:
        hw = ""
        if self.train_device is not None:
            name = Path(self.train_device).stem if self.train_device.endswith(".toml") \
                else self.train_device
            snr = "native" if self.train_device_snr_db is None else fmt_db(
                self.train_device_snr_db)
            hw = f"-hw{name}@{snr}"
        return (
            f"{self.kind}-d{self.depth}-w{self.width}-s{self.seed}"
            f"-t{fmt_db(self.train_snr_db)}{hw}"
        )

    def training_columns(self, spec: SweepSpec) -> dict[str, Any]:
        """The hardware-aware training columns of its rows (only in a sweep that names
        training devices, :data:`noisydeq.results.TRAIN_DEVICE_COLUMNS`): device ``none``
        for a digitally trained model, SNR ``nan`` at the native SNR or digitally."""
        if not spec.train_device:
            return {}
        if self.train_device is None:
            return {"train_device": "none", "train_device_snr_db": math.nan,
                    "train_noise_mode": "none"}
        return {"train_device": self.train_device,
                "train_device_snr_db": (math.nan if self.train_device_snr_db is None
                                        else float(self.train_device_snr_db)),
                "train_noise_mode": spec.train_noise_mode}
