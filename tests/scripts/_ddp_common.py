"""Pieces shared by the DDP scripts: fixed micro-batches, a record of the trained archs, and the DDP vs
accumulating single-process training they compare."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from nas_lightning.methods import SPOS
from nas_lightning.spaces import NB201Space


class MicroBatches(Dataset):
    """Micro-batch ``i`` of a fixed seeded sequence of ``count`` batches; each item is already a whole batch."""

    def __init__(self, indices: list[int], count: int, size: int, num_classes: int = 5, side: int = 8) -> None:
        gen = torch.Generator().manual_seed(123)
        self.x = torch.randn(count, size, 1, side, side, generator=gen)
        self.y = torch.randint(0, num_classes, (count, size), generator=gen)
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = self.indices[i]
        return self.x[j], self.y[j]


class RecordArchs(pl.Callback):
    def __init__(self) -> None:
        self.archs: list[str] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.archs.append(str(pl_module.current_arch))


def make_spos() -> SPOS:
    """The tiny SPOS every DDP script trains (its arch sequence depends only on seed 7)."""
    pl.seed_everything(0, verbose=False)
    space = NB201Space(C=4, N=1, num_classes=5, in_channels=1, input_size=8)
    return SPOS(space, seed=7, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
                num_eval_archs=0)


def fit_micro_batches(model: pl.LightningModule, mode: str, steps: int, micro: int, world: int,
                      callbacks: list[pl.Callback]) -> pl.Trainer:
    """Train ``steps`` optimiser steps as a ``world``-process DDP job (``mode="ddp"``) or as one process
    accumulating the same per-rank micro-batches (``mode="single"``)."""
    kwargs = dict(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                  callbacks=callbacks)
    if mode == "ddp":
        trainer = pl.Trainer(devices=world, strategy="ddp_find_unused_parameters_true", **kwargs)
    else:
        trainer = pl.Trainer(devices=1, accumulate_grad_batches=world, **kwargs)
    # DDP rank r trains micro-batches r, r+world, ...; the single process trains them all in order.
    count = steps * world
    indices = list(range(trainer.global_rank, count, world)) if mode == "ddp" else list(range(count))
    trainer.fit(model, train_dataloaders=DataLoader(MicroBatches(indices, count, micro), batch_size=None))
    return trainer
