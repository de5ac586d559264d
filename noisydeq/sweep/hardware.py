"""The device side of a sweep: chips programmed and calibrated per (model, seed, chip)
(:class:`Hardware`) and the per-layer measurement of a device's static / dynamic / total
SNR on the probed samples (:class:`DeviceMeter`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from noisydeq.errors import NoisyDEQError
from noisydeq.noise import NoiseStream, active_subset, derive_seed
from noisydeq.specs.sweep import SweepSpec, check_native_device
from noisydeq.sweep.base import ROW_ALIGN, SweepModel


class Hardware:
    """Adapter from the sweep to a device model (``noisydeq.hardware``).

    Every device layer accepts per-sample SNR targets (``hardware.set_sample_snr``), so all
    levels of a chunk share one deployed copy per (model, chip). ``device == "ideal"`` runs
    the digital weights directly (the ideal device is the identity).
    """

    def __init__(self, spec: SweepSpec) -> None:
        self.spec = spec
        #: the SNR grid in calibration groups: the grid a run began with and each
        #: extension's levels (set by the cell runner, :func:`noisydeq.extension.level_groups`)
        self.level_groups: list[list[float]] = [list(spec.snr_db)]
        self.direct = spec.device == "ideal"
        #: where calibration knobs are looked up and stored: None = the cache
        #: (:func:`noisydeq.families.cache_root`); a Ray worker points it at a scratch
        #: directory per task and returns what lands there to the driver, which caches it
        self.calibration_root: Any = None
        self.device: Any = None
        self.hw: Any = None
        #: the on-disk chip caches of the deployed chips :meth:`chip` gave (by id), until
        #: :meth:`store_chips` (:mod:`noisydeq.hardware.chip_store`)
        self._chip_caches: dict[int, Any] = {}
        if not self.direct:
            from noisydeq import hardware

            self.hw = hardware
            self.device = hardware.get_device(spec.device, noise_mode=spec.noise_mode)
            finite = [s for s in spec.snr_db if math.isfinite(s)]
            if spec.noise_site == "device" and finite:
                # before anything is written (training included): the device's reference
                # MVM; each trained layer's own range is checked later (check_reachable)
                from noisydeq.hardware.calibration import check_reachable

                for target in (min(finite), max(finite)):
                    check_reachable(target, self.device.snr_range(),
                                    f"device '{spec.device}' (its reference MVM)",
                                    spec.noise_mode)
        if spec.snr_native:  # before anything is written: a device with knobs, a row apart
            check_native_device(spec, "ideal" if self.direct else self.device.kind)
            if self.native_row_db() in spec.snr_db:
                raise NoisyDEQError(
                    f"--snr native: the native {self.swept_part()} SNR of device "
                    f"'{spec.device}' is {self.native_row_db():g} dB, a level of the grid "
                    "too; drop that level (the native row would share its snr_db)")

    @property
    def device_noise(self) -> bool:
        return self.spec.noise_site == "device" and not self.direct

    def native_parts(self) -> dict[str, float]:
        """Static, dynamic and total native SNR of the device's reference MVM (dB)."""
        if self.direct:
            return {"static": math.inf, "dynamic": math.inf, "total": math.inf}
        return dict(self.device.native_parts())

    def native_snr_db(self) -> float:
        """Native SNR of the part the noise mode sets (the swept axis's native point)."""
        return float(self.native_parts()[self.swept_part()])

    def swept_part(self) -> str:
        """The SNR part the noise mode sets (``total``, ``dynamic`` or ``static``)."""
        from noisydeq.hardware.modes import TARGET_PART

        return str(TARGET_PART[self.spec.swept_mode])

    def native_row_db(self) -> float:
        """The ``snr_db`` of the native level's rows: :meth:`native_snr_db` (the device's
        native SNR of the swept part, on its reference MVM) to 1e-4 dB, so that every
        process and thread count writes the same number (a cell's rows are checked
        against it when read back)."""
        return round(self.native_snr_db(), 4)

    def check_reachable(self, models: Sequence[SweepModel], calib_x: Tensor | None) -> None:
        """Refuse (one line naming model, layer and range) a finite target that some layer
        of the trained ``models`` cannot reach in the noise mode, on its clean calibration
        inputs on the first chip — before any cell is evaluated."""
        finite = [s for s in self.spec.snr_db if math.isfinite(s)]
        if not self.device_noise or not finite:
            return
        from noisydeq.hardware.calibration import check_reachable

        lo, hi = min(finite), max(finite)
        for sm in models:
            device = self.device.new_chip(derive_seed(sm.seed, "chip", 0))
            deployed = device.deploy(sm.model, digital_layers=self.spec.digital_layers)
            if calib_x is not None:
                self.hw.calibrate(deployed, calib_x)
            # the range programs the chip at the knobs' bounds: kept with the chip's others
            self._attach_chips(deployed, device)
            for name, layer in self.hw.device_layers(deployed).items():
                reach = layer.snr_range()
                if math.isnan(reach[0]):
                    continue  # no signal: not calibrated (docs/devices.md)
                for target in (lo, hi):
                    check_reachable(target, reach, f"layer '{name}' of {sm.model_id}",
                                    self.spec.noise_mode)
            self.store_chips(deployed)

    def chip(self, model: nn.Module, seed: int, chip: int, calib_x: Tensor | None) -> nn.Module:
        """``model`` deployed on chip instance ``chip`` (static noise seeded by seed, chip).

        Layers are calibrated on the activations of ``calib_x`` (training inputs), so a
        target SNR is met on the data the model sees, not on synthetic vectors: inside the
        noisy network (``spec.calibration = "network"``) or on clean activations. Under
        device noise every SNR level of the sweep is calibrated here, in ascending order, or
        loaded from the calibration cache (:mod:`noisydeq.hardware.calibration_store`).
        """
        if self.direct:
            return model
        device = self.device.new_chip(derive_seed(seed, "chip", chip))
        deployed = device.deploy(model, digital_layers=self.spec.digital_layers).eval()
        if self.spec.noise_site == "device":
            from noisydeq.families import cache_root
            from noisydeq.hardware.calibration_store import calibrate_levels

            # in-network calibration searches the levels in ascending order, each from the
            # one before: an extended run calibrates the grid it began with and each
            # extension's levels apart, so every cell is what a run of its group gives
            groups = self.level_groups
            cache = cache_root() if self.calibration_root is None else self.calibration_root
            knobs: dict[str, dict[float, Any]] = {}
            for group in groups[1:]:
                part = device.deploy(model, digital_layers=self.spec.digital_layers).eval()
                calibrate_levels(part, model, device, calib_x, group, cache,
                                 calibration=self.spec.calibration)
                for name, layer in self.hw.device_layers(part).items():
                    found = layer.calibrated_controls()
                    knobs.setdefault(name, {}).update(
                        {float(s): found[float(s)] for s in group if float(s) in found})
            calibrate_levels(deployed, model, device, calib_x, groups[0], cache,
                             calibration=self.spec.calibration)
            for name, layer in self.hw.device_layers(deployed).items():
                if knobs.get(name):
                    layer.load_controls(knobs[name])
        elif calib_x is not None:
            self.hw.calibrate(deployed, calib_x)
        self._attach_chips(deployed, device)
        return deployed

    def _attach_chips(self, deployed: nn.Module, device: Any) -> None:
        """Read the chips of ``deployed`` (on chip ``device``) from the chip cache, in a
        local run (a Ray task stores nothing): :mod:`noisydeq.hardware.chip_store`."""
        if self.calibration_root is not None:
            return
        from noisydeq.families import cache_root
        from noisydeq.hardware import chip_store

        cache = chip_store.attach(deployed, device, cache_root())
        if cache is not None:
            self._chip_caches[id(deployed)] = cache

    def store_chips(self, deployed: nn.Module) -> bool:
        """Store the chips ``deployed`` (from :meth:`chip`) programmed that the chip cache
        lacked, and detach it; True when an entry was written."""
        cache = self._chip_caches.pop(id(deployed), None)
        return cache is not None and cache.save()

    def calibration_entries(self, model: nn.Module, seed: int, chip: int,
                            calib_x: Tensor | None, threads: int | None = None) -> list[str]:
        """File names of the calibration entries :meth:`chip` looks up for this pair (one
        per level group; none without device noise), as keyed with ``threads`` threads and
        the model in eval mode (as a pair is evaluated: the mode is part of the key)."""
        if self.direct or self.spec.noise_site != "device":
            return []
        from noisydeq.hardware.calibration_store import entry_name

        device = self.device.new_chip(derive_seed(seed, "chip", chip))
        was = model.training
        model.eval()
        try:
            return [entry_name(model, device, calib_x, group, self.spec.calibration, threads)
                    for group in self.level_groups]
        finally:
            model.train(was)

    def prepare(
        self, model: nn.Module, snr: Tensor, seeds: Sequence[int], block_rows: Sequence[int],
        samples: Tensor, device_noise: bool,
    ) -> None:
        """Give every device layer its own block stream and the per-sample SNR targets.

        One stream per layer (seeded by the level seed and the layer name) keeps the draws
        of a layer a function of that layer's own calls; rows are keyed by ``samples``
        (test-set indices).
        """
        if self.direct:
            return
        for name, layer in self.hw.device_layers(model).items():
            layer.stream = NoiseStream.from_blocks(
                [derive_seed(s, "layer", name) for s in seeds], block_rows,
                device=snr.device, samples=samples,
            )
        self.hw.set_sample_snr(model, snr if device_noise else None)

    def meter(
        self, model: nn.Module, blocks: int, rows: int, first_sample: int, total: int,
        samples: int | None = None,
    ) -> DeviceMeter | None:
        """A per-sample SNR meter on the deployed layers for the next forward (blocks of
        ``rows`` rows, the first ``samples`` of each real)."""
        if self.direct:
            return None
        return DeviceMeter(self.hw.device_layers(model), blocks, rows, first_sample, total,
                           samples)


class DeviceMeter:
    """Measures the realised static, dynamic and total MVM-output SNR of every device layer
    on the first test samples (:mod:`noisydeq.hardware.parts`).

    Forward hooks keep, for the test samples of index < ``probe`` in each block (level),
    each layer's input, device output (bias removed) and knobs at its **last** evaluation
    of that sample: the one evaluation of an FFW layer, the noisy fixed point of a DEQ's
    cell (the inputs its calibration aimed at). :meth:`per_sample` then compares the
    outputs with the exact MVM of the digital weights and with the chip's (W_chip x), once,
    in float64, each probed row placed at a row ≡ its test index (mod ``ROW_ALIGN``) as in
    the forward. Linear and convolutional layers alike: a conv layer's powers are summed
    over the output positions of each sample (one MVM per position, :meth:`row_powers`).
    Probing a few samples keeps the extra MVMs cheap; probing them by test-set index keeps
    the measurement independent of the batching. When a solver evaluates only its active
    rows (:class:`noisydeq.noise.RowSubset`), the probe rows among them are recorded.
    """

    probe = 64

    def __init__(
        self, layers: dict[str, nn.Module], blocks: int, rows: int, first_sample: int,
        total: int, samples: int | None = None,
    ) -> None:
        #: test samples first_sample … first_sample + m − 1 of each block are probed (of its
        #: ``samples`` real rows; the rest of a block of ``rows`` is padding)
        real = rows if samples is None else samples
        self.m = max(0, min(real, self.probe - first_sample))
        self.blocks, self.total = blocks, total
        self.index = torch.cat([torch.arange(self.m) + k * rows for k in range(blocks)])
        span = -(-self.m // ROW_ALIGN) * ROW_ALIGN
        self.span = span
        self.place = torch.cat([torch.arange(self.m) + k * span for k in range(blocks)])
        self.layers = {n: layer for n, layer in layers.items() if self.m > 0}
        #: per layer: [inputs, outputs, per-block knobs, seen] of the probed rows
        self.last: dict[str, list[Any]] = {}
        self._powers: dict[str, Tensor] | None = None
        self.handles = [layer.register_forward_hook(self._hook(name))
                        for name, layer in self.layers.items()]

    def _hook(self, name: str):
        def fn(layer: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
            x = inputs[0].detach()
            probe = self.index.to(x.device)
            subset = active_subset(x.shape[0])
            if subset is not None and subset.total == self.total:
                where = torch.full((self.total,), -1, dtype=torch.long, device=x.device)
                where[subset.index.to(x.device)] = torch.arange(x.shape[0], device=x.device)
                pos = where[probe]
                keep = pos >= 0
                if subset.real is not None:  # padding rows of a small subset do not count
                    keep &= subset.real.to(x.device)[pos.clamp(min=0)]
                slot, idx = keep.nonzero().squeeze(1), pos[keep]
            elif x.shape[0] == self.total:
                slot, idx = torch.arange(probe.numel(), device=x.device), probe
            else:
                return
            if idx.numel() == 0:
                return
            control = layer.resolve_controls(x.shape[0])
            y = out.detach()[idx]
            if getattr(layer, "bias", None) is not None:  # (n_out,) along dim 1 of a conv map
                y = y - layer.bias.detach().reshape((-1,) + (1,) * (y.ndim - 2))
            if name not in self.last or self.last[name][0].shape[1:] != x.shape[1:]:
                n = probe.numel()
                knobs = torch.tensor(layer.native_knobs(), dtype=torch.float64,
                                     device=x.device).repeat(self.blocks, 1)
                self.last[name] = [x.new_zeros((n, *x.shape[1:])), y.new_zeros((n, *y.shape[1:])),
                                   knobs, torch.zeros(n, dtype=torch.bool, device=x.device)]
                self._powers = None
            buf = self.last[name]
            buf[0][slot] = x[idx]
            buf[1][slot] = y
            block = slot // self.m
            if isinstance(control, Tensor):
                buf[2][block] = control.to(x.device)[idx]
            else:
                buf[2][block] = torch.tensor(control, dtype=torch.float64, device=x.device)
            buf[3][slot] = True
            self._powers = None

        return fn

    def per_sample(self, block: int) -> dict[str, list[list[float]]]:
        """Per layer, the (signal, static, dynamic, total) powers of each probed sample of
        ``block`` at its last evaluation (zeros for a sample the layer never saw)."""
        if self._powers is None:
            self._powers = {}
            for name, (x, y, knobs, seen) in self.last.items():
                layer = self.layers[name]
                place = self.place.to(x.device)
                rows_buf = self.blocks * self.span
                xs = x.new_zeros((rows_buf, *x.shape[1:]))
                ys = y.new_zeros((rows_buf, *y.shape[1:]))
                xs[place], ys[place] = x, y
                control = knobs.repeat_interleave(self.span, dim=0)
                if getattr(layer, "op", "linear") == "linear":
                    powers = layer.row_powers(xs, ys, control)
                else:  # one vector per output position: a block at a time, summed per sample
                    powers = torch.cat([
                        layer.row_powers(xs[sl], ys[sl], control[sl]).reshape(
                            self.span, -1, 4).sum(1)
                        for sl in (slice(k * self.span, (k + 1) * self.span)
                                   for k in range(self.blocks))])
                self._powers[name] = powers[place] * seen.unsqueeze(1)
        sl = slice(block * self.m, (block + 1) * self.m)
        return {name: p[sl].tolist() for name, p in self._powers.items()}

    def close(self) -> None:
        for h in self.handles:
            h.remove()


# ------------------------------------------------------------------------ evaluation
