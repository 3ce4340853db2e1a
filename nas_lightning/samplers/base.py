"""Architecture samplers: what a method trains at each step. They know nothing about images."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace


class ArchSampler(ABC):
    """Draws the arch for a training step. ``sample(step)`` must give the same arch on every rank."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    @abstractmethod
    def sample(self, step: int) -> Arch: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state but the checkpoint has {sorted(state)}")
