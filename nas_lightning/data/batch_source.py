"""The one provider of the batches that inherited-weight evaluation runs on.

Every consumer (validation, ranking, evolution, PC-NAS potentials, DI-NAS rewards, disturbance
metrics) asks the method's ``BatchSource`` instead of reaching into the data module:

- ``validation()``: this rank's shard of the latest validation epoch, kept as Lightning fed it; the
  evaluations over it are summed over ranks (sharded over data).
- ``calibration()``: the first K supernet-train batches for BN recalibration (K = ``bn_recalibration``).
- ``fixed_val(n)``: the first n supernet-val batches, unsharded and checked equal on every rank (PC-NAS
  potentials, which shard over archs instead).
- ``seeded_val(n, generator)``: n supernet-val batches in an order drawn from ``generator`` (DI-NAS
  controller rewards), identical on every rank that passes the same generator.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, RandomSampler

from nas_lightning.utils.distributed import broadcast_object, reduce_sum

if TYPE_CHECKING:
    import pytorch_lightning as pl

Batch = tuple[torch.Tensor, torch.Tensor]


def seeded_batches(loader: DataLoader, n: int, generator: torch.Generator) -> Iterator[Batch]:
    """``n`` batches of ``loader``'s dataset and batch size in an order drawn from ``generator``
    (a fresh permutation each time the dataset runs out), whatever order the loader itself has."""
    dataset, batch_size = loader.dataset, loader.batch_size
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
        """This rank's shard of the latest validation epoch."""
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

    def calibration(self) -> list[Batch]:
        """The first K supernet-train batches on the module's device ([] when K is 0)."""
        if self.num_calibration == 0:
            return []
        if self._calibration is None:
            batches = []
            for x, y in self._datamodule("BN recalibration batches").train_dataloader():
                batches.append((x.to(self.module.device), y.to(self.module.device)))
                if len(batches) == self.num_calibration:
                    break
            self._calibration = batches
        return self._calibration

    def fixed_val(self, n: int) -> list[Batch]:
        """The first ``n`` supernet-val batches, unsharded, checked to be the same on every rank."""
        batches = []
        for x, y in self._datamodule("fixed supernet-val batches").val_dataloader():
            batches.append((x, y))
            if len(batches) == n:
                break
        if not batches:
            raise RuntimeError("the supernet-val loader is empty; raise data.val_fraction")
        trainer = self.module._trainer
        checksum = sum(float(x.double().sum()) + float(y.double().sum()) for x, y in batches)
        mismatch = torch.tensor(float(checksum != broadcast_object(checksum, trainer)))
        if trainer is not None and float(reduce_sum(mismatch.to(trainer.strategy.root_device), trainer)) > 0:
            raise RuntimeError("ranks see different supernet-val batches; the data module's val_dataloader() must be "
                               "unsharded and deterministic")
        return batches

    def seeded_val(self, n: int, generator: torch.Generator) -> Iterator[Batch]:
        """``n`` unsharded supernet-val batches in an order drawn from ``generator``."""
        return seeded_batches(self._datamodule("seeded supernet-val batches").val_dataloader(), n, generator)
