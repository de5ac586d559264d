"""The per-chip holds of hardware-aware training as options: ``TrainSpec.device_adc_gain``
(photonic), ``device_drift_alpha`` (rram) and ``device_programming`` (rram, photonic) =
``"epoch"`` have their own cache key (unset
or ``step``: every earlier key), need a training device that measures what they hold,
change a short training run reproducibly, and are refused by ``noisydeq train`` in one
line otherwise (the holds themselves: test_adc_gain_hold.py, test_drift_alpha_hold.py,
test_programming_hold.py)."""

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
    ("device_drift_alpha", "--device-drift-alpha", "rram", "photonic",
     "measures no drift-compensation α"),
    ("device_programming", "--device-programming", "rram", "snr", "has no programming error"),
    ("device_programming", "--device-programming", "photonic", "snr-additive",
     "has no programming error"),
]


@pytest.mark.parametrize("field, _flag, device, other, refusal", OPTIONS)
def test_the_option_has_its_own_cache_key_and_needs_a_measuring_device(
        field, _flag, device, other, refusal) -> None:
    check_cache_key(field, device, other, refusal)  # the CLI's wording (test_bad_option...)


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


#: (sweep field, sweep CLI option, device it reaches, device it does not, refusal text)
SWEEP_OPTIONS = [
    ("train_adc_gain", "--train-device-adc-gain", "device_adc_gain", "photonic", "rram",
     "measures an ADC gain"),
    ("train_drift_alpha", "--train-device-drift-alpha", "device_drift_alpha", "rram",
     "photonic", "measures a drift-compensation α"),
    ("train_programming", "--train-device-programming", "device_programming", "photonic",
     "snr", "has a programming error"),
]


@pytest.mark.parametrize("field, _flag, train_field, device, other, _refusal", SWEEP_OPTIONS)
def test_sweep_option_reaches_the_measuring_families_only(field, _flag, train_field, device,
                                                          other, _refusal) -> None:
    from noisydeq.config import SweepSpec, build
    from noisydeq.errors import NoisyDEQError
    from noisydeq.families import family_spec_for_sweep

    plain = build(SweepSpec, {"device": device, "train_device": device}, where="sweep")
    assert field not in plain.model_dump()  # earlier sweeps keep their identity
    sweep = build(SweepSpec, {"device": device, "train_device": f"{other},{device}",
                              field: "epoch"}, where="sweep")
    assert sweep.model_dump()[field] == "epoch"
    for dev, want in ((device, "epoch"), (other, None)):
        fspec = family_spec_for_sweep(sweep, 0, float("inf"), dev, None)
        assert getattr(fspec.train_spec("ffw"), train_field) == want
    with pytest.raises(NoisyDEQError, match=field):
        build(SweepSpec, {field: "epoch"}, where="sweep")


@pytest.mark.parametrize("field, flag, _train_field, _device, other, refusal", SWEEP_OPTIONS)
def test_sweep_option_without_a_measuring_device_is_one_line(
        tmp_path, capsys, monkeypatch, field, flag, _train_field, _device, other,
        refusal) -> None:
    from tests.cli_helpers import one_line_error, run_cli

    monkeypatch.setenv("NOISYDEQ_CACHE", str(tmp_path / "cache"))
    code, _, err = run_cli(["sweep", "--depths", "1", "--snr", "0,10", "--chips", "1",
                            "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet",
                            "--train-device", other, flag, "epoch"], capsys)
    one_line_error(code, err, field, refusal)
    assert not (tmp_path / "run").exists()


def test_sweep_refusal_is_the_single_device_check_over_the_list() -> None:
    """The sweep's check is :func:`check_held` over its training devices: the whole line,
    each device named once (a device given twice is refused before: refuse_repeats), the
    wording the single-device refusal uses otherwise."""
    from noisydeq.config import SweepSpec, build
    from noisydeq.errors import NoisyDEQError
    from noisydeq.families import check_training_devices
    from noisydeq.specs.device_presets import check_held

    with pytest.raises(NoisyDEQError, match="'snr' is given twice"):
        build(SweepSpec, {"train_device": "snr,snr-additive,snr"}, where="sweep")
    sweep = build(SweepSpec, {"train_device": "snr,snr-additive",
                              "train_programming": "epoch"}, where="sweep")
    with pytest.raises(NoisyDEQError) as err:
        check_training_devices(sweep)
    assert str(err.value) == ("train_programming: only for an rram or photonic training "
                              "device with programming noise (none of snr, snr-additive has "
                              "a programming error)")
    with pytest.raises(NoisyDEQError) as err:
        check_held("device_programming", "snr", "--device-programming")
    assert str(err.value) == ("--device-programming: only for an rram or photonic device "
                              "with programming noise (device 'snr' has no programming error)")
    check_held("device_programming", ["snr", "rram"], "train_programming")  # one has it
