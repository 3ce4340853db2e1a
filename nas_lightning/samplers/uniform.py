"""Uniform single-path sampling (SPOS, Guo et al. 2019, arXiv:1904.00420, eq. 5)."""

from __future__ import annotations

from typing import Any

from nas_lightning.samplers.base import ArchSampler
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.distributed import step_generator


class UniformSampler(ArchSampler):
    """Each decision uniformly at random. The draw for step t depends only on (seed, t), so every
    DDP rank trains the same arch and a resumed run continues the same sequence."""

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        super().__init__(space)
        self.seed = seed

    def sample(self, step: int) -> Arch:
        return self.space.sample(step_generator(self.seed, "uniform", step))

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # A resumed run continues the checkpoint's sequence, whatever seed the config now gives.
        self.seed = int(state.get("seed", self.seed))
