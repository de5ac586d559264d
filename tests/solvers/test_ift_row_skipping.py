"""The ``ift`` backward solve skipping stopped samples (``f_rows``, ``RowGraph``): the same
input and parameter gradients as the full-batch backward solve, on every cell type, with
and without noise, for attacks and for training."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from torch import nn

import noisydeq.models.deq as deq_module
import noisydeq.solvers.gradients as gradients
from noisydeq.attacks.estimators import make_estimator
from noisydeq.attacks.pgd import pgd
from noisydeq.attacks.spec import EstimatorSpec
from noisydeq.config import NoiseSpec
from noisydeq.hardware import get_device
from noisydeq.hardware.controls import calibrate
from noisydeq.models import DEQ
from noisydeq.models.conv import ConvDEQ
from noisydeq.models.lyapunov import LyaDEQ
from noisydeq.models.mdeq import MDEQ
from noisydeq.noise import (
    Noise,
    NoiseStream,
    ReplayMismatch,
    record_draws,
    replay_draws,
    row_subset,
)
from noisydeq.specs.solver import GradientSpec


@pytest.fixture(autouse=True)
def _skip_small_states(monkeypatch):
    """These models are small (width 32): skip stopped rows whatever the state size."""
    monkeypatch.setattr(gradients, "ROW_SKIP_MIN_FEATURES", 0)


BATCH = 48  # rows: the backward working set halves at least once (MIN_ROWS = 16)


def _inputs(features: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # input scales from 0.05 to 3: the samples' backward solves stop at different steps
    x = torch.randn(BATCH, features, generator=g) * torch.linspace(0.05, 3.0, BATCH)[:, None]
    return x, torch.randint(0, 4, (BATCH,), generator=g)


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":
        return DEQ(20, 32, 4)
    if kind == "conv":
        return ConvDEQ(64, 4, 4, in_shape=(1, 8, 8), pool=2)
    if kind == "mdeq":
        return MDEQ(64, 8, 4, in_shape=(1, 8, 8), scales=2, norm_groups=2, pool=2)
    model = LyaDEQ(20, 32, 4)
    with torch.no_grad():  # non-trivial running statistics (used in every call of f)
        for bn in (model.cell.bn1, model.cell.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    return model


FEATURES = {"mlp": 20, "conv": 64, "mdeq": 64, "lyadeq": 20}


@contextmanager
def _full_batch_backward():
    """The reference: the ``ift`` backward solve without ``f_rows`` (every row, every step)."""
    saved = deq_module.attach_gradient

    def full(f, z, spec=None, adjoint=None, f_rows=None):
        return saved(f, z, spec, adjoint)

    deq_module.attach_gradient = full
    try:
        yield
    finally:
        deq_module.attach_gradient = saved


@contextmanager
def _count_recordings(into: list[int]):
    saved = gradients.RowGraph.focus

    def focus(self, rows):
        before = self.recorded
        saved(self, rows)
        into.append(self.recorded - before)

    gradients.RowGraph.focus = focus
    try:
        yield
    finally:
        gradients.RowGraph.focus = saved


def _noise(kind: str | None, seed: int = 7) -> Noise | None:
    if kind is None:
        return None
    return Noise(NoiseSpec(site="signal", snr_db=10.0), NoiseStream.from_seed(seed))


def _grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: Noise | None,
           method: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Input and parameter gradients of the loss (the model's buffers, such as the
    LyaDEQ's running statistics, are restored after: every call sees the same model)."""
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    try:
        return _grads_once(model, x, y, noise, method)
    finally:
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(buffers[k])


def _grads_once(model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: Noise | None,
                method: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    grad = GradientSpec(name="ift", backward_method=method)
    if method == "fixed-point":  # every row converges (the multiscale DEQ needs > 40 steps)
        grad.backward_solver = grad.backward_solver.model_copy(update={"max_iter": 100})
    model.gradient = grad
    model.zero_grad()
    xg = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(model(xg, noise), y)
    loss.backward()
    return xg.grad, [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _assert_same(a, b) -> None:
    """Bitwise: the products on ≥ MIN_ROWS rows round every row as the full batch does
    (as the forward's row skipping, tests/solvers/test_solvers_skip_stopped.py)."""
    (ga, pa), (gb, pb) = a, b
    assert len(pa) == len(pb) and pa
    for u, v in zip([ga, *pa], [gb, *pb], strict=True):
        assert torch.equal(u, v)


@pytest.mark.parametrize("kind", ["mlp", "conv", "mdeq", "lyadeq"])
@pytest.mark.parametrize("noisy", [None, "snr"])
@pytest.mark.parametrize("method", ["fixed-point", "fallback"])
def test_skipping_backward_equals_full_batch(kind, noisy, method):
    model = _model(kind)
    x, y = _inputs(FEATURES[kind])
    for mode in ("train", "eval"):  # training (parameter gradients) and eval (attacks)
        model.train(mode == "train")
        with _full_batch_backward():
            ref = _grads(model, x, y, _noise(noisy), method)
        recorded: list[int] = []
        with _count_recordings(recorded):
            got = _grads(model, x, y, _noise(noisy), method)
        assert sum(recorded) >= 1, "the backward solve never skipped a stopped row"
        _assert_same(ref, got)


def test_skipping_backward_on_a_device_with_read_noise():
    torch.manual_seed(0)
    x, y = _inputs(20, seed=3)
    net = get_device("rram", snr_db=10.0, chip=1).deploy(DEQ(20, 32, 4)).eval()
    calibrate(net, x)

    def run():
        for layer in net.modules():
            if hasattr(layer, "stream") and isinstance(layer.stream, NoiseStream):
                layer.stream = NoiseStream.from_seed(5)
        return _grads(net, x, y, None, "fallback")

    with _full_batch_backward():
        run()  # (the first call after calibration programs the chip)
        ref = run()
    recorded: list[int] = []
    with _count_recordings(recorded):
        got = run()
    assert sum(recorded) >= 1
    _assert_same(ref, got)


def test_the_recorded_rows_see_the_draws_of_the_full_batch_call(monkeypatch):
    """Without the replay a re-recorded subset draws the next numbers: another Jacobian."""
    model = _model("mlp")
    x, y = _inputs(20)
    with _full_batch_backward():
        ref = _grads(model, x, y, _noise("snr"), "fixed-point")
    same = _grads(model, x, y, _noise("snr"), "fixed-point")

    @contextmanager
    def no_replay(tape):
        yield tape

    monkeypatch.setattr(gradients, "replay_draws", no_replay)
    fresh = _grads(model, x, y, _noise("snr"), "fixed-point")
    assert torch.equal(ref[0], same[0])
    assert not torch.equal(ref[0], fresh[0])


def test_streams_end_where_the_full_batch_backward_leaves_them():
    model = _model("mlp")
    x, y = _inputs(20)
    noises = []
    for ctx in (_full_batch_backward, _count_recordings):
        noise = _noise("snr")
        with ctx([]) if ctx is _count_recordings else ctx():
            _grads(model, x, y, noise, "fallback")
        noises.append(noise.stream.randn((BATCH, 5), torch.float32, torch.device("cpu")))
    assert torch.equal(noises[0], noises[1])


def test_an_f_rows_drawing_other_noise_keeps_the_full_batch_products():
    """A replay that finds other draws than the recording never changes the map."""
    model = _model("mlp")
    x, y = _inputs(20)
    noise = _noise("snr")
    with _full_batch_backward():
        ref = _grads(model, x, y, _noise("snr"), "fallback")
    extra = NoiseStream.from_seed(99)
    original = DEQ.cell_fn_rows

    def odd_rows(self, xt, noise=None):
        rows_f = original(self, xt, noise)

        def f(z, rows):  # one more draw than f itself makes
            extra.randn(z.shape, z.dtype, z.device)
            return rows_f(z, rows)

        return f

    recorded: list[int] = []
    try:
        DEQ.cell_fn_rows = odd_rows  # type: ignore[method-assign]
        with _count_recordings(recorded):
            got = _grads(model, x, y, noise, "fallback")
    finally:
        DEQ.cell_fn_rows = original  # type: ignore[method-assign]
    assert sum(recorded) == 0
    _assert_same(ref, got)


def test_draw_tape_replays_a_row_subset_without_drawing():
    stream = NoiseStream.from_seed(3)
    with record_draws() as tape:
        full = stream.randn((20, 6), torch.float32, torch.device("cpu"))
    after = NoiseStream.from_seed(3)
    after.skip((20, 6))
    rows = torch.tensor([1, 4, 5, 19])
    with row_subset(rows, 20), replay_draws(tape):
        part = stream.randn((4, 6), torch.float32, torch.device("cpu"))
    assert torch.equal(part, full[rows])
    # no count advanced: the next draw is the one after the recorded call
    nxt = stream.randn((20, 6), torch.float32, torch.device("cpu"))
    assert torch.equal(nxt, after.randn((20, 6), torch.float32, torch.device("cpu")))
    with pytest.raises(ReplayMismatch), row_subset(rows, 20), replay_draws(tape):
        stream.randn((4, 7), torch.float32, torch.device("cpu"))
    with pytest.raises(ReplayMismatch), replay_draws(tape):
        pass  # fewer draws than recorded


def test_warm_exact_pgd_gives_the_same_examples(monkeypatch):
    import noisydeq.attacks.estimators as estimators

    model = _model("mlp").eval()
    x, y = _inputs(20, seed=1)
    x = x.clamp(-1, 1) * 0.5 + 0.5
    out = []
    for skip in (False, True):
        if not skip:
            monkeypatch.setattr(estimators, "attach_gradient",
                                lambda f, z, s=None, adjoint=None, f_rows=None:
                                gradients.attach_gradient(f, z, s, adjoint))
        est = make_estimator(model, EstimatorSpec(name="exact", warm=True))
        recorded: list[int] = []
        with _count_recordings(recorded):
            out.append(pgd(est, x, y, eps=0.1, steps=5,
                           generator=torch.Generator().manual_seed(1)))
        assert (sum(recorded) > 0) == skip
        monkeypatch.undo()
        monkeypatch.setattr(gradients, "ROW_SKIP_MIN_FEATURES", 0)
    assert torch.equal(out[0], out[1])


def test_small_states_keep_the_full_batch_backward(monkeypatch):
    """Below ROW_SKIP_MIN_FEATURES elements per sample nothing is skipped (a row carries too
    little work to pay for the working set's gathers)."""
    monkeypatch.setattr(gradients, "ROW_SKIP_MIN_FEATURES", 33)
    model = _model("mlp")  # width 32
    x, y = _inputs(20)
    recorded: list[int] = []
    with _count_recordings(recorded):
        _grads(model, x, y, None, "fixed-point")
    assert recorded == []
