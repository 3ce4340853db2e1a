"""Shared fixtures: small spaces that build in milliseconds."""

from __future__ import annotations

import pytest
import torch

from nas_lightning.spaces import ChainSpace, DartsSpace, DeeperInsightsSpace, MobileNetSpace, NB201Space, SearchSpace

# The tests run tiny convolutions, where a second thread costs more than it gains (and on a loaded
# 2-core machine, far more).
torch.set_num_threads(1)

# Every registered space in a small configuration; space tests are parametrized over this list.
SMALL_SPACES: dict[str, callable] = {
    "nb201": lambda: NB201Space(C=4, N=1, num_classes=5, in_channels=1, input_size=8),
    "chain": lambda: ChainSpace(num_layers=3, C=4, num_classes=5, in_channels=1, input_size=8),
    "darts": lambda: DartsSpace(C=4, layers=3, num_classes=5, in_channels=1, input_size=8),
    "mobilenet": lambda: MobileNetSpace("large", width_mult=0.25, num_classes=5, in_channels=1, input_size=8,
                                        depths=[1, 2, 1, 1, 1, 1]),
    "deeper_insights": lambda: DeeperInsightsSpace(C=4, num_cells=2, num_classes=5, in_channels=1, input_size=8),
}


@pytest.fixture(params=sorted(SMALL_SPACES))
def small_space(request: pytest.FixtureRequest) -> SearchSpace:
    return SMALL_SPACES[request.param]()


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)
