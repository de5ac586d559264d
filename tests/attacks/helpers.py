"""Small models shared by the attack tests (seeded, parameters frozen, eval mode)."""

from __future__ import annotations

import torch

from noisydeq.config import SolverSpec
from noisydeq.models import DEQ, FFW


def frozen(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def small_deq(solver: SolverSpec | None = None, width: int = 12, in_features: int = 16,
              classes: int = 3, scale: float = 0.6, dtype=torch.float64, seed: int = 0) -> DEQ:
    """A contractive DEQ (W scaled by ``scale``) solved to 1e-10 by default."""
    torch.manual_seed(seed)
    solver = solver or SolverSpec(name="broyden", max_iter=60, tol=1e-10, stop="abs")
    m = DEQ(in_features, width, classes, solver=solver).to(dtype)
    with torch.no_grad():
        m.cell.W.weight.mul_(scale)
    return frozen(m)


def small_ffw(seed: int = 0, in_features: int = 64, classes: int = 10) -> FFW:
    torch.manual_seed(seed)
    return frozen(FFW(in_features, 32, 3, classes))
