"""The per-chip holds of hardware-aware training as options: ``TrainSpec.device_adc_gain``
(photonic) and ``device_drift_alpha`` (rram) = ``"epoch"`` have their own cache key (unset
or ``step``: every earlier key), need a training device that measures what they hold,
change a short training run reproducibly, and are refused by ``noisydeq train`` in one
line otherwise (the holds themselves: test_adc_gain_hold.py, test_drift_alpha_hold.py)."""

from __future__ import annotations

import pytest

from tests.hardware.hold_helpers import (
    check_bad_train_option,
    check_cache_key,
    check_epoch_option_trains,
)

#: (spec field, CLI option, device that measures it, one that does not, refusal text)
OPTIONS = [
    ("device_adc_gain", "--device-adc-gain", "photonic", "rram", "measures no ADC gain"),
    ("device_drift_alpha", "--device-drift-alpha", "rram", "photonic", "measures no α"),
]


@pytest.mark.parametrize("field, _flag, device, other, refusal", OPTIONS)
def test_the_option_has_its_own_cache_key_and_needs_a_measuring_device(
        field, _flag, device, other, refusal) -> None:
    check_cache_key(field, device, other, "measures no")


@pytest.mark.parametrize("field, _flag, device, _other, _refusal", OPTIONS)
def test_epoch_option_trains_and_differs_from_the_per_step_default(
        field, _flag, device, _other, _refusal) -> None:
    check_epoch_option_trains(device, field)


@pytest.mark.parametrize("field, flag, device, other, refusal", OPTIONS)
@pytest.mark.parametrize("with_device", [False, True])
def test_bad_option_is_one_line(tmp_path, capsys, field, flag, device, other, refusal,
                                with_device) -> None:
    args = ["--device", other, flag, "epoch"] if with_device else [flag, "epoch"]
    needle = refusal if with_device else "needs a training --device"
    check_bad_train_option(tmp_path, capsys, args, needle)
