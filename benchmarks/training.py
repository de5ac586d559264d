"""Training: steps per second of DEQ training with IFT, ours vs torchdeq's DEQ (get_deq).

Both sides train the same model — our ``MLPCell`` (x̃ = relu(U x), f(z) = tanh(W z + b + x̃),
paper Eq. 57) and a linear head, copied weight for weight — on the same digits batches with
the same loop (forward, cross-entropy, backward, Adam step). Only the DEQ mechanics differ:

* ours: ``noisydeq.models.DEQ`` with ``SolverSpec(anderson, max_iter, tol, rel)`` and
  ``GradientSpec(ift)`` (backward: anderson, 40 steps, rel 1e-6);
* torchdeq: ``get_deq(f_solver="anderson", f_max_iter, f_tol, f_stop_mode="rel", ift=True,
  b_solver="anderson", b_max_iter=40, b_tol=1e-6, b_stop_mode="rel")``, Anderson memory 5
  forward (its backward keeps its default 6).

Check: the first step's loss and parameter gradients agree (IFT is exact up to the solver
tolerances).
"""

from __future__ import annotations

import copy
import time

import torch
from torch import Tensor, nn

from benchmarks.common import Row, pair_spread, ratio
from benchmarks.profiles import op_profile
from noisydeq.config import GradientSpec, SolverSpec
from noisydeq.models import DEQ

TARGET = 0.5  # issue 17: a DEQ training step at most half of torchdeq's


class TorchDEQModel(nn.Module):
    """The same cell and head, solved and differentiated by torchdeq."""

    def __init__(self, ours: DEQ, max_iter: int, tol: float) -> None:
        super().__init__()
        from torchdeq import get_deq

        self.cell = copy.deepcopy(ours.cell)
        self.head = copy.deepcopy(ours.head)
        self.deq = get_deq(f_solver="anderson", f_max_iter=max_iter, f_tol=tol,
                           f_stop_mode="rel", ift=True, b_solver="anderson", b_max_iter=40,
                           b_tol=1e-6, b_stop_mode="rel")

    def forward(self, x: Tensor) -> Tensor:
        xt = self.cell.project(x)
        z_out, _ = self.deq(lambda z: self.cell(z, xt), torch.zeros_like(xt),
                            solver_kwargs={"m": 5})
        return self.head(z_out[-1])


def _data(batch: int, n_batches: int) -> list[tuple[Tensor, Tensor]]:
    from noisydeq.tasks import load_task

    task = load_task("digits", seed=0)
    x, y = task.x_train, task.y_train
    return [(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch])
            for i in range(n_batches)]


def _steps(model: nn.Module, opt: torch.optim.Optimizer, data) -> float:
    t0 = time.perf_counter()
    for xb, yb in data:
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def first_step_grads(a: nn.Module, b: nn.Module, xb: Tensor, yb: Tensor) -> tuple[float, float]:
    """(|loss_a − loss_b|, max relative gradient difference over parameters)."""
    out = []
    for m in (a, b):
        m.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(m(xb), yb)
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}
        out.append((float(loss.detach()), grads))
    (la, ga), (lb, gb) = out
    rel = max(float((ga[k] - gb[k]).norm() / gb[k].norm().clamp(min=1e-12)) for k in gb)
    return abs(la - lb), rel


def bench_training(
    width: int = 128, batch: int = 64, steps: int = 10, repeat: int = 3, max_iter: int = 30,
    tol: float = 1e-3,
) -> list[Row]:
    """One row: seconds per training step, ours / torchdeq."""
    data = _data(batch, steps + 1)
    torch.manual_seed(0)
    ours = DEQ(64, width, 10, solver=SolverSpec(name="anderson", max_iter=max_iter, tol=tol,
                                                stop="rel", traces=False),
               gradient=GradientSpec(name="ift"))
    peer = TorchDEQModel(ours, max_iter, tol)
    ours.train()
    peer.train()
    dloss, dgrad = first_step_grads(ours, peer, *data[0])
    opt_o = torch.optim.Adam(ours.parameters(), lr=1e-3)
    opt_p = torch.optim.Adam(peer.parameters(), lr=1e-3)
    _steps(ours, opt_o, data[:1])
    _steps(peer, opt_p, data[:1])
    t_o, t_p = [], []
    for _ in range(repeat):
        t_o.append(_steps(ours, opt_o, data[1:]))
        t_p.append(_steps(peer, opt_p, data[1:]))
    so, sp = min(t_o) / steps, min(t_p) / steps
    ok = dloss < 1e-4 and dgrad < 1e-2
    row = Row("training", f"DEQ step w{width} b{batch} anderson+IFT vs torchdeq get_deq",
              so, sp, ratio(so, sp), TARGET,
              check=f"step-1 grads rel diff {dgrad:.1e}; {pair_spread(t_o, t_p)}", ok=ok,
              extra={"steps_per_s_ours": 1 / so, "steps_per_s_torchdeq": 1 / sp,
                     "loss_diff": dloss, "grad_rel_diff": dgrad, "times_ours": t_o,
                     "times_torchdeq": t_p})
    if row.met is False:  # where the time goes (one more untimed round of each side)
        row.extra["profile"] = op_profile(lambda: _steps(ours, opt_o, data[1:]), repeat=1)
        row.extra["profile_peer"] = op_profile(lambda: _steps(peer, opt_p, data[1:]), repeat=1)
    return [row]
