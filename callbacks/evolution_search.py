"""Evolutionary search over a trained supernet, run at the end of ``nas-lightning validate``.

``nas-lightning validate -c <method config> -c configs/search/evolution.yaml --ckpt_path last.ckpt``
loads the supernet, caches the supernet-val batches, and this callback runs the SPOS evolution (Guo et
al., arXiv:1904.00420, Algorithm 1) with inherited-weight accuracy as the score. Each rank scores every
candidate on its shard and the totals are summed, so all ranks run the identical search.
``nas_lightning.search.evolution_run.EvolutionRun`` saves the state after each generation (a killed
search resumes where it stopped) and writes the top archs as JSON, best first, ready for
``StandaloneModule`` retraining.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info
from typing_extensions import override

from callbacks._paths import output_dir
from nas_lightning.methods.supernet_module import SupernetModule
from nas_lightning.search.evolution import EvolutionConfig, EvolutionResult
from nas_lightning.search.evolution_run import EvolutionRun
from nas_lightning.utils.distributed import broadcast_object


class EvolutionSearch(pl.Callback):
    """SPOS evolutionary search with inherited weights (defaults: the SPOS paper and official code;
    docs/design_choices.md, "SPOS").

    Args:
        population, generations, topk, num_mutation, num_crossover, mutation_prob: evolution settings.
        max_flops, max_params: hard limits checked before an arch is evaluated (FLOPs as
            ``torch.utils.flop_counter`` counts them for one image).
        seed: seed of the search.
        output_dir: where ``top_archs.json`` and ``evolution_state.json`` go (default:
            ``<trainer.log_dir or default_root_dir>/search``).
        resume: continue from ``evolution_state.json`` when it exists.
        progress: show the progress bar.
    """

    def __init__(self, population: int = 50, generations: int = 20, topk: int = 10, num_mutation: int = 25,
                 num_crossover: int = 25, mutation_prob: float = 0.1, max_flops: float | None = None,
                 max_params: float | None = None, seed: int = 0, output_dir: str | None = None, resume: bool = True,
                 progress: bool = True) -> None:
        self.config = EvolutionConfig(population=population, generations=generations, topk=topk,
                                      num_mutation=num_mutation, num_crossover=num_crossover,
                                      mutation_prob=mutation_prob, max_flops=max_flops, max_params=max_params,
                                      seed=seed)
        self.output_dir, self.resume, self.progress = output_dir, resume, progress
        self.result: EvolutionResult | None = None

    def _dir(self, trainer: pl.Trainer) -> Path:
        return output_dir(trainer, self.output_dir, "search")

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING and not trainer.sanity_checking:
            self._search(trainer, pl_module)

    def _search(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not isinstance(pl_module, SupernetModule):
            raise TypeError(f"EvolutionSearch needs a SupernetModule method, got {type(pl_module).__name__}")
        run = EvolutionRun(self._dir(trainer), self.config, self.resume, trainer.is_global_zero,
                           lambda obj: broadcast_object(obj, trainer), rank_zero_info)
        self.result = run.search(pl_module.space, lambda archs: pl_module.evaluate(archs).accuracy.tolist(),
                                 self.progress)
