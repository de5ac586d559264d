"""The shared solve loop: evaluate f on the full batch, apply per-sample stop rules, freeze.

Every method (unroll, anderson, broyden, stochastic) only proposes the next point; this loop
owns stopping (paper Eq. 54 and App. E.3), divergence, masking and traces, so the rules are
identical for all solvers. Samples that stopped are frozen with ``torch.where`` — ``f`` is
still evaluated on the full batch so block noise streams stay aligned (architecture.md).
Per iteration there is one host sync (“has every sample stopped?”); traces stay on device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from noisydeq.config import SolverSpec
from noisydeq.errors import NoisyDEQError
from noisydeq.solvers.solution import TRACE_KEYS, Solution, describe, empty_traces
from noisydeq.solvers.stop import Window, blowup_scale, thresholds


class Method(Protocol):
    """A solver's update rule on flattened (B, D) tensors."""

    def estimate(self, k: int, x: Tensor, fx: Tensor, window: Window | None) -> Tensor: ...

    def step(self, k: int, x: Tensor, fx: Tensor, active: Tensor) -> Tensor: ...


def run_loop(
    f: Callable[[Tensor], Tensor],
    z0: Tensor,
    spec: SolverSpec,
    make_method: Callable[[SolverSpec, Tensor], Method],
    generator: torch.Generator | None = None,
    needs_window: bool = False,
) -> Solution:
    """Iterate ``make_method(spec, x0)`` from ``z0`` until every sample stopped."""
    shape = z0.shape
    batch = shape[0]

    def ff(x: Tensor) -> Tensor:
        out = f(x.reshape(shape))
        if not isinstance(out, Tensor) or out.shape != shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise NoisyDEQError(
                f"solver: f(z) must return a tensor shaped like z {tuple(shape)}, got {got}"
            )
        return out.reshape(batch, -1)

    x = z0.reshape(batch, -1)
    dev, dt = x.device, x.dtype
    caps = thresholds(spec, batch, dev, spec_generator(generator))
    n_max = int(caps.max()) if spec.random_threshold else spec.max_iter
    method = make_method(spec, x)
    use_window = needs_window or spec.stop == "mean_rel" or spec.traces
    window = Window(spec.window) if use_window else None

    active = torch.ones(batch, dtype=torch.bool, device=dev)
    converged = torch.zeros_like(active)
    diverged = torch.zeros_like(active)
    steps = torch.zeros(batch, dtype=torch.long, device=dev)
    z_out = x
    trace_buf = torch.empty((n_max, 3, batch), dtype=dt, device=dev) if spec.traces else None
    need_rel = spec.traces or spec.stop == "rel"
    tiny = torch.finfo(dt).tiny
    scale: Tensor | None = None
    n_iter = 0
    for k in range(n_max):
        fx = ff(x)
        n_iter = k + 1
        xd, fd = x.detach(), fx.detach()
        res = (fd - xd).norm(dim=1)
        if need_rel or scale is None:
            fnorm = fd.norm(dim=1)
            rel = res / (fnorm + tiny)
        if scale is None:
            scale = blowup_scale(spec, res, fnorm)
        if window is not None:
            window.push(x, fx)
            mrel = window.mean_rel().detach()
        # NaN/inf in z or f(z) make res NaN/inf, and NaN <= scale is False: one comparison
        # flags non-finite values and blow-up alike.
        upd = active & (res <= scale)
        if spec.stop == "abs":
            met = res < spec.tol
        elif spec.stop == "rel":
            met = rel < spec.tol
        elif window is not None and window.full:
            met = mrel < spec.tol
        else:
            met = torch.zeros_like(active)
        steps += active
        z_out = torch.where(upd[:, None], method.estimate(k, x, fx, window), z_out)
        diverged = diverged | (active ^ upd)
        newly = upd & met
        converged = converged | newly
        active = upd ^ newly
        if spec.random_threshold:
            active = active & (caps > k + 1)
        if trace_buf is not None:
            trace_buf[k, 0] = res
            trace_buf[k, 1] = rel
            trace_buf[k, 2] = mrel
        if not bool(active.any()):
            break
        x = torch.where(active[:, None], method.step(k, x, fx, active), x)

    if trace_buf is not None:
        # entries after a sample stopped are NaN (its z was frozen)
        after = torch.arange(n_iter, device=dev)[:, None] >= steps[None, :]
        buf = trace_buf[:n_iter].masked_fill(after[:, None, :], math.nan)
        trace = {key: buf[:, i] for i, key in enumerate(TRACE_KEYS)}
    else:
        trace = empty_traces(batch, dev, dt)
    return Solution(
        z=z_out.reshape(shape),
        steps=steps,
        converged=converged,
        diverged=diverged,
        trace=trace,
        n_iter=n_iter,
        reason=describe(converged, diverged),
    )


def spec_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """Validate the optional generator argument."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise NoisyDEQError(
            f"solver: generator must be a torch.Generator, got {type(generator).__name__}"
        )
    return generator
