"""Would ``torch.compile`` pay for the device-in-the-loop training step? A probe, not part of
``make bench``: ``OMP_NUM_THREADS=1 python -m benchmarks.compile_probe``.

For one 128×128 rram layer of the hardware-aware benchmark's FFW (:mod:`benchmarks.hwaware`)
it compiles (inductor, CPU, static shapes) the two pure-tensor stages of a training step
that run once per layer and step:

* reprogramming the chip with new weights: max|W|, the conductance targets, aihwkit's σ
  polynomials, programming and read-at-t, max|W_prog|, the row statistics and the two
  drift-compensation read-outs of the identity (``RRAMLayer._chip`` at the physical knob);
* the scaled straight-through gradient's backward: the exact layer's two products plus
  the scale's share (``hardware.gradient.add_peak_terms``).

It prints the compile time, the largest difference to the eager path (W_t, α, the row
statistics; the gradients) and the thread CPU time per call, eager vs compiled, median and
range of 9 interleaved rounds of 50 calls. The compiled chain is written out here as one
function (the eager code is the reference it is compared with).
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from benchmarks.hwaware import _data, _ffw, _ours


def _programming(layer):
    """The layer's reprogramming as one pure function of (W, the chip's draws)."""
    from noisydeq.hardware import rram_io

    spec = layer.spec
    draw = layer._chip_draw(layer.matrix().detach() / layer._wscale())
    _eye, rnoise = layer._readout_inputs[1:] if layer._readout_inputs else (None, None)
    dq = (1.0 / rram_io.n_states(spec.dac_bits)) * (2.0 * spec.inp_bound)
    dy = (1.0 / rram_io.n_states(spec.adc_bits)) * (2.0 * spec.out_bound)
    c, sigma = round(1.0 / dq), spec.out_noise / dy
    coeffs = draw.model.coeff_dic
    cp, ct = coeffs[min(coeffs)], coeffs[spec.t_inference_s]
    conv = draw.model.g_converter
    span, gmax = conv.g_max - conv.g_min, draw.model.g_max
    unit = draw.model.g_max / draw.model.coeff_g_max_reference

    def chain(w, xi_prog, xi_read, noise):
        wn = w / w.abs().amax().clamp(min=1e-12)
        scaled = wn * span
        g = torch.stack([scaled, -scaled]).clamp(min=0.0, max=gmax)
        r = g / gmax

        def poly(cf):
            s, mat = r * cf[1] + cf[0], r
            for k in range(2, len(cf)):
                mat = mat * r
                s = s + mat * cf[k]
            return s * unit

        gp = (g + poly(cp) * xi_prog).clamp(min=0.0)
        w_prog = (gp[0] - gp[1]) / span
        ratio_t = w_prog.abs().amax().clamp(min=1e-7).reciprocal() * span
        gt = (g + poly(ct) * xi_read).clamp(min=0.0)
        w_t = (gt[0] - gt[1]) / ratio_t

        def readout(m):
            size = ((m.T * c) * (dq / dy) + noise * sigma).round().abs()
            return size.amax(), (size * dy).mean().clamp(min=1e-4)

        (_, mp), (_, mt) = readout(w_prog), readout(w_t)
        return (w_t, mp / mt, w_t.abs().sum(dim=1).amax(), w_t.square().mean().sqrt())

    return chain, (draw.xi_prog, draw.xi_read, rnoise)


def _cpu_ms(fn, n: int = 50) -> float:
    t = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - t) / n * 1e3


def main() -> None:
    from noisydeq.hardware.gradient import add_peak_terms

    torch.set_num_threads(1)
    stepper = _ours("rram", _ffw(), _data(64, 2))
    stepper()  # every layer programmed once: its draws and read-out inputs exist
    layer = [m for m in stepper.net.modules() if hasattr(m, "_chip")][1]
    w = layer.matrix().detach()

    def eager_program():
        layer._chips.clear()
        layer._wmax = None
        with torch.no_grad():
            return layer._chip(1.0)

    chain, draws = _programming(layer)
    t0 = time.perf_counter()
    compiled = torch.compile(chain, dynamic=False)
    got = compiled(w, *draws)
    t_prog = time.perf_counter() - t0
    ref = eager_program()
    print(f"programming: compile {t_prog:.1f} s; W_t max diff "
          f"{float((got[0] - ref[0]).abs().max()):.3g}, alpha rel diff "
          f"{abs(float(got[1]) - ref[1]) / ref[1]:.3g}, L1 {float(got[2])} vs {ref[2]}, "
          f"RMS {float(got[3])} vs {ref[3]}")

    g = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    err, x = g * 0.01, torch.randn(64, 128, generator=torch.Generator().manual_seed(1))

    def backward(g, err, x, w):
        gx, gw = g.mm(w), g.t().mm(x)
        add_peak_terms(g, err, x, w, gx, gw)
        return gx, gw

    t0 = time.perf_counter()
    cb = torch.compile(backward, dynamic=False)
    cg = cb(g, err, x, w)
    t_bwd = time.perf_counter() - t0
    eg = backward(g, err, x, w)
    dx, dw = (float((e - c).abs().max()) for e, c in zip(eg, cg, strict=True))
    print(f"scaled-gradient backward: compile {t_bwd:.1f} s; max diff grad_x {dx:.3g}, "
          f"grad_w {dw:.3g}")
    times: dict[str, list[float]] = {k: [] for k in ("programming eager", "programming compiled",
                                                     "backward eager", "backward compiled")}
    for _ in range(9):
        times["programming eager"].append(_cpu_ms(eager_program))
        times["programming compiled"].append(_cpu_ms(lambda: compiled(w, *draws)))
        times["backward eager"].append(_cpu_ms(lambda: backward(g, err, x, w)))
        times["backward compiled"].append(_cpu_ms(lambda: cb(g, err, x, w)))
    for k, v in times.items():
        v = sorted(v)
        print(f"{k:22s} {statistics.median(v):.3f} ms [{v[0]:.3f}, {v[-1]:.3f}]")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
