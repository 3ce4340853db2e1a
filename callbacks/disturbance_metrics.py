"""Performance disturbance during supernet training (DI-NAS, Niu et al., arXiv:2003.13089, section 5.3).

After every validation epoch of ``fit``, a fixed set of archs (64 in the paper) is evaluated with
inherited weights (``pl_module.evaluate``: each rank on its shard, summed) and handed to
``nas_lightning.metrics.disturbance_tracker.DisturbanceTracker``, which keeps the per-epoch accuracies
(checkpointed: they are search state) and computes the section 5.3 metrics. The callback logs
``disturbance/performance_change``, ``disturbance/ktau`` and, with ``ground_truth``, ``disturbance/gt_tau``
and ``disturbance/gt_tau_equal_cost``, and rewrites ``disturbance_metrics.csv`` and
``disturbance_history.csv`` from the history (docs/design_choices.md, "Performance disturbance").

Optionally it also computes the disturbance matrix of Fig. 1b (``matrix_archs`` > 0) on a copy of the
supernet, at the end of fit or after every validation epoch. Every rank computes it, on its own
batches, with gradients averaged and evaluation totals summed over ranks as DDP does, so every rank
runs the same collectives and holds the same matrix; rank 0 writes it. The copy trains with the
method's own update: a callback that offers ``disturbance_step_rule`` (DI-NAS's ``ProjectionMatrixUpdate``
projects the copy's gradients with its P) adds it to every step of the matrix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from callbacks._paths import output_dir
from nas_lightning.methods.supernet_module import SupernetModule
from nas_lightning.metrics.disturbance import (
    DisturbanceMatrix,
    OptimizerFactory,
    StepRuleFactory,
    lr_of,
    optimizer_at_lr,
)
from nas_lightning.metrics.disturbance_tracker import DisturbanceTracker
from nas_lightning.spaces.arch import Arch
from nas_lightning.utils.distributed import reduce_sum


class DisturbanceMetrics(pl.Callback):
    """Measure how much training disturbs the inherited-weight accuracy of a fixed set of archs.

    Args:
        num_archs: size of the fixed set (the paper: 64).
        interval: epoch interval d of the performance change and KTau (the paper: 1 to 3).
        ground_truth: GT file (CSV/JSON/NATS-Bench) for GT-Tau; the fixed set is then drawn from the
            archs it covers.
        matrix_archs: n archs of the disturbance matrix (0: no matrix).
        matrix_at: compute the matrix at the ``"end"`` of fit or after ``"every"`` validation epoch.
        matrix_steps: optimiser steps per arch in the matrix (Fig. 1b: 1).
        matrix_lr: learning rate of the matrix's steps; None: the run's current one (0 at the end of a
            schedule that decays to 0, where the matrix would train nothing).
        seed: seed of the fixed set and of the matrix archs.
        output_dir: where CSVs and PNGs go (default: ``<trainer.log_dir or default_root_dir>/disturbance``).
    """

    def __init__(self, num_archs: int = 64, interval: int = 1, ground_truth: str | None = None,
                 matrix_archs: int = 0, matrix_at: Literal["end", "every"] = "end", matrix_steps: int = 1,
                 matrix_lr: float | None = None, seed: int = 0, output_dir: str | None = None) -> None:
        if matrix_at not in ("end", "every"):
            raise ValueError(f"matrix_at must be 'end' or 'every', got {matrix_at!r}")
        if matrix_lr is not None and not matrix_lr > 0:
            raise ValueError(f"matrix_lr must be > 0 (or None for the run's current learning rate), got {matrix_lr}")
        self.tracker = DisturbanceTracker(num_archs, interval, ground_truth, matrix_archs, matrix_steps, seed)
        self.num_archs, self.seed, self.ground_truth_path = num_archs, seed, ground_truth
        self.matrix_at, self.matrix_lr, self.output_dir = matrix_at, matrix_lr, output_dir

    # The tracker's state, under the names this callback has always offered.
    @property
    def archs(self) -> list[Arch]:
        return self.tracker.archs

    @archs.setter
    def archs(self, archs: list[Arch]) -> None:
        self.tracker.archs = archs

    @property
    def history(self) -> dict[int, list[float]]:
        return self.tracker.history

    @property
    def global_steps(self) -> dict[int, int]:
        return self.tracker.global_steps

    @property
    def last_metrics(self) -> dict[str, float]:
        return self.tracker.last_metrics

    @property
    def last_matrix(self) -> DisturbanceMatrix | None:
        return self.tracker.last_matrix

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(num_archs=self.num_archs, seed=self.seed, ground_truth=self.ground_truth_path)

    @override
    def state_dict(self) -> dict[str, Any]:
        return self.tracker.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state_dict)

    # --- hooks ------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, SupernetModule):
            raise TypeError(f"DisturbanceMetrics needs a SupernetModule method, got {type(pl_module).__name__}")
        self.tracker.choose_archs(pl_module.space)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.tracker.observe_train_batch(batch)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting and not trainer.sanity_checking:
            self._record(trainer, pl_module)

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert isinstance(pl_module, SupernetModule)
        if not pl_module.batches.validation():
            return
        logged = self.tracker.record(trainer.current_epoch, trainer.global_step,
                                     pl_module.evaluate(self.tracker.archs).accuracy.tolist())
        if logged:
            pl_module.log_dict(logged, rank_zero_only=True)
        out = self._out(trainer)  # trainer.log_dir broadcasts under DDP, so every rank asks for it
        if trainer.is_global_zero:
            self.tracker.write_history(out)
        if self.matrix_at == "every":
            self._matrix(trainer, pl_module, f"epoch{trainer.current_epoch}")

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.matrix_at == "end":
            assert isinstance(pl_module, SupernetModule)
            self._matrix(trainer, pl_module, "end")

    # --- the disturbance matrix -------------------------------------------------------------------
    def _matrix(self, trainer: pl.Trainer, pl_module: SupernetModule, tag: str) -> None:
        if not self.tracker.matrix_archs:
            return
        # Batch counts are equal on every rank (the distributed sampler pads), so all ranks skip together.
        if not self.tracker.matrix_ready(pl_module.batches.validation()):
            rank_zero_warn("DisturbanceMetrics: no train or validation batches seen yet; disturbance matrix skipped")
            return
        self.tracker.compute_matrix(
            pl_module.supernet, pl_module.batches.validation(), self._optimizer_factory(trainer, pl_module),
            pl_module.batches.calibration(), pl_module.label_smoothing, lambda t: reduce_sum(t, trainer),
            trainer.world_size, self._step_rule(trainer))
        out = self._out(trainer)
        if trainer.is_global_zero:
            rank_zero_info(f"DisturbanceMetrics: disturbance matrix written to {self.tracker.save_matrix(out, tag)}")

    @staticmethod
    def _step_rule(trainer: pl.Trainer) -> StepRuleFactory | None:
        """The method's own step rule (a callback with ``disturbance_step_rule``, e.g. DI-NAS's projection)."""
        rules = [cb.disturbance_step_rule(trainer) for cb in trainer.callbacks if hasattr(cb, "disturbance_step_rule")]
        if len(rules) > 1:
            raise ValueError(f"DisturbanceMetrics can apply one step rule to its matrix, found {len(rules)} callbacks "
                             "with disturbance_step_rule")
        return rules[0] if rules else None

    def _optimizer_factory(self, trainer: pl.Trainer, pl_module: SupernetModule) -> OptimizerFactory:
        """The method's optimiser factory at ``matrix_lr``, or else at the learning rate the run uses now (so
        a schedule is followed)."""
        lr = self.matrix_lr
        if lr is None:
            lr = lr_of(trainer.optimizers, pl_module.supernet.parameters())
        if lr == 0:
            rank_zero_warn("DisturbanceMetrics: the run's learning rate is 0 now (the end of its schedule), so the "
                           "disturbance matrix trains nothing; set matrix_lr or matrix_at='every'")
        return optimizer_at_lr(pl_module.optimizer_factory, lr)

    def _out(self, trainer: pl.Trainer) -> Path:
        return output_dir(trainer, self.output_dir, "disturbance")
