"""Single Path One-Shot NAS (Guo et al., ECCV 2020, arXiv:1904.00420): the baseline of every paper.

Supernet training (eq. 5): at each step one path a ~ Gamma(A), uniform over every decision, is
trained on one batch: W <- W - lr * grad_W L(N(a, W)). The search that follows is the evolutionary
search of ``nas_lightning.search.evolution``, run by the ``callbacks.EvolutionSearch`` callback
(docs/design_choices.md, "SPOS").
"""

from __future__ import annotations

from typing import Any

from nas_lightning.methods.supernet_module import SupernetModule
from nas_lightning.samplers.uniform import UniformSampler
from nas_lightning.spaces.base import SearchSpace


class SPOS(SupernetModule):
    """SPOS: uniform single-path sampling, one arch per optimiser step, the same on every rank.

    Args:
        kwargs: see ``SupernetModule`` (``seed`` seeds the arch sequence).
    """

    def __init__(self, space: SearchSpace, **kwargs: Any) -> None:
        super().__init__(space, sampler=UniformSampler, **kwargs)
