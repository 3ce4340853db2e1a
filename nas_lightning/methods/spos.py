"""Single Path One-Shot NAS (Guo et al., ECCV 2020, arXiv:1904.00420): the baseline of every paper.

Supernet training (eq. 5): at each step one path a ~ Gamma(A), uniform over every decision, is
trained on one batch: W <- W - lr * grad_W L(N(a, W)). The search that follows is the evolutionary
search of ``nas_lightning.search.evolution``, run by the ``callbacks.EvolutionSearch`` callback.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable

from nas_lightning.methods.supernet_module import SupernetModule
from nas_lightning.samplers.uniform import UniformSampler
from nas_lightning.spaces.base import SearchSpace


class SPOS(SupernetModule):
    """SPOS: uniform single-path sampling, one arch per optimiser step, the same on every rank.

    Args:
        seed: seed of the arch sequence (the arch of step t depends only on (seed, t)).
        Others: see ``SupernetModule``.
    """

    def __init__(self, space: SearchSpace, seed: int = 0, optimizer: OptimizerCallable = torch.optim.SGD,
                 lr_scheduler: LRSchedulerCallable | None = None, scheduler_interval: str = "epoch",
                 label_smoothing: float = 0.0, eval_archs: Sequence[str] | None = None, num_eval_archs: int = 16,
                 eval_seed: int = 0, bn_recalibration: int = 0) -> None:
        super().__init__(space, UniformSampler(space, seed), optimizer, lr_scheduler, scheduler_interval,
                         label_smoothing, eval_archs, num_eval_archs, eval_seed, bn_recalibration)
        self.save_hyperparameters(ignore=["space", "optimizer", "lr_scheduler"])
