"""The LightningModule shape of every one-shot method: a supernet plus an arch sampler.

A method subclasses ``SupernetModule``, lists only its own arguments and passes the rest on with
``**kwargs``; its sampler is a collaborator (``sampler: {class_path: ..., init_args: ...}`` in YAML),
built here with the method's space and seed. Evaluation with inherited weights goes through
``evaluate`` on batches from the one ``BatchSource`` (``self.batches``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, ClassVar, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from nas_lightning.data.batch_source import Batch, BatchSource
from nas_lightning.evaluation.inherited import EvalTotals, evaluate_archs
from nas_lightning.methods.base import NASModule
from nas_lightning.samplers.base import SamplerFactory
from nas_lightning.samplers.uniform import UniformSampler
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.distributed import reduce_sum, step_generator


def require_callbacks(trainer: pl.Trainer, method: str, names: Sequence[str], config: str) -> None:
    """Fail at ``setup`` when a callback the method cannot run without is missing. Checked by class name
    (a subclass counts), since the library never imports the ``callbacks`` package."""
    present = {base.__name__ for cb in trainer.callbacks for base in type(cb).__mro__}
    missing = [n for n in names if n not in present]
    if missing:
        raise RuntimeError(
            f"{method} needs the callback(s) {', '.join(missing)}: add "
            + ", ".join(f"`- class_path: callbacks.{n}`" for n in missing)
            + f" under trainer.callbacks, as {config} does"
        )


def check_val_data(module: SupernetModule, stage: str) -> None:
    """Fail at ``setup``, naming the setting to change, when the supernet-val split cannot give what the
    stage needs: ``validate`` evaluates on it (an empty one would end with no search and no output), and
    during ``fit`` a method whose search scores archs on it (``search_val_batches``) draws full eval batches
    from it after its warm-up epochs."""
    trainer = module.trainer
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is None or stage not in ("validate", "fit"):
        return
    name, fraction = type(module).__name__, getattr(datamodule, "val_fraction", "?")
    if stage == "validate" and not trainer.limit_val_batches:
        raise ValueError(f"{name}: trainer.limit_val_batches={trainer.limit_val_batches} leaves validate nothing "
                         "to evaluate on; set it above 0")
    if stage == "fit" and module.search_val_batches is None:
        return
    images, batch = _val_split(datamodule)
    if stage == "validate" and images == 0:
        raise ValueError(f"{name}: validate has no supernet-val data to evaluate on (data.init_args.val_fraction="
                         f"{fraction} holds 0 images); raise data.init_args.val_fraction")
    if stage == "fit" and batch is not None and images < batch:
        raise ValueError(f"{name} scores archs on full supernet-val batches of {batch} images during training, "
                         f"but the split holds {images} (data.init_args.val_fraction={fraction}); raise "
                         "data.init_args.val_fraction or lower data.init_args.eval_batch_size")
    if stage == "fit" and module.search_val_batches == "sharded" and batch is not None and batch < trainer.world_size:
        raise ValueError(f"{name} splits each supernet-val batch of {batch} images over the {trainer.world_size} "
                         f"ranks; raise data.init_args.eval_batch_size to at least {trainer.world_size}")


def _val_split(datamodule: Any) -> tuple[int, int | None]:
    """(images, eval batch size) of the supernet-val split: a ``SplitDataModule``'s own, else its loader's."""
    dataset, batch = getattr(datamodule, "supernet_val_dataset", None), getattr(datamodule, "eval_batch_size", None)
    if dataset is None:
        loader = datamodule.val_dataloader()
        dataset, batch = loader.dataset, loader.batch_size
    return len(dataset), batch


class SupernetModule(NASModule):
    """Trains ``space.build_supernet()`` on the arch that the sampler draws at each optimiser step.

    As it is, this is SPOS (uniform sampling, the default sampler). Validation evaluates a fixed set
    of archs with inherited weights: the configured ``eval_archs``, or ``num_eval_archs`` drawn with
    ``eval_seed``. Each rank evaluates them on its shard of the validation data and the totals are
    summed over ranks, so every rank holds the same numbers. Callbacks (ranking, search) evaluate
    further archs through ``evaluate``. The validation batches of the epoch are kept on the module's
    device for that: bound them with ``trainer.limit_val_batches`` on large data sets.

    Args:
        sampler: ``(space, seed) -> ArchSampler``, draws the training arch of each step; its state is
            checkpointed. Default: ``UniformSampler``.
        seed: seed of the sampler (the arch of step t depends only on (seed, t) and the search state)
            and of the method's other draws.
        eval_archs: arch strings to evaluate at validation.
        num_eval_archs: how many archs to draw when ``eval_archs`` is not given.
        eval_seed: seed of that draw.
        bn_recalibration: K > 0 re-estimates BN statistics on K training batches per arch before
            evaluating it (SPOS practice); 0 normalises each evaluation batch by its own statistics.
        space: the search space (``class_path`` in YAML).
        kwargs: ``NASModule``'s (optimizer, lr_scheduler, scheduler_interval, label_smoothing).
    """

    #: What the method's own search draws from the supernet-val split during ``fit`` (checked at ``setup`` by
    #: ``check_val_data``): None, "whole" full eval batches (each scored whole on every rank) or "sharded"
    #: full eval batches (each split over the ranks).
    search_val_batches: ClassVar[Literal["whole", "sharded"] | None] = None

    def __init__(self, space: SearchSpace, sampler: SamplerFactory = UniformSampler, seed: int = 0,
                 eval_archs: Sequence[str] | None = None, num_eval_archs: int = 16, eval_seed: int = 0,
                 bn_recalibration: int = 0, **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        if bn_recalibration < 0 or num_eval_archs < 0:
            raise ValueError(
                f"bn_recalibration and num_eval_archs must be >= 0, got {bn_recalibration}, {num_eval_archs}"
            )
        self.seed = seed
        self.sampler = sampler(space, seed)
        self.supernet = space.build_supernet()
        self.eval_archs: list[Arch] = (
            [space.decode(a) for a in eval_archs] if eval_archs
            else space.sample_many(num_eval_archs, step_generator(eval_seed, "eval", 0))
        )
        self.bn_recalibration = bn_recalibration
        self.batches = BatchSource(self, bn_recalibration)
        self.train_acc = MulticlassAccuracy(space.num_classes, average="micro")
        self.current_arch: Arch | None = None
        self.eval_results: dict[Arch, float] = {}
        self.save_hyperparameters(ignore=["space", "optimizer", "lr_scheduler", "sampler"])

    @override
    def setup(self, stage: str) -> None:
        super().setup(stage)
        check_val_data(self, stage)

    # --- training --------------------------------------------------------------------------------
    def sample_arch(self) -> Arch:
        """The arch of this optimiser step: a function of the step alone, so ranks agree."""
        return self.sampler.sample(self.global_step)

    @override
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
    @override
    def on_validation_epoch_start(self) -> None:
        self.batches.start_validation()

    @override
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        # Kept for the epoch end, where every arch (and every callback's archs) runs on them.
        self.batches.add_validation(batch)

    @override
    def on_validation_epoch_end(self) -> None:
        if not self.eval_archs or not self.batches.validation():
            return
        acc = self.evaluate(self.eval_archs).accuracy
        self.eval_results = dict(zip(self.eval_archs, acc.tolist()))
        self.log_dict({"val/acc_mean": acc.mean(), "val/acc_max": acc.max(), "val/acc_min": acc.min()},
                      prog_bar=True, rank_zero_only=True)

    def evaluate(self, archs: Sequence[Arch], batches: Sequence[Batch] | None = None) -> EvalTotals:
        """Inherited-weight totals of ``archs`` on ``batches`` (default: this rank's shard of the latest
        validation epoch), summed over all ranks."""
        batches = self.batches.validation() if batches is None else batches
        if not batches:
            raise RuntimeError("no validation batches to evaluate on: run a validation epoch first")
        return evaluate_archs(self.supernet, archs, batches, self.batches.calibration(),
                              reduce=partial(reduce_sum, trainer=self._trainer))

    # --- search state ----------------------------------------------------------------------------
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nas_sampler"] = self.sampler.state_dict()

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "nas_sampler" in checkpoint:
            self.sampler.load_state_dict(checkpoint["nas_sampler"])
