"""Model tests use tiny tensors: one intra-op thread avoids spin-wait overhead on shared cores."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
