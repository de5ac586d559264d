"""Hardware-aware training: one device-in-the-loop training step vs the digital step and
vs aihwkit's hardware-aware training of the same model, in one run.

Model: the sweep's FFW (64 → 3 × 128 → 10, Eq. 57 ``eq57x``) on the digits training split,
batch 64, Adam 1e-3, cross-entropy. A step is forward, loss, backward, optimiser step.

* ``digital``: the FFW itself.
* ``ours rram`` / ``ours photonic``: the FFW deployed on the preset at its physical values
  and trained as ``noisydeq train --device`` trains (:mod:`noisydeq.train`: counter-based
  read-noise streams per batch, the chip reprogrammed with the current weights at every
  step, the scaled straight-through gradient of ``hardware.gradient.straight_through``).
* ``ours photonic (ADC gain per epoch)``: the same with ``TrainSpec.device_adc_gain =
  "epoch"`` (the calibrated ADC gain measured once per chip and held while the weights
  train, instead of a 512-row measurement with every step's weights).
* ``ours rram (drift α per epoch)``: the same with ``TrainSpec.device_drift_alpha =
  "epoch"`` (the drift compensation's α measured at the chip's first programming and held
  while the weights train, instead of two identity read-outs with every step's chip).
* ``ours rram (programming per epoch)`` / ``ours photonic (programming per epoch)``: the
  same with ``TrainSpec.device_programming = "epoch"`` (the chip programmed in full once —
  in a real run once per epoch's chip — and its programming error held on every later
  step's weights: W/max|W| + error, instead of targets, σ(g), noise and conversion back).
* ``ours rram (all per epoch)`` / ``ours photonic (all per epoch)``: programming and drift
  α (rram) / programming and ADC gain (photonic) per epoch together.
* ``aihwkit``: the same FFW through ``convert_to_analog`` with ``TorchInferenceRPUConfig``
  (aihwkit's pure-torch tile; its defaults: 7-bit DAC, 9-bit ADC, output noise 0.06,
  noise management abs-max, iterative bound management), the Wan-2022 ReRAM noise model at
  40 µS and weight scaling ω = 1 as in :mod:`benchmarks.devices`, and additive Gaussian
  weight noise during training (``WeightModifierType.ADD_NORMAL``, σ = 0.02 of max|W|) —
  aihwkit's recipe for hardware-aware training; Adam as aihwkit's ``AnalogAdam``
  (:func:`aihwkit_optimizer`). With ω = 1 the tile stores W / s (s = max|W| at conversion,
  0.088-0.125 here) and the optimiser steps those normalised weights, so the same numeric
  learning rate is a learning rate ≈ 10× smaller in the model's units: before 2026-12-07
  the peer learned that much slower (loss 2.21 after 50 steps where the digital FFW reaches
  0.44). Each tile's weight now gets lr / s, the per-tile division aihwkit's
  ``MappingParameter.weight_scaling_lr_compensation`` describes (that flag reaches only
  tiles updated by aihwkit's analog update, not a torch optimiser's step on the torch tile);
  with it the peer's loss curve follows the digital one (benchmarks/RESULTS.md). A peer
  that learns is also a slower peer: its iterative bound management repeats MVMs once the
  trained layers' outputs reach the ADC bound (2.7 → 3.4 ms per step over 120 steps; flat
  at 2.5 ms with the bound management off), a cost the peer that barely learned never paid.
  So each aihwkit row times a fresh peer first trained to the step its row's device model
  has reached (one peer shared by the rows timed a more-trained, slower peer in each later
  row).

Timings are interleaved (ours, peer, ours, ...) so load changes hit both; the ratio is the
median of the per-pair ratios with its min and max. Check: after the timed steps the
device-trained FFW's training loss is finite and every device layer's weight moved; the
aihwkit rows add the training loss of digital, ours and aihwkit after the same
:data:`CURVE_STEPS` steps from the same initial weights over the same batches (the timed
models have run different numbers of steps by then, so their losses do not compare).
"""

from __future__ import annotations

import copy
import math
import statistics

import torch
from torch import Tensor, nn

from benchmarks.common import Row, timeit_pair

TARGET_RRAM = 3.0
TARGET_PHOTONIC = 2.0
TARGET_VS_AIHWKIT = 0.5
LR = 1e-3
#: steps (epochs over the benchmark's batches) of the loss check on the aihwkit rows
CURVE_STEPS = 50


#: (preset, target vs digital, ADC gain, drift α, programming, row label)
_VARIANTS = (
    ("rram", TARGET_RRAM, "step", "step", "step", "rram"),
    ("rram", TARGET_RRAM, "step", "epoch", "step", "rram (drift α per epoch)"),
    ("rram", TARGET_RRAM, "step", "step", "epoch", "rram (programming per epoch)"),
    ("rram", TARGET_RRAM, "step", "epoch", "epoch", "rram (all per epoch)"),
    ("photonic", TARGET_PHOTONIC, "step", "step", "step", "photonic"),
    ("photonic", TARGET_PHOTONIC, "epoch", "step", "step", "photonic (ADC gain per epoch)"),
    ("photonic", TARGET_PHOTONIC, "step", "step", "epoch", "photonic (programming per epoch)"),
    ("photonic", TARGET_PHOTONIC, "epoch", "step", "epoch", "photonic (all per epoch)"),
)


def _data(batch: int, steps: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    from noisydeq.tasks import load_task

    task = load_task("digits", seed=0)
    return [(task.x_train[i * batch:(i + 1) * batch], task.y_train[i * batch:(i + 1) * batch],
             torch.arange(i * batch, (i + 1) * batch)) for i in range(steps)]


def _ffw() -> nn.Module:
    from noisydeq.models import FFW

    torch.manual_seed(0)
    return FFW(64, 128, 3, 10)


class _Stepper:
    """Training steps of one model (deployed or not) over fixed batches."""

    def __init__(self, net: nn.Module, data, device_streams: bool,
                 opt: torch.optim.Optimizer | None = None) -> None:
        from noisydeq.train import _Rng

        self.net, self.data, self.device_streams = net, data, device_streams
        self.opt = opt if opt is not None else torch.optim.Adam(net.parameters(), lr=LR)
        self.rng = _Rng(0, torch.device("cpu"))
        self.epoch, self.losses = 0, []

    def __call__(self) -> None:
        from noisydeq.train import _device_streams

        self.net.train()
        for xb, yb, idx in self.data:
            if self.device_streams:
                _device_streams(self.net, self.rng, self.epoch, idx)
            loss = nn.functional.cross_entropy(self.net(xb), yb)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.losses.append(float(loss.detach()))
        self.epoch += 1


def _ours(preset: str, model: nn.Module, data, adc_gain: str = "step",
          drift_alpha: str = "step", programming: str = "step") -> _Stepper:
    from noisydeq.hardware import get_device, set_scaled_gradient
    from noisydeq.hardware.controls import device_layers

    net = get_device(preset, chip=1).deploy(model)
    set_scaled_gradient(net)  # as noisydeq.train deploys
    if adc_gain == "epoch":  # as noisydeq.train with device_adc_gain = "epoch"
        for layer in device_layers(net).values():
            layer.hold_adc_gain = True
    if drift_alpha == "epoch":  # as noisydeq.train with device_drift_alpha = "epoch"
        for layer in device_layers(net).values():
            layer.hold_drift_alpha = True
    if programming == "epoch":  # as noisydeq.train with device_programming = "epoch"
        for layer in device_layers(net).values():
            layer.hold_programming = True
    return _Stepper(net, data, device_streams=True)


def aihwkit_model(model: nn.Module, std_dev: float = 0.02) -> nn.Module:
    """``model`` converted by aihwkit for hardware-aware training (module docstring);
    ``std_dev``: the ``ADD_NORMAL`` training weight noise, a fraction of max|W|."""
    from aihwkit.inference.compensation.drift import GlobalDriftCompensation
    from aihwkit.inference.converter.conductance import SinglePairConductanceConverter
    from aihwkit.inference.noise.reram import ReRamWan2022NoiseModel
    from aihwkit.nn.conversion import convert_to_analog
    from aihwkit.simulator.configs import TorchInferenceRPUConfig
    from aihwkit.simulator.parameters.enums import WeightModifierType

    cfg = TorchInferenceRPUConfig()
    cfg.noise_model = ReRamWan2022NoiseModel(g_converter=SinglePairConductanceConverter(g_max=40.0))
    cfg.drift_compensation = GlobalDriftCompensation()
    cfg.mapping.weight_scaling_omega = 1.0
    cfg.modifier.type = WeightModifierType.ADD_NORMAL
    cfg.modifier.std_dev = std_dev
    return convert_to_analog(copy.deepcopy(model), cfg)


def aihwkit_optimizer(net: nn.Module, lr: float = LR) -> torch.optim.Optimizer:
    """Adam at ``lr`` in the model's units for an aihwkit-converted ``net``: aihwkit's
    ``AnalogAdam`` (param groups regrouped as aihwkit's optimisers expect), each tile's
    weight in a group at lr / s (s = the tile's mean mapping scale, the max|W| that ω = 1
    divided out), every other parameter (digital biases, aihwkit's analog contexts) at lr."""
    from aihwkit.optim import AnalogAdam

    tiled, groups = set(), []
    for tile in net.analog_tiles():
        scales = tile.get_mapping_scales()
        s = 1.0 if scales is None else float(scales.mean())
        weights = list(tile.tile.parameters())
        tiled.update(id(w) for w in weights)
        groups.append({"params": weights, "lr": lr / s})
    rest = [p for p in net.parameters() if id(p) not in tiled]
    opt = AnalogAdam([{"params": rest}, *groups], lr=lr)
    opt.regroup_param_groups(net)
    return opt


def aihwkit_stepper(model: nn.Module, data) -> _Stepper:
    """The benchmark's aihwkit peer: ``model`` converted, with :func:`aihwkit_optimizer`."""
    net = aihwkit_model(model)
    return _Stepper(net, data, device_streams=False, opt=aihwkit_optimizer(net))


def loss_after(stepper: _Stepper, steps: int = CURVE_STEPS) -> float:
    """Training loss of the last of ``steps`` steps (whole epochs over the batches)."""
    while len(stepper.losses) < steps:
        stepper()
    return stepper.losses[steps - 1]


def _spread(a, b) -> dict[str, float]:
    pairs = sorted(x / y for x, y in zip(a.times, b.times, strict=True))
    return {"median_ours": a.median, "median_peer": b.median,
            "ratio_pairs_median": statistics.median(pairs), "ratio_pairs_min": pairs[0],
            "ratio_pairs_max": pairs[-1], "pairs": len(pairs)}


def bench_hwaware(steps: int = 10, repeat: int = 5, batch: int = 64) -> list[Row]:
    """Rows: rram and photonic training step vs digital (per step, each option per epoch,
    all per epoch), rram vs aihwkit (per step, programming per epoch, all per epoch)."""
    data = _data(batch, steps)
    model = _ffw()
    digital = _Stepper(copy.deepcopy(model), data, device_streams=False)
    rows = []
    curves = None
    for preset, target, adc, alpha, prog, what in _VARIANTS:
        ours = _ours(preset, model, data, adc, alpha, prog)
        t_o, t_d = timeit_pair(ours, digital, repeat=repeat)
        s = _spread(t_o, t_d)
        moved = all(not torch.equal(p.detach(), q.detach()) for (_n, p), (_m, q) in zip(
            ours.net.named_parameters(), model.named_parameters(), strict=True))
        ok = math.isfinite(ours.losses[-1]) and moved
        rows.append(Row("hwaware", f"{what} training step FFW 3x128 b{batch} vs digital",
                        s["median_ours"] / steps, s["median_peer"] / steps,
                        s["ratio_pairs_median"], target,
                        check=f"loss {ours.losses[-1]:.3f}, weights moved {moved}", ok=ok,
                        extra=s))
        if preset == "rram" and (alpha == "step" or prog == "epoch"):
            try:
                # a fresh peer brought to the step ours has reached: its step cost grows as
                # it trains (its bound management repeats the MVM once outputs reach the
                # ADC bound), so each row compares the two at the same stage of training
                peer = aihwkit_stepper(model, data)
                loss_after(peer, len(ours.losses))
                curves = curves or (
                    loss_after(_Stepper(copy.deepcopy(model), data, device_streams=False)),
                    loss_after(_ours("rram", model, data)),
                    loss_after(aihwkit_stepper(model, data)))
            except Exception as e:  # pragma: no cover - aihwkit missing or broken
                rows.append(Row("hwaware", "rram training step vs aihwkit", math.nan,
                                math.nan, math.nan, TARGET_VS_AIHWKIT,
                                check=f"aihwkit unavailable: {e}", ok=False))
                continue
            t_o, t_a = timeit_pair(ours, peer, repeat=repeat)
            s = _spread(t_o, t_a)
            ok = all(math.isfinite(x) for x in (peer.losses[-1], ours.losses[-1], *curves))
            rows.append(Row("hwaware", f"{what} training step FFW 3x128 b{batch} vs aihwkit "
                            "HWA (TorchInferenceRPUConfig)",
                            s["median_ours"] / steps, s["median_peer"] / steps,
                            s["ratio_pairs_median"], TARGET_VS_AIHWKIT,
                            check=f"loss after {CURVE_STEPS} steps from one init: digital "
                                  f"{curves[0]:.3f}, ours {curves[1]:.3f}, aihwkit "
                                  f"{curves[2]:.3f}", ok=ok, extra=s))
    return rows
