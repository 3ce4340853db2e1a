"""PC-NAS: Posterior-Convergent NAS (Li et al., "Improving One-Shot NAS by Suppressing the Posterior
Fading", CVPR 2020, arXiv:1910.02543).

The shared weights of a one-shot supernet drift from each arch's own posterior as more archs share
them (posterior fading, eqs. 8-10: the KL divergence is a sum of one cross-entropy term per other
arch). PC-NAS shrinks the space progressively so fewer archs share the weights (section 3.3):

- Warm-up (Algorithm 2): T_w epochs of uniform single-path training, as SPOS (eq. 5 of arXiv:1904.00420).
- Then one interval of T_i epochs per decision l: the P partial models of the pool are extended by
  every choice of decision l, each candidate's potential (eq. 11) is the mean one-batch validation
  accuracy of S random completions within the hard latency limit (Algorithm 1), and the top P form
  the new pool (Algorithm 2). Training samples a pool member uniformly and completes it uniformly.
- Output: the final pool, best first (``<output_dir>/final_pool.json``).

Defaults are the paper's (section 4.1): P=5, S=900, T_w=100, T_i=5. The sampler (``PoolSampler``)
holds the pool and its history, checkpointed under "nas_sampler"; the shrinking runs in the
``callbacks.PoolShrinking`` callback that ``configure_callbacks`` adds, so a config cannot forget it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable

from callbacks.pool_shrinking import PoolShrinking
from nas_lightning.latency.base import LatencyModel
from nas_lightning.latency.table import LatencyTable
from nas_lightning.methods.supernet_module import SupernetModule
from nas_lightning.samplers.pool import PartialModelPool, PoolSampler
from nas_lightning.spaces.base import SearchSpace


class PCNAS(SupernetModule):
    """PC-NAS (arXiv:1910.02543, Algorithms 1 and 2): a supernet trained from a shrinking pool.

    Args:
        seed: seed of the training archs (``PoolSampler``) and of the potential completions.
        pool_size: P, partial models kept per shrink.
        num_completions: S, completions per candidate potential (Algorithm 1).
        warmup_epochs: T_w, uniform epochs before the first shrink.
        interval_epochs: T_i, epochs between shrinks. A full search takes T_w + L * T_i epochs
            (L = decisions of the space); the last T_i train the final pool.
        max_latency: hard limit ``latency_model(arch) <= max_latency`` on every trained and evaluated
            completion (section 3.3); None for none.
        latency_model: default ``FlopsProxy(space)`` (MFLOPs).
        latency_table: a latency lookup table file (``nas-lightning measure-latency``) to use as the latency
            model (ms), instead of ``latency_model``; read as it is, so every rank has the same numbers.
        num_val_batches: supernet-val batches that score the completions (see ``PoolShrinking``).
        output_dir: where the pool history CSV and the final pool JSON go.
        Others: see ``SupernetModule``.
    """

    def __init__(self, space: SearchSpace, seed: int = 0, optimizer: OptimizerCallable = torch.optim.SGD,
                 lr_scheduler: LRSchedulerCallable | None = None, scheduler_interval: str = "epoch",
                 label_smoothing: float = 0.0, eval_archs: Sequence[str] | None = None, num_eval_archs: int = 16,
                 eval_seed: int = 0, bn_recalibration: int = 0, pool_size: int = 5, num_completions: int = 900,
                 warmup_epochs: int = 100, interval_epochs: int = 5, max_latency: float | None = None,
                 latency_model: LatencyModel | None = None, latency_table: str | None = None,
                 num_val_batches: int = 16, output_dir: str | None = None) -> None:
        if latency_table is not None:
            if latency_model is not None:
                raise ValueError("give latency_model or latency_table, not both")
            latency_model = LatencyTable.load(space, latency_table)
        sampler = PoolSampler(space, seed, max_latency, latency_model)
        super().__init__(space, sampler, optimizer, lr_scheduler, scheduler_interval, label_smoothing, eval_archs,
                         num_eval_archs, eval_seed, bn_recalibration)
        # Built (and its arguments validated) here, handed to the Trainer by configure_callbacks.
        self.pool_shrinking = PoolShrinking(pool_size=pool_size, num_completions=num_completions,
                                            warmup_epochs=warmup_epochs, interval_epochs=interval_epochs, seed=seed,
                                            output_dir=output_dir, num_val_batches=num_val_batches)
        self.save_hyperparameters(ignore=["space", "optimizer", "lr_scheduler", "latency_model"])

    @property
    def pool(self) -> PartialModelPool:
        return self.sampler.pool

    def configure_callbacks(self) -> list[PoolShrinking]:
        return [self.pool_shrinking]
