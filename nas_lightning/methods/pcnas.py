"""PC-NAS: Posterior-Convergent NAS (Li et al., "Improving One-Shot NAS by Suppressing the Posterior
Fading", CVPR 2020, arXiv:1910.02543).

Shared weights drift from each arch's own posterior as more archs share them (posterior fading, eqs.
8-10), so PC-NAS shrinks the space progressively (section 3.3, Algorithm 2): after T_w uniform warm-up
epochs, every T_i epochs ``shrink_pool`` extends the P partial models by every choice of the next
decision, scores each candidate by its potential (eq. 11: mean one-batch validation accuracy of S
completions within the hard latency limit, Algorithm 1) and keeps the top P. Training samples a pool
member and completes it (``PoolSampler``); the output is the final pool, best first (``final_pool``).
The schedule and the files belong to the ``callbacks.PoolShrinking`` callback. Defaults are the paper's
(section 4.1); docs/design_choices.md, "PC-NAS", lists the choices the paper leaves open.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from typing_extensions import override

from nas_lightning.data.batch_source import Batch
from nas_lightning.methods.supernet_module import SupernetModule, require_callbacks
from nas_lightning.samplers.pool import PartialModelPool, PoolSampler, Prefix
from nas_lightning.search.pool_shrink import best_completions, final_pool_rows, next_pool, shrink_record
from nas_lightning.search.potential import PotentialResult, potentials
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.distributed import reduce_sum, step_generator


class PCNAS(SupernetModule):
    """PC-NAS (arXiv:1910.02543, Algorithms 1 and 2): a supernet trained from a shrinking pool.

    Args:
        sampler: ``(space, seed) -> PoolSampler``; its ``max_latency`` and ``latency_model`` (or
            ``latency_table``) set the hard latency limit of training and of the potentials.
        pool_size: P, partial models kept per shrink.
        num_completions: S, completions per candidate potential (Algorithm 1).
        num_val_batches: B, supernet-val batches that score the completions of one shrink: drawn afresh for
            every shrink from the whole split, seeded by (``seed``, shrink index), the same on every rank;
            completion j of every candidate uses batch ``j mod B`` (``potential_batches``). They are held in
            memory on every rank during the shrink (16 ImageNet batches of 256: 2.4 GB).
        max_tries_factor: rejection sampling of S valid completions gives up after S times this many draws.
        kwargs: see ``SupernetModule``; ``seed`` also seeds the completions of every shrink.
    """

    search_val_batches = "whole"  # potentials score completions on full supernet-val batches (checked at setup)

    def __init__(self, space: SearchSpace, sampler: Callable[[SearchSpace, int], PoolSampler] = PoolSampler,
                 pool_size: int = 5, num_completions: int = 900, num_val_batches: int = 16,
                 max_tries_factor: int = 10, **kwargs: Any) -> None:
        for name, value in (("pool_size", pool_size), ("num_completions", num_completions),
                            ("num_val_batches", num_val_batches), ("max_tries_factor", max_tries_factor)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PCNAS {name} must be an int >= 1, got {value!r}")
        super().__init__(space, sampler=sampler, **kwargs)
        if not isinstance(self.sampler, PoolSampler):
            raise TypeError(f"PCNAS needs a PoolSampler, got {type(self.sampler).__name__}")
        self.pool_size, self.num_completions = pool_size, num_completions
        self.num_val_batches, self.max_tries_factor = num_val_batches, max_tries_factor
        self.last_result: PotentialResult | None = None  # the latest shrink's potentials, for inspection

    @property
    def pool(self) -> PartialModelPool:
        return self.sampler.pool

    @override
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            require_callbacks(self.trainer, "PCNAS", ["PoolShrinking"], "configs/pcnas/chain_synthetic.yaml")

    def shrink_pool(self, epoch: int) -> dict[str, Any]:
        """Algorithm 2, one iteration: Extend, Potential (Algorithm 1), Top P; returns the shrink's record."""
        kept, result = next_pool(self.pool.members, self.space,
                                 lambda candidates: self.potentials(candidates, "potential"), self.pool_size)
        record = shrink_record(self.pool, self.space, result, kept, epoch)
        self.pool.advance(kept, record)
        self.last_result = result
        return record

    def final_pool(self) -> list[dict[str, Any]]:
        """The pool, best first, as full archs. Members still partial when training ended are completed
        with their best of S valid completions, drawn from ``(seed, "final", shrinks done)``."""
        completed = None
        if self.pool.members and not self.pool.is_complete(self.space):
            completed = best_completions(self.potentials(self.pool.members, "final"))
        return final_pool_rows(self.pool, self.space, self.sampler.limit, completed)

    def potential_batches(self, stream: str, shrink: int) -> list[Batch]:
        """The ``num_val_batches`` supernet-val batches that score shrink ``shrink`` (``stream="potential"``) or
        the final pool after ``shrink`` shrinks (``"final"``).

        Algorithm 1 scores each completion on one random validation batch. Loading a batch per completion
        (S = 900 per candidate, on every rank: the potentials shard over archs, not data) would cost far more
        than the forwards, so each shrink draws B batches from the whole split in a seeded random order and
        the completions share them (docs/design_choices.md, "PC-NAS"). A function of (seed, stream, shrink)
        alone, so every rank and a resumed run draw the same batches.
        """
        return list(self.batches.seeded_val(self.num_val_batches,
                                            step_generator(self.seed, f"{stream}_batches", shrink)))

    def potentials(self, candidates: list[Prefix], stream: str) -> PotentialResult:
        """Algorithm 1 for ``candidates``, split over the ranks by arch; identical on every rank."""
        trainer = self.trainer
        shrink = len(self.pool.history)
        return potentials(
            self.supernet, candidates, self.potential_batches(stream, shrink), self.num_completions,
            step_generator(self.seed, stream, shrink), self.sampler.limit,
            rank=trainer.global_rank, world_size=trainer.world_size, reduce=lambda t: reduce_sum(t, trainer),
            calibration=self.batches.calibration(), max_tries_factor=self.max_tries_factor,
        )
