"""Device envelopes for certificates that hold on noisy hardware (beyond Wei & Kolter 2022).

A certificate with an envelope holds for every chip whose weights lie in W ± Δ (and whose
reads err by at most the dynamic bound). Two ways to get Δ for the ``rram`` device:

* **model** (``chip=None``): from the Wan-2022 noise model as aihwkit computes it. A weight w
  is a conductance pair (G⁺, G⁻) at targets g± (aihwkit's single-pair converter); read at
  time t each is clamp(g + c·σ_t(g)·ξ, 0) with σ_t the Wan-2022 polynomial and c the noise
  scale, so if every |ξ| ≤ k the normalised weight error is at most
  k·c·(σ_t(g⁺) + σ_t(g⁻))/ratio (the clamp only shrinks errors). The chip's global gain κ
  (converter rescaling by max|W_prog| × global drift compensation) is estimated from
  ``gain_chips`` chips simulated by the device itself (mean ± k_g·σ). Δ = max|W|·(|κ − 1|·|w|
  + κ·δ). k follows from a stated chip-level ``coverage`` p by the union bound (conductances:
  2N·2Φ(−k_c) ≤ (1 − p)/2; gains: L·2Φ(−k_g) ≤ (1 − p)/2) or is given directly. The fraction
  of the simulated chips that actually lie inside is reported next to it.
* **measured** (``chip=seed``): that programmed chip's effective weights α·max|W|·W_t read
  from the device model; Δ = |W_chip − W| exactly.

Dynamic part (``dynamic=True``): the rram read normalises each input vector by its max |x|
(noise management), quantises it (DAC step dq), adds read noise N(0, σ²) and quantises the
output (ADC step dy) at a bound-management reduction r; the output error is then at most
g·r·max|x|·(dq/2·‖W_t,i‖₁ + k_r·σ + dy/2) (g the output gain). Quantisation is bounded,
Gaussian read noise is not: it needs a stated ``read_k`` (else refused). r is bounded by
the bound-management rule (a reduction r > 1 is only chosen when r/2 clipped).

Other devices: ``ideal`` (no envelope, exact) — ``snr`` and ``photonic`` are refused: their
MVM noise is Gaussian at every read and scales with the signal, with no finite bound.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch
from torch import nn

from noisydeq.certify.envelope_types import Envelope, LayerEnvelope
from noisydeq.errors import NoisyDEQError

#: chips simulated to estimate the spread of the global gain (and to report coverage)
GAIN_CHIPS = 32


def mapped_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers a device maps to crossbars (``nn.Linear`` / ``nn.Conv2d``), by name."""
    return {n: m for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)}


def k_for_coverage(p: float, n: int) -> float:
    """k with n·2Φ(−k) = 1 − p (union bound over n Gaussian draws)."""
    if not 0.0 < p < 1.0:
        raise NoisyDEQError(f"envelope coverage: must lie in (0, 1), got {p:g}")
    return NormalDist().inv_cdf(1.0 - (1.0 - p) / (2.0 * max(n, 1)))


def _fmt_t(t: float) -> str:
    from noisydeq.specs.device_kinds import T_INFERENCE_VALUES

    return T_INFERENCE_VALUES.get(float(t), f"{t:g} s")


class _RRAMLayerModel:
    """Per-layer quantities of the Wan-2022 envelope (normalised units)."""

    def __init__(self, module: nn.Module, spec, scale: float) -> None:
        from noisydeq.hardware.rram_program import ChipDraw

        w = module.weight.detach().reshape(module.weight.shape[0], -1).double().cpu()
        self.shape = module.weight.shape
        self.w = w
        self.wscale = float(w.abs().max().clamp(min=1e-12))
        self.w_norm = w / self.wscale
        draw = ChipDraw(self.w_norm.float(), spec, 0)
        self.ratio = float(draw.model.g_converter.g_max - draw.model.g_converter.g_min)
        self.c = spec.prog_noise_scale * scale
        self.sig_t = sum(s.double() for s in draw.sig_t)  # σ_t(g⁺) + σ_t(g⁻)
        self.sig_p = sum(s.double() for s in draw.sig_p)
        self.n_conductances = 2 * w.numel()


def _gain_samples(module: nn.Module, name: str, spec, scale: float, chips: int,
                  seed: int) -> tuple[list[float], list[torch.Tensor]]:
    """(κ_j, effective normalised weights) of ``chips`` chips simulated by the device."""
    from noisydeq.hardware.rram import RRAMDevice

    out_k, out_w = [], []
    for j in range(chips):
        dev = RRAMDevice(spec, chip_seed=seed * 100003 + j)
        layer = dev.layer_class(dev, module, name)
        w_t, alpha = layer.chip(scale)
        w_eff = alpha * w_t.double().cpu() * layer._wscale()
        w = module.weight.detach().reshape(w_eff.shape).double().cpu()
        out_k.append(float((w_eff * w).sum() / (w * w).sum().clamp(min=1e-30)))
        out_w.append(w_eff)
    return out_k, out_w


def _dynamic_rows(spec, l1: torch.Tensor, gain: float, read_k: float | None, scale: float,
                  where: str) -> torch.Tensor:
    """Per-output bound a_i of the read error / max|x| (module docstring)."""
    from noisydeq.hardware.rram_io import bm_limit, n_states

    sigma = scale * spec.out_noise
    if sigma > 0 and read_k is None:
        raise NoisyDEQError(
            f"envelope: the rram read noise is Gaussian (σ = {sigma:g} of full scale) and has "
            "no finite bound; give a stated k·σ envelope (--read-noise-k K) or certify the "
            "static envelope only (no --dynamic)"
        )
    kr = 0.0 if sigma == 0 else float(read_k)
    dq = 2.0 * spec.inp_bound / n_states(spec.dac_bits)
    dy = 2.0 * spec.out_bound / n_states(spec.adc_bits)
    k_clip = (math.floor(spec.out_bound / dy) + 0.5) * dy  # pre-ADC value that clips
    l1_max = float(l1.max())
    slack = k_clip - kr * sigma - l1_max * dq / 2.0
    r_max = bm_limit(spec)
    if slack <= 0:
        r = r_max
    else:
        top = 2.0 * l1_max / slack  # a reduction r > 1 needs r/2 ≤ l1_max/slack
        r = 1
        while r * 2 <= min(top, r_max):
            r *= 2
    if r >= r_max and l1_max * (1.0 / r_max + dq / 2.0) + kr * sigma >= k_clip:
        raise NoisyDEQError(
            f"envelope: layer '{where}' can clip its ADC even at the largest input reduction "
            f"({r_max}): the read error has no finite bound"
        )
    return gain * r * (dq / 2.0 * l1 + kr * sigma + dy / 2.0)


def rram_envelope(
    model: nn.Module,
    spec,
    *,
    coverage: float | None = 0.99,
    k: float | None = None,
    dynamic: bool = False,
    read_k: float | None = None,
    scale: float = 1.0,
    gain_chips: int = GAIN_CHIPS,
    seed: int = 0,
) -> Envelope:
    """The Wan-2022 model envelope of every mapped layer (module docstring)."""
    layers = mapped_layers(model)
    info = {n: _RRAMLayerModel(m, spec, scale) for n, m in layers.items()}
    n_cond = sum(i.n_conductances for i in info.values())
    if k is None:
        if coverage is None:
            raise NoisyDEQError("envelope: give k or coverage")
        k_c = k_for_coverage(1.0 - (1.0 - coverage) / 2.0, 2 * n_cond)
        k_g = k_for_coverage(1.0 - (1.0 - coverage) / 2.0, len(info))
    else:
        if not k > 0:
            raise NoisyDEQError(f"envelope k: must be > 0, got {k:g}")
        k_c = k_g = float(k)
    out: dict[str, LayerEnvelope] = {}
    inside = torch.ones(gain_chips, dtype=torch.bool)
    gains = {}
    for name, mod in layers.items():
        li = info[name]
        delta_n = k_c * li.c * li.sig_t / li.ratio  # normalised weight error bound
        kappas, w_effs = _gain_samples(mod, name, spec, scale, gain_chips, seed)
        kt = torch.tensor(kappas, dtype=torch.float64)
        mean, std = float(kt.mean()), float(kt.std()) if len(kappas) > 1 else 0.0
        k_lo, k_hi = mean - k_g * std, mean + k_g * std
        gains[name] = (mean, std)
        dev_gain = max(abs(k_hi - 1.0), abs(1.0 - k_lo))
        delta = li.wscale * (dev_gain * li.w_norm.abs() + k_hi * delta_n)
        for j, w_eff in enumerate(w_effs):
            inside[j] &= bool(((w_eff - li.w).abs() <= delta).all())
        dyn = None
        if dynamic:
            p_hi = 1.0 + float((k_c * li.c * li.sig_p / li.ratio).max())
            p_lo = max(1.0 - float((k_c * li.c * li.sig_p / li.ratio).max()), 1e-6)
            l1 = ((li.w_norm.abs() + delta_n) * p_hi).sum(dim=1)
            dyn = _dynamic_rows(spec, l1, li.wscale * k_hi / p_lo, read_k, scale, name)
        out[name] = LayerEnvelope(delta.reshape(li.shape).float(), None if dyn is None
                                  else dyn.float())
    cov = float(inside.double().mean())
    t = _fmt_t(spec.t_inference_s)
    how = (f"chip-level coverage {coverage:g} by the union bound" if k is None
           else f"k = {k:g} given")
    text = (f"every conductance of every chip within k_c = {k_c:.2f}·σ_Wan2022(g, t = {t}) of "
            f"its target and each layer's global gain within k_g = {k_g:.2f}·σ of its mean "
            f"over {gain_chips} simulated chips ({how}; {100 * cov:.0f}% of those chips lie "
            "inside)")
    if dynamic:
        text += (f"; per-read DAC/ADC rounding and read noise within {read_k:g}·σ, bound "
                 "management as aihwkit's")
    else:
        text += "; dynamic read noise and quantisation not included (static envelope)"
    facts = {"k_conductance": k_c, "k_gain": k_g, "simulated_coverage": cov,
             "noise_scale": scale}
    label = f"{spec.name or 'rram'}:{'k=' + format(k, 'g') if k else 'p=' + format(coverage, 'g')}"
    return Envelope(out, label + (":dynamic" if dynamic else ""), text, facts)


def chip_envelope(
    model: nn.Module,
    spec,
    chip: int,
    *,
    dynamic: bool = False,
    read_k: float | None = None,
    scale: float = 1.0,
) -> Envelope:
    """The measured error of one programmed chip (module docstring)."""
    from noisydeq.hardware.rram import RRAMDevice

    out: dict[str, LayerEnvelope] = {}
    dev = RRAMDevice(spec, chip_seed=chip)
    for name, mod in mapped_layers(model).items():
        layer = dev.layer_class(dev, mod, name)
        w_t, alpha = layer.chip(scale)
        w = mod.weight.detach().reshape(w_t.shape).double().cpu()
        w_eff = alpha * w_t.double().cpu() * layer._wscale()
        delta = (w_eff - w).abs()
        dyn = None
        if dynamic:
            l1 = w_t.double().cpu().abs().sum(dim=1)
            dyn = _dynamic_rows(spec, l1, alpha * layer._wscale(), read_k, scale, name)
        out[name] = LayerEnvelope(delta.reshape(mod.weight.shape).float(),
                                  None if dyn is None else dyn.float())
    t = _fmt_t(spec.t_inference_s)
    text = (f"the weights of chip {chip} of '{spec.name or 'rram'}' as programmed and read at "
            f"t = {t} (measured error; the certificate holds for any chip within it)")
    if dynamic:
        text += f"; per-read DAC/ADC rounding and read noise within {read_k:g}·σ"
    else:
        text += "; dynamic read noise and quantisation not included"
    label = f"{spec.name or 'rram'}:chip{chip}" + (":dynamic" if dynamic else "")
    return Envelope(out, label, text, {"chip": float(chip), "noise_scale": scale})


def build_envelope(
    model: nn.Module,
    device: str | None,
    *,
    chip: int | None = None,
    coverage: float | None = 0.99,
    k: float | None = None,
    dynamic: bool = False,
    read_k: float | None = None,
    seed: int = 0,
) -> Envelope | None:
    """The envelope of ``device`` (preset name or path) for ``model``; None for no device."""
    if device is None:
        return None
    from noisydeq.hardware.presets import load_spec

    spec = load_spec(device)
    if spec.kind == "ideal":
        return Envelope({}, spec.name or "ideal", "exact digital weights (ideal device)")
    if spec.kind != "rram":
        raise NoisyDEQError(
            f"envelope: device '{spec.name}' ({spec.kind}) adds Gaussian noise to every read, "
            "scaled with the signal, with no finite bound; certify supports rram envelopes "
            "(static programming error, bounded converters) and ideal"
        )
    if read_k is not None and not read_k > 0:
        raise NoisyDEQError(f"--read-noise-k: must be > 0, got {read_k:g}")
    if chip is not None:
        return chip_envelope(model, spec, chip, dynamic=dynamic, read_k=read_k)
    return rram_envelope(model, spec, coverage=coverage, k=k, dynamic=dynamic, read_k=read_k,
                         seed=seed)
