"""Models run on CUDA when a GPU is present (skipped otherwise): same clean output as CPU."""

import pytest
import torch

from noisydeq.config import JacobianRegSpec, NoiseSpec, SolverSpec
from noisydeq.models import DEQ, FFW, ConvDEQ
from noisydeq.noise import Noise, NoiseStream

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@cuda
@pytest.mark.parametrize("make", [
    lambda: DEQ(64, 16, 10, solver=SolverSpec(name="unroll", max_iter=100, tol=1e-10,
                                              stop="abs", window=1),
                jac_reg=JacobianRegSpec(weight=1.0)),
    lambda: FFW(64, 16, 3, 10),
    lambda: ConvDEQ(64, 4, 10),
])
def test_cuda_matches_cpu_and_trains(make):
    torch.manual_seed(0)
    cpu = make().double()
    gpu = make().double()
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda()
    x = torch.rand(8, 64, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(cpu(x), gpu(x.cuda()).cpu(), atol=1e-8)
    noise = Noise(NoiseSpec(site="signal", snr_db=10.0), NoiseStream.from_seed(1, "cuda"))
    out = gpu(x.cuda(), noise, return_solution=True,
              generator=torch.Generator(device="cuda").manual_seed(0))
    loss = out.logits.square().mean()
    if out.jac_loss is not None:
        loss = loss + out.jac_loss
    loss.backward()
    assert all(p.grad is None or p.grad.is_cuda for p in gpu.parameters())
    grads = [p.grad for p in gpu.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
