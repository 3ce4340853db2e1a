"""The LightningModule shape of every one-shot method: a supernet plus an arch sampler."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics.classification import MulticlassAccuracy

from nas_lightning.evaluation.inherited import Batch, EvalTotals, evaluate_archs
from nas_lightning.methods.base import NASModule
from nas_lightning.samplers.base import ArchSampler
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.distributed import reduce_sum, step_generator

SamplerT = TypeVar("SamplerT", bound=ArchSampler)


def require_sampler(module: Any, sampler_type: type[SamplerT], needed_by: str, example: str) -> SamplerT:
    """``module.sampler`` if ``module`` is a ``SupernetModule`` whose sampler is a ``sampler_type``; otherwise a
    TypeError naming what ``needed_by`` (a callback) got, and a method (``example``) that has one."""
    sampler = getattr(module, "sampler", None)
    if not isinstance(module, SupernetModule) or not isinstance(sampler, sampler_type):
        raise TypeError(f"{needed_by} needs a SupernetModule whose sampler is a {sampler_type.__name__} "
                        f"(e.g. {example}), got {type(module).__name__} with {type(sampler).__name__}")
    return sampler


class SupernetModule(NASModule):
    """Trains ``space.build_supernet()`` on the arch that ``sampler`` draws at each optimiser step.

    Validation evaluates a fixed set of archs with inherited weights: the configured
    ``eval_archs``, or ``num_eval_archs`` drawn with ``eval_seed``. Each rank evaluates them on its
    shard of the validation data and the totals are summed over ranks, so every rank holds the same
    numbers. Callbacks (ranking, search) evaluate further archs through ``evaluate``. The validation
    batches of the epoch are kept on the module's device for that: bound them with
    ``trainer.limit_val_batches`` on large data sets (SPOS scores ImageNet candidates on 250 batches).

    Args:
        sampler: draws the training arch of each step; its state is checkpointed.
        eval_archs: arch strings to evaluate at validation.
        num_eval_archs: how many archs to draw when ``eval_archs`` is not given.
        eval_seed: seed of that draw.
        bn_recalibration: K > 0 re-estimates BN statistics on K training batches per arch before
            evaluating it (SPOS practice); 0 normalises each evaluation batch by its own statistics.
    """

    def __init__(self, space: SearchSpace, sampler: ArchSampler, optimizer: OptimizerCallable = torch.optim.SGD,
                 lr_scheduler: LRSchedulerCallable | None = None, scheduler_interval: str = "epoch",
                 label_smoothing: float = 0.0, eval_archs: Sequence[str] | None = None, num_eval_archs: int = 16,
                 eval_seed: int = 0, bn_recalibration: int = 0) -> None:
        super().__init__(space, optimizer, lr_scheduler, scheduler_interval, label_smoothing)
        if bn_recalibration < 0 or num_eval_archs < 0:
            raise ValueError(
                f"bn_recalibration and num_eval_archs must be >= 0, got {bn_recalibration}, {num_eval_archs}"
            )
        self.sampler = sampler
        self.supernet = space.build_supernet()
        self.eval_archs: list[Arch] = (
            [space.decode(a) for a in eval_archs] if eval_archs
            else space.sample_many(num_eval_archs, step_generator(eval_seed, "eval", 0))
        )
        self.bn_recalibration = bn_recalibration
        self.train_acc = MulticlassAccuracy(space.num_classes, average="micro")
        self.current_arch: Arch | None = None
        self.eval_results: dict[Arch, float] = {}
        self._val_batches: list[Batch] = []
        self._calibration: list[Batch] | None = None

    # --- training --------------------------------------------------------------------------------
    def sample_arch(self) -> Arch:
        """The arch of this optimiser step: a function of the step alone, so ranks agree."""
        return self.sampler.sample(self.global_step)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.current_arch = self.sample_arch()
        logits = self.supernet(x, self.current_arch)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        self.train_acc(logits, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    # --- inherited-weight evaluation -------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_batches = []
        self._calibration = None  # weights changed since the last recalibration source was drawn

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        # Kept for the epoch end, where every arch (and every callback's archs) runs on them.
        self._val_batches.append((batch[0].detach(), batch[1].detach()))

    def on_validation_epoch_end(self) -> None:
        if not self.eval_archs or not self._val_batches:
            return
        acc = self.evaluate(self.eval_archs).accuracy
        self.eval_results = dict(zip(self.eval_archs, acc.tolist()))
        self.log_dict({"val/acc_mean": acc.mean(), "val/acc_max": acc.max(), "val/acc_min": acc.min()},
                      prog_bar=True, rank_zero_only=True)

    @property
    def val_batches(self) -> list[Batch]:
        """The validation batches of the latest validation epoch (this rank's shard)."""
        return self._val_batches

    def calibration_batches(self) -> list[Batch]:
        """The first K supernet-train batches, drawn the same way on every rank."""
        if self.bn_recalibration == 0:
            return []
        if self._calibration is None:
            datamodule = self.trainer.datamodule
            datamodule.setup("fit")
            batches = []
            for x, y in datamodule.train_dataloader():
                batches.append((x.to(self.device), y.to(self.device)))
                if len(batches) == self.bn_recalibration:
                    break
            self._calibration = batches
        return self._calibration

    def evaluate(self, archs: Sequence[Arch], batches: Sequence[Batch] | None = None) -> EvalTotals:
        """Inherited-weight totals of ``archs`` on the validation batches, summed over all ranks."""
        batches = self._val_batches if batches is None else batches
        if not batches:
            raise RuntimeError("no validation batches to evaluate on: run a validation epoch first")
        totals = evaluate_archs(self.supernet, archs, batches, self.calibration_batches())
        return EvalTotals.from_stacked(reduce_sum(totals.stacked(), self._trainer))

    # --- search state ----------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nas_sampler"] = self.sampler.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "nas_sampler" in checkpoint:
            self.sampler.load_state_dict(checkpoint["nas_sampler"])
