"""Round-robin sampling: every arch of the space once per cycle (Zhang et al., "Deeper Insights into Weight
Sharing in Neural Architecture Search", arXiv:2001.01431: each child model is trained in turn, one per step).

Cycle c covers steps ``c * N .. (c + 1) * N - 1`` of a space of N archs, in an order shuffled afresh from
(seed, c) (docs/design_choices.md, "Reduced sharing"). The arch of a step is a function of (seed, step) alone,
so every DDP rank trains the same arch and a resumed run continues the same cycle.
"""

from __future__ import annotations

import torch
from typing_extensions import override

from nas_lightning.samplers.base import ArchSampler
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.distributed import step_generator

#: Most archs a space may have: a cycle builds a permutation of all of them.
MAX_ROUND_ROBIN_ARCHS = 1 << 24


class RoundRobinSampler(ArchSampler):
    """Args:
        space: a space small enough to enumerate (at most ``MAX_ROUND_ROBIN_ARCHS`` archs).
        seed: seed of each cycle's order.
        shuffle: a fresh seeded order every cycle (True) or the enumeration order every cycle (False).
    """

    def __init__(self, space: SearchSpace, seed: int = 0, shuffle: bool = True) -> None:
        super().__init__(space, seed)
        if space.num_archs > MAX_ROUND_ROBIN_ARCHS:
            raise ValueError(f"round-robin sampling visits every arch per cycle; {type(space).__name__} has "
                             f"{space.num_archs} (limit {MAX_ROUND_ROBIN_ARCHS}): use a uniform sampler")
        self.shuffle = shuffle
        self._order: tuple[int, torch.Tensor] | None = None  # (cycle, order) of the last cycle asked for

    def order(self, cycle: int) -> torch.Tensor:
        """Enumeration indices of the archs in the order cycle ``cycle`` trains them."""
        n = self.space.num_archs
        if not self.shuffle:
            return torch.arange(n)
        if self._order is None or self._order[0] != cycle:
            self._order = (cycle, torch.randperm(n, generator=step_generator(self.seed, "round_robin", cycle)))
        return self._order[1]

    @override
    def sample(self, step: int) -> Arch:
        cycle, position = divmod(step, self.space.num_archs)
        return self.space.arch_at(int(self.order(cycle)[position]))

    @override
    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._order = None  # the cached order may belong to another seed
