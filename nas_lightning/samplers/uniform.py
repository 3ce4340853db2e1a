"""Uniform single-path sampling (SPOS, Guo et al. 2019, arXiv:1904.00420, eq. 5)."""

from __future__ import annotations

from typing_extensions import override

from nas_lightning.samplers.base import ArchSampler
from nas_lightning.spaces.arch import Arch
from nas_lightning.utils.distributed import step_generator


class UniformSampler(ArchSampler):
    """Each decision uniformly at random. The draw for step t depends only on (seed, t), so every
    DDP rank trains the same arch and a resumed run continues the same sequence."""

    @override
    def sample(self, step: int) -> Arch:
        return self.space.sample(step_generator(self.seed, "uniform", step))
