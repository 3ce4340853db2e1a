"""How well the supernet ranks archs: inherited-weight accuracy against ground truth.

At chosen epochs of ``fit`` and at the end of ``validate``, the GT archs are evaluated with inherited
weights (``pl_module.evaluate``, each rank on its shard, summed) and handed to
``nas_lightning.metrics.ranking_report.RankingEvaluator``, which reports Kendall tau, Spearman, Pearson,
precision@k and the GT rank of the supernet's top arch beside the GT's seed-to-seed ceiling and the cost
proxies. The callback logs them under ``rank/`` and writes a per-arch CSV, a JSON summary and a rank-scatter PNG
per evaluation; with a ``WandbLogger`` the per-arch table (``rank/archs``) and the scatter (``rank/scatter``) go to
W&B too (``nas_lightning.metrics.ranking_report.publish_ranking``).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info
from typing_extensions import override

from callbacks._paths import output_dir
from nas_lightning.methods.supernet_module import SupernetModule
from nas_lightning.metrics.ranking_report import (
    RankingEvaluator,
    evaluation_due,
    format_report,
    logged_metrics,
    publish_ranking,
)
from nas_lightning.spaces.arch import Arch


class RankingEvaluation(pl.Callback):
    """Rank GT archs with inherited weights and compare with ground truth.

    Args:
        ground_truth: GT file: CSV ``arch,accuracy``, JSON, or a NATS-Bench API file.
        every_n_epochs: evaluate during ``fit`` after every n-th epoch (0: only at the end of fit).
        archs_file: rank only these archs (a text, CSV or JSON file as ``nas-lightning cost`` reads;
            e.g. a search's ``top_archs.json`` or PC-NAS's final candidates); the GT must cover them.
        max_archs: evaluate a seeded subset of at most this many GT archs (None: all).
        seed: seed of that subset.
        k: precision@k values.
        output_dir: where CSV/JSON/PNG go (default: ``<trainer.log_dir or default_root_dir>/ranking``).
        metric, nats_dataset: forwarded to the GT loader.
    """

    def __init__(self, ground_truth: str, every_n_epochs: int = 1, archs_file: str | None = None,
                 max_archs: int | None = 100, seed: int = 0,
                 k: tuple[int, ...] = (1, 5, 10), output_dir: str | None = None, metric: str = "accuracy",
                 nats_dataset: str = "cifar10") -> None:
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0 (0: only at the end of fit), got {every_n_epochs}")
        self.ground_truth_path, self.every_n_epochs, self.output_dir = ground_truth, every_n_epochs, output_dir
        self.evaluator = RankingEvaluator(ground_truth, archs_file, max_archs, seed, k, metric, nats_dataset)

    @property
    def archs(self) -> list[Arch]:
        return self.evaluator.archs

    @property
    def last_summary(self) -> dict[str, Any] | None:
        return self.evaluator.last_summary

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(ground_truth=self.ground_truth_path)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, SupernetModule):
            raise TypeError(f"RankingEvaluation needs a SupernetModule method, got {type(pl_module).__name__}")
        self.evaluator.prepare(pl_module.space)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fitting = trainer.state.fn == TrainerFn.FITTING
        if not trainer.sanity_checking and evaluation_due(fitting, trainer.current_epoch, trainer.max_epochs,
                                                          self.every_n_epochs):
            self._evaluate(trainer, pl_module)

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert isinstance(pl_module, SupernetModule)
        fn, epoch = trainer.state.fn, trainer.current_epoch
        summary, rows = self.evaluator.report(pl_module.space, pl_module.evaluate(self.archs).accuracy.tolist(),
                                              epoch=epoch, global_step=trainer.global_step, stage=fn.value)
        pl_module.log_dict(logged_metrics(summary), rank_zero_only=True)
        out = output_dir(trainer, self.output_dir, "ranking")  # trainer.log_dir broadcasts: every rank asks
        if trainer.is_global_zero:
            publish_ranking(out, f"{fn.value}_epoch{epoch}", summary, rows, trainer.loggers, trainer.global_step)
            rank_zero_info(format_report(summary))
