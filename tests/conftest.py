import os

import numpy as np
import pytest
import torch
from torch import nn

# Under pytest-xdist each worker gets one thread: two workers with two threads each on two
# cores spin against each other and run several times slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # for the CLI subprocesses the tests start


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights AND random BN statistics, so equivalence tests exercise every tensor."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def random_pixels(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Seeded random uint8 pixels: the content of the test images written to disk."""
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item()


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)
