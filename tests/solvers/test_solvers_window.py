"""The Eq. 54 window (solvers/stop.py) against sums recomputed from scratch.

The window keeps running sums of the residuals g = f(z) − z and images f(z), updated in place
when autograd does not record them and recounted every ``w`` pushes. These tests compare
its means with a direct sum over the last ``w`` pushes in every mode it runs in, check that
it never changes a caller's tensor, and that gradients flow when autograd records the pushes.
"""

from __future__ import annotations

import pytest
import torch

from noisydeq.solvers.stop import Window


def _pushes(n: int, seed: int = 0, requires_grad: bool = False) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(6, 9, generator=g, dtype=torch.float64)
        fx = torch.randn(6, 9, generator=g, dtype=torch.float64)
        out.append((x.requires_grad_(requires_grad), fx.requires_grad_(requires_grad)))
    return out


def _direct(pushes: list[tuple[torch.Tensor, ...]], w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean of the last w points, Eq. 54 with f(z̃) as the mean image), summed directly."""
    last = pushes[-w:]
    mx = torch.stack([x for x, _ in last]).mean(0)
    mf = torch.stack([f for _, f in last]).mean(0)
    return mx, (mf - mx).norm(dim=1) / mf.norm(dim=1)


@pytest.mark.parametrize("w", [1, 2, 5])
@pytest.mark.parametrize("mode", ["no_grad", "grad_mode_plain_tensors", "tracked"])
@pytest.mark.parametrize("pass_g", [False, True])
def test_window_means_match_direct_sums(w: int, mode: str, pass_g: bool) -> None:
    pushes = _pushes(17, requires_grad=mode == "tracked")
    win = Window(w)
    ctx = torch.no_grad() if mode == "no_grad" else torch.enable_grad()
    with ctx:
        for i, (x, fx) in enumerate(pushes):
            win.push(x, fx, (fx - x).detach() if pass_g else None)
            mx, rel = _direct(pushes[: i + 1], w)
            torch.testing.assert_close(win.mean_x(), mx, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(win.mean_rel(), rel, rtol=1e-12, atol=1e-12)
            assert win.full == (i + 1 >= w)


def test_window_never_updates_a_callers_tensor() -> None:
    pushes = _pushes(9)
    copies = [(x.clone(), fx.clone()) for x, fx in pushes]
    for w in (1, 3):
        win = Window(w)
        with torch.no_grad():
            for x, fx in pushes:
                g = fx - x
                g_copy = g.clone()
                win.push(x, fx, g)
                win.mean_rel()
                win.mean_x()
                assert torch.equal(g, g_copy)
    for (x, fx), (xc, fc) in zip(pushes, copies, strict=True):
        assert torch.equal(x, xc) and torch.equal(fx, fc)


def test_window_switching_from_tracked_to_untracked_keeps_inputs_intact() -> None:
    """A first push recorded by autograd leaves sums that alias the pushed tensors; a later
    untracked push must copy them before updating in place."""
    (x0, f0), (x1, f1), (x2, f2) = _pushes(3)
    win = Window(3)
    x0r = x0.clone().requires_grad_(True)
    win.push(x0r, f0)  # tracked: the sums are new tensors of one term (g) or f0 itself
    f0_copy = f0.clone()
    win.sum_g = win.sum_g.detach()  # the graph is gone (as after a detach by a caller)
    with torch.no_grad():
        win.push(x1, f1)
        win.push(x2, f2)
    assert torch.equal(f0, f0_copy)
    mx, rel = _direct([(x0, f0), (x1, f1), (x2, f2)], 3)
    torch.testing.assert_close(win.mean_x(), mx)
    torch.testing.assert_close(win.mean_rel(), rel)


def test_window_select_keeps_rows() -> None:
    pushes = _pushes(7)
    win = Window(3)
    rows = torch.tensor([0, 2, 5])
    with torch.no_grad():
        for i, (x, fx) in enumerate(pushes):
            if i == 4:
                win.select(rows)
            k = rows if i >= 4 else slice(None)
            win.push(x[k], fx[k])
    kept = [(x[rows], fx[rows]) for x, fx in pushes]
    mx, rel = _direct(kept, 3)
    torch.testing.assert_close(win.mean_x(), mx)
    torch.testing.assert_close(win.mean_rel(), rel)


def test_window_gradients_flow_when_recorded() -> None:
    pushes = _pushes(6, requires_grad=True)
    win = Window(4)
    for x, fx in pushes:
        win.push(x, fx)
    win.mean_x().sum().backward()
    for i, (x, _) in enumerate(pushes):
        if i >= 2:  # the mean of the last 4 points
            torch.testing.assert_close(x.grad, torch.full_like(x, 0.25))
        else:
            assert x.grad is None or torch.count_nonzero(x.grad) == 0
