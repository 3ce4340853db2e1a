"""The one provider of the batches that inherited-weight evaluation runs on.

Every consumer (validation, ranking, evolution, PC-NAS potentials, DI-NAS rewards, disturbance
metrics) asks the method's ``BatchSource`` instead of reaching into the data module:

- ``validation()``: this rank's shard of the latest validation epoch, kept as Lightning fed it; the
  evaluations over it are summed over ranks (sharded over data). With a ``SplitDataModule`` the shard is this
  rank's slice of each global batch (``GlobalBatchSampler``), so the images, and the batches that
  ``limit_val_batches`` selects, are the same at any number of processes.
- ``calibration()``: the first K supernet-train batches (epoch-0 order, unsharded) for BN recalibration
  (K = ``bn_recalibration``), the same on every rank at any number of processes.
- ``seeded_val(n, generator)``: n unsharded supernet-val batches in an order drawn from ``generator``, checked
  equal on every rank (DI-NAS controller rewards; PC-NAS potentials, which shard over archs instead).

With a data module that is not a ``SplitDataModule``, the unsharded batches come from its ``val_dataloader()``
and ``train_dataloader()`` hooks, which must then not be sharded: under DDP that is refused for calibration.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, RandomSampler

from nas_lightning.data.base import GlobalBatchSampler, SplitDataModule
from nas_lightning.utils.distributed import broadcast_object, reduce_sum

if TYPE_CHECKING:
    import pytorch_lightning as pl

Batch = tuple[torch.Tensor, torch.Tensor]


def seeded_batches(loader: DataLoader, n: int, generator: torch.Generator) -> Iterator[Batch]:
    """``n`` batches of ``loader``'s dataset and batch size in an order drawn from ``generator``
    (a fresh permutation each time the dataset runs out), whatever order the loader itself has."""
    dataset, batch_size = loader.dataset, loader.batch_size
    if isinstance(loader.sampler, GlobalBatchSampler):  # a loader of whole batches: its sampler knows their size
        dataset, batch_size = loader.sampler.dataset, loader.sampler.batch_size
    if batch_size is None or len(dataset) < batch_size:  # type: ignore[arg-type]
        raise ValueError(f"the supernet-val set ({len(dataset)} images, batch size {batch_size}) must hold at "  # type: ignore[arg-type]
                         "least one batch; raise data.val_fraction or lower data.eval_batch_size")
    while n > 0:
        order = RandomSampler(dataset, generator=generator)  # type: ignore[arg-type]
        for batch in DataLoader(dataset, batch_size=batch_size, sampler=order, drop_last=True,
                                collate_fn=loader.collate_fn, num_workers=loader.num_workers):
            yield batch
            n -= 1
            if n == 0:
                return


class BatchSource:
    """Batches for evaluation, owned by a method (``module.batches``).

    Args:
        module: the LightningModule; its trainer's data module supplies the batches.
        calibration_batches: K for ``calibration()`` (0: none).
    """

    def __init__(self, module: pl.LightningModule, calibration_batches: int = 0) -> None:
        if calibration_batches < 0:
            raise ValueError(f"bn_recalibration must be >= 0, got {calibration_batches}")
        self.module = module
        self.num_calibration = calibration_batches
        self._validation: list[Batch] = []
        self._calibration: list[Batch] | None = None

    # --- the validation epoch, as Lightning feeds it -------------------------------------------------
    def start_validation(self) -> None:
        self._validation = []
        self._calibration = None  # the weights changed since the calibration batches were drawn

    def add_validation(self, batch: Batch) -> None:
        self._validation.append((batch[0].detach(), batch[1].detach()))

    def validation(self) -> list[Batch]:
        """This rank's shard of the latest validation epoch (its slice of each global batch)."""
        return self._validation

    # --- drawn from the data module ------------------------------------------------------------------
    def _datamodule(self, purpose: str):
        trainer = self.module._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        if datamodule is None:
            raise RuntimeError(f"{purpose} are drawn from trainer.datamodule; fit or validate with a datamodule "
                               "instead of bare dataloaders")
        datamodule.setup("fit")  # idempotent; validate/test may not have set up the supernet splits
        return datamodule

    def _unsharded_val(self, purpose: str) -> DataLoader:
        datamodule = self._datamodule(purpose)
        if isinstance(datamodule, SplitDataModule):
            return datamodule.eval_dataloader("val")
        return datamodule.val_dataloader()

    def calibration(self) -> list[Batch]:
        """The first K supernet-train batches on the module's device ([] when K is 0): the epoch-0 order of one
        process, unsharded, so every rank recalibrates on the same images at any number of processes."""
        if self.num_calibration == 0:
            return []
        if self._calibration is None:
            datamodule = self._datamodule("BN recalibration batches")
            if isinstance(datamodule, SplitDataModule):
                loader = datamodule.calibration_dataloader()
            else:
                trainer = self.module._trainer
                if trainer is not None and trainer.world_size > 1:
                    raise RuntimeError(
                        f"BN recalibration under DDP needs the same batches on every rank; "
                        f"{type(datamodule).__name__}.train_dataloader() is sharded per rank: use a SplitDataModule, "
                        "whose calibration_dataloader() is unsharded, or bn_recalibration=0")
                loader = datamodule.train_dataloader()
            batches = []
            for x, y in loader:
                batches.append((x.to(self.module.device), y.to(self.module.device)))
                if len(batches) == self.num_calibration:
                    break
            self._calibration = batches
        return self._calibration

    def seeded_val(self, n: int, generator: torch.Generator) -> list[Batch]:
        """``n`` unsharded supernet-val batches in an order drawn from ``generator``, checked to be the same on
        every rank (a data module whose unsharded loader differs between ranks would split the ranks' search)."""
        batches = list(seeded_batches(self._unsharded_val("seeded supernet-val batches"), n, generator))
        trainer = self.module._trainer
        checksum = sum(float(x.double().sum()) + float(y.double().sum()) for x, y in batches)
        mismatch = torch.tensor(float(checksum != broadcast_object(checksum, trainer)))
        if trainer is not None and float(reduce_sum(mismatch.to(trainer.strategy.root_device), trainer)) > 0:
            raise RuntimeError("ranks see different supernet-val batches; the data module's unsharded supernet-val "
                               "loader (eval_dataloader('val'), else val_dataloader()) must be deterministic")
        return batches
