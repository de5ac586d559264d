"""Hardware devices: deploy any torch model on an ideal, SNR, RRAM or photonic MVM.

>>> from noisydeq import hardware
>>> dev = hardware.get_device("rram-wan2022", noise_mode="physical").at_snr(20).new_chip(1)
>>> noisy_model = dev.deploy(model)  # doctest: +SKIP
>>> hardware.calibrate_in_network(noisy_model, x_train, [0, 10, 20])  # doctest: +SKIP
"""

from noisydeq.hardware.base import Device
from noisydeq.hardware.controls import (
    calibrate,
    device_layers,
    layer_snr_parts,
    layer_snr_report,
    set_measure,
    set_sample_snr,
    set_scaled_gradient,
    set_stream,
)
from noisydeq.hardware.in_network import calibrate_in_network, measure_in_network
from noisydeq.hardware.layer import DeviceLayer
from noisydeq.hardware.presets import (
    device_from_spec,
    get_device,
    load_spec,
    preset_names,
    spec_from_dict,
)

__all__ = [
    "Device",
    "DeviceLayer",
    "calibrate",
    "calibrate_in_network",
    "device_from_spec",
    "device_layers",
    "get_device",
    "layer_snr_parts",
    "layer_snr_report",
    "load_spec",
    "measure_in_network",
    "preset_names",
    "set_measure",
    "set_sample_snr",
    "set_scaled_gradient",
    "set_stream",
    "spec_from_dict",
]
