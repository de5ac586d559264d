"""Devices: forward time of one deployed 467×467 layer (batch 256) vs nn.Linear and aihwkit.

Every device layer is deployed from the same ``nn.Linear(467, 467)`` (seeded init) and run
under ``torch.no_grad`` on x ~ U(−1, 1) (what the layer sees after tanh). ``snr`` and
``photonic`` run at a calibrated 20 dB, ``rram`` at its native (physical) setting, ``ideal``
exact. The peer for ``rram`` is aihwkit's own ``AnalogLinear`` with
``TorchInferenceRPUConfig``, the same Wan-2022 noise model (single-pair converter at
g_max = 40 µS), global drift compensation and ``weight_scaling_omega = 1``, programmed and
drifted to t = 1 s — how an aihwkit user would simulate the same crossbar.

Checks (fast path vs reference): ``ideal`` equals ``nn.Linear`` (allclose); the ``snr`` and
``photonic`` layers' measured SNR is within 1 dB of the 20 dB target; the ``rram`` layer's
output-error std is within 15 % of aihwkit's (same weights, same inputs; aihwkit manages
bounds per batch, ours per vector, so a few % difference is expected).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from benchmarks.common import Row, pair_spread, ratio, timeit_pair
from benchmarks.profiles import op_profile
from noisydeq import hardware as hw
from noisydeq.noise import NoiseStream, measured_snr_db

#: issue 17's targets (snr/photonic ≤ 1.3× nn.Linear, rram ≤ 2× and ≤ 0.35× aihwkit's tile;
#: issue 16 had 1.5× and 0.5×)
TARGET_VS_LINEAR = {"ideal": 1.5, "snr": 1.3, "photonic": 1.3, "rram": 2.0}
TARGET_RRAM_VS_AIHWKIT = 0.35


def aihwkit_layer(weight: torch.Tensor, t_inference: float = 1.0) -> nn.Module:
    """aihwkit AnalogLinear (TorchInferenceRPUConfig, Wan-2022 at 40 µS), programmed + drifted."""
    from aihwkit.nn import AnalogLinear

    from benchmarks.peers.aihwkit_sweep import program, rpu_config

    layer = AnalogLinear(weight.shape[1], weight.shape[0], bias=True, rpu_config=rpu_config())
    layer.set_weights(weight, torch.zeros(weight.shape[0]))
    layer.eval()
    program(layer, 0, t_inference)
    return layer


def _deployed(name: str, lin: nn.Module) -> nn.Module:
    dev = hw.get_device("rram-wan2022" if name == "rram" else name)
    if name in ("snr", "photonic"):
        dev = dev.at_snr(20.0)
    layer = dev.new_chip(1).deploy(lin)
    hw.set_stream(layer, NoiseStream.from_seed(7))
    return layer


def bench_devices(
    width: int = 467, batch: int = 256, repeat: int = 20,
    devices: tuple[str, ...] = ("ideal", "snr", "rram", "photonic"),
) -> list[Row]:
    """Rows: each device layer vs nn.Linear, and rram vs aihwkit's AnalogLinear."""
    torch.manual_seed(0)
    lin = nn.Linear(width, width)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, width, generator=g) * 2 - 1
    with torch.no_grad():
        exact = lin(x)
    rows = []
    for name in devices:
        layer = _deployed(name, lin)
        with torch.no_grad():
            y = layer(x)  # warm: calibration and chip programming happen here
            t_dev, t_lin = timeit_pair(lambda m=layer: m(x), lambda: lin(x), repeat=repeat,
                                       warmup=2)
        err = y - exact
        snr = measured_snr_db(exact - lin.bias, y - lin.bias)
        extra: dict[str, Any] = {"measured_snr_db": snr, "median_ours": t_dev.median,
                                 "median_linear": t_lin.median}
        if name == "ideal":
            ok, check = bool(torch.allclose(y, exact, atol=1e-6)), "== nn.Linear"
        elif name in ("snr", "photonic"):
            ok, check = abs(snr - 20.0) < 1.0, f"SNR {snr:.1f} dB (target 20)"
        else:
            ok, check = None, f"SNR {snr:.1f} dB (native)"
        check += "; " + pair_spread(t_dev.times, t_lin.times)
        row = Row("devices", f"{name} {width}x{width} b{batch} vs nn.Linear",
                  t_dev.best, t_lin.best, ratio(t_dev.best, t_lin.best),
                  TARGET_VS_LINEAR[name], check=check, ok=ok, extra=extra)
        if row.met is False:  # where the time goes (one more untimed run of each side)
            with torch.no_grad():
                extra["profile"] = op_profile(lambda m=layer: m(x), repeat=repeat)
                extra["profile_peer"] = op_profile(lambda: lin(x), repeat=repeat)
        rows.append(row)
        if name == "rram":
            rows.append(_vs_aihwkit(layer, lin, x, exact, err, repeat))
    return rows


def _vs_aihwkit(layer, lin, x, exact, err_ours, repeat: int) -> Row:
    try:
        ana = aihwkit_layer(lin.weight.detach())
        ana.bias = None
    except Exception as e:  # pragma: no cover - aihwkit missing or broken
        return Row("devices", "rram vs aihwkit AnalogLinear", math.nan, math.nan, math.nan,
                   TARGET_RRAM_VS_AIHWKIT, check=f"aihwkit unavailable: {e}", ok=False)
    with torch.no_grad():
        ya = ana(x) + lin.bias
        t_dev, t_ana = timeit_pair(lambda: layer(x), lambda: ana(x), repeat=max(3, repeat // 4),
                                   warmup=1)
    std_a = float((ya - exact).std())
    std_o = float(err_ours.std())
    ok = abs(std_o / std_a - 1) < 0.15
    row = Row("devices", f"rram {x.shape[1]}x{x.shape[1]} b{x.shape[0]} vs aihwkit AnalogLinear",
              t_dev.best, t_ana.best, ratio(t_dev.best, t_ana.best),
              TARGET_RRAM_VS_AIHWKIT, ok=ok,
              check=(f"err std {std_o:.3f} vs {std_a:.3f}; "
                     + pair_spread(t_dev.times, t_ana.times)),
              extra={"err_std_ours": std_o, "err_std_aihwkit": std_a,
                     "median_ours": t_dev.median, "median_aihwkit": t_ana.median})
    if row.met is False:
        n = max(3, repeat // 4)
        with torch.no_grad():
            row.extra["profile"] = op_profile(lambda: layer(x), repeat=n)
            row.extra["profile_peer"] = op_profile(lambda: ana(x), repeat=n)
    return row

