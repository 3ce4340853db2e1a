"""Evolutionary search over a trained supernet, run at the end of ``nas-lightning validate``.

``nas-lightning validate -c <method config> -c configs/search/evolution.yaml --ckpt_path last.ckpt``
loads the supernet, caches the supernet-val batches, and this callback runs the SPOS evolution
(``nas_lightning.search.evolution``) with inherited-weight accuracy as the score. Each rank scores
every candidate on its shard and the totals are summed, so all ranks run the identical search. The
state after each generation is saved, so a killed search resumes where it stopped; the top archs are
written as JSON, best first, ready for ``StandaloneModule`` retraining.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info

from callbacks._paths import output_dir
from nas_lightning.methods.supernet_module import SupernetModule
from nas_lightning.search.evolution import EvolutionConfig, EvolutionResult, evolution_search, export_top_archs
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.atomic import atomic_write_json
from nas_lightning.utils.distributed import broadcast_object


def format_top_archs(space: SearchSpace, top: list[tuple[Arch, float]]) -> str:
    width = max(len(str(a)) for a, _ in top)
    lines = [f"{'rank':>4}  {'arch':<{width}}  {'val acc (inherited)':>19}  {'params (M)':>10}  {'FLOPs (M)':>9}"]
    for i, (arch, score) in enumerate(top, start=1):
        params, flops = space.cost(arch)
        lines.append(f"{i:>4}  {arch!s:<{width}}  {score:>19.2f}  {params / 1e6:>10.4f}  {flops / 1e6:>9.2f}")
    return "\n".join(lines)


class EvolutionSearch(pl.Callback):
    """SPOS evolutionary search with inherited weights (defaults: SPEC.md, SPOS official code).

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

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.VALIDATING or trainer.sanity_checking:
            return
        if not isinstance(pl_module, SupernetModule):
            raise TypeError(f"EvolutionSearch needs a SupernetModule method, got {type(pl_module).__name__}")
        out = self._dir(trainer)
        state_path = out / "evolution_state.json"
        state: dict[str, Any] | None = None
        if trainer.is_global_zero and self.resume and state_path.exists():
            state = json.loads(state_path.read_text())
        state = broadcast_object(state, trainer)
        if state is not None:
            rank_zero_info(f"resuming the evolution from generation {state['generation']} ({state_path})")

        def save_state(d: dict[str, Any]) -> None:
            if trainer.is_global_zero:
                atomic_write_json(state_path, d)

        space = pl_module.space
        self.result = evolution_search(
            space, lambda archs: pl_module.evaluate(archs).accuracy.tolist(), self.config,
            progress=self.progress and trainer.is_global_zero, state=state, on_generation_end=save_state,
        )
        if trainer.is_global_zero:
            path = export_top_archs(out / "top_archs.json", self.result, space)
            best, score = self.result.best
            rank_zero_info(
                f"\n{format_top_archs(space, self.result.top)}\n\nbest arch: {best}  "
                f"(inherited val acc {score:.2f}%, {len(self.result.scores)} archs evaluated)\nwrote {path}"
            )
