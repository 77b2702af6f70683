"""Fine-tuning tests run tiny models: one intra-op thread is as fast as two, and far faster when
other processes share the cores (OpenMP workers spin-wait for each other)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
