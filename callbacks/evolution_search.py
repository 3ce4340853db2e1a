"""Evolutionary search over a trained supernet, run at the end of ``nas-lightning validate``.

``nas-lightning validate -c <method config> -c configs/search/evolution.yaml --ckpt_path last.ckpt``
loads the supernet, caches the supernet-val batches, and this callback runs the SPOS evolution (Guo et
al., arXiv:1904.00420, Algorithm 1) with inherited-weight accuracy as the score. Each rank scores every
candidate on its shard and the totals are summed, so all ranks run the identical search.
``nas_lightning.search.evolution_run.EvolutionRun`` saves the state after each generation (a killed
search resumes where it stopped) and writes the top archs as JSON, best first, ready for
``StandaloneModule`` retraining. The state records the checkpoint (``trainer.ckpt_path``, its global step
and a hash of the supernet's weights) and the settings it belongs to; a state of another checkpoint or
other settings is refused with the differences named (rule and remedies:
``nas_lightning.search.evolution_run``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info
from typing_extensions import override

from callbacks._paths import output_dir
from nas_lightning.latency.base import LatencyModel
from nas_lightning.methods.supernet_module import SupernetModule
from nas_lightning.search.evolution import EvolutionConfig, EvolutionResult, build_latency_model
from nas_lightning.search.evolution_run import EvolutionRun, supernet_provenance
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.distributed import broadcast_object, reduce_sum


class EvolutionSearch(pl.Callback):
    """SPOS evolutionary search with inherited weights (defaults: the SPOS paper and official code;
    docs/design_choices.md, "SPOS").

    Args:
        population, generations, topk, num_mutation, num_crossover, mutation_prob: evolution settings.
        max_flops, max_params: hard limits checked before an arch is evaluated (FLOPs as
            ``torch.utils.flop_counter`` counts them for one image).
        max_latency: hard limit on the latency model's value, checked before an arch is evaluated (as
            PC-NAS's, arXiv:1910.02543 section 3.3, so SPOS and PC-NAS compare under one limit).
        latency_model: ``space -> LatencyModel`` (a class such as ``nas_lightning.latency.FlopsProxy``, the
            default, in MFLOPs; ``class_path`` + ``init_args`` without the space in YAML).
        latency_table: instead of ``latency_model``, a measured lookup table (``nas-lightning measure-latency``,
            ms). These three take the values ``PoolSampler`` takes, so one limit configures both methods.
        seed: seed of the search.
        output_dir: where ``top_archs.json`` and ``evolution_state.json`` go (default:
            ``<trainer.log_dir or default_root_dir>/search``).
        resume: continue from ``evolution_state.json`` when it exists and belongs to this checkpoint and these
            settings (another is refused); False starts afresh and overwrites it.
        progress: show the progress bar.
    """

    def __init__(self, population: int = 50, generations: int = 20, topk: int = 10, num_mutation: int = 25,
                 num_crossover: int = 25, mutation_prob: float = 0.1, max_flops: float | None = None,
                 max_params: float | None = None, max_latency: float | None = None,
                 latency_model: Callable[[SearchSpace], LatencyModel] | None = None, latency_table: str | None = None,
                 seed: int = 0, output_dir: str | None = None, resume: bool = True, progress: bool = True) -> None:
        self.config = EvolutionConfig(population=population, generations=generations, topk=topk,
                                      num_mutation=num_mutation, num_crossover=num_crossover,
                                      mutation_prob=mutation_prob, max_flops=max_flops, max_params=max_params,
                                      max_latency=max_latency, seed=seed)
        if max_latency is None and (latency_model is not None or latency_table is not None):
            raise ValueError("EvolutionSearch got a latency_model or latency_table but no max_latency: set "
                             "max_latency (the limit, in the model's unit) or drop them")
        if latency_model is not None and latency_table is not None:
            raise ValueError("give EvolutionSearch latency_model or latency_table, not both")
        self.latency_model, self.latency_table = latency_model, latency_table
        self.output_dir, self.resume, self.progress = output_dir, resume, progress
        self.result: EvolutionResult | None = None
        self.latency: LatencyModel | None = None  # built at setup, when the space is known
        self.checkpoint_step: int | None = None  # global step of the checkpoint loaded in this run

    def _dir(self, trainer: pl.Trainer) -> Path:
        return output_dir(trainer, self.output_dir, "search")

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Before the checkpoint loads (which sets the step again) and before any epoch: a bad table fails here.
        self.checkpoint_step = None
        if self.config.max_latency is not None and isinstance(pl_module, SupernetModule):
            self.latency = build_latency_model(pl_module.space, self.latency_model, self.latency_table)

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self.checkpoint_step = checkpoint.get("global_step")

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING and not trainer.sanity_checking:
            self._search(trainer, pl_module)

    def _search(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(pl_module, SupernetModule):
            raise TypeError(f"EvolutionSearch needs a SupernetModule method, got {type(pl_module).__name__}")
        provenance = supernet_provenance(pl_module, trainer.ckpt_path, self.checkpoint_step,
                                         lambda t: reduce_sum(t, trainer))
        run = EvolutionRun(self._dir(trainer), self.config, self.resume, trainer.is_global_zero,
                           lambda obj: broadcast_object(obj, trainer), rank_zero_info, self.latency, provenance)
        self.result = run.search(pl_module.space, lambda archs: pl_module.evaluate(archs).accuracy.tolist(),
                                 self.progress)
