"""Architecture samplers: what a method trains at each step. They know nothing about images."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace


class ArchSampler(ABC):
    """Draws the arch for a training step. ``sample(step)`` must give the same arch on every rank.

    Every sampler is built as ``Sampler(space, seed, **its_own_arguments)``: a method receives a
    ``SamplerFactory`` (``class_path`` plus ``init_args`` in YAML, like an optimiser) and calls it with
    its space and seed, so neither is written twice in a config.
    """

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        self.space = space
        self.seed = seed

    @abstractmethod
    def sample(self, step: int) -> Arch: ...

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # A resumed run continues the checkpoint's sequence, whatever seed the config now gives.
        self.seed = int(state.get("seed", self.seed))


#: ``(space, seed) -> sampler``: how a method receives its sampler (a class, or a class with init_args).
SamplerFactory = Callable[[SearchSpace, int], ArchSampler]
