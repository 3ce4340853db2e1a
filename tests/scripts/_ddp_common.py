"""Pieces shared by the DDP scripts: fixed micro-batches and a record of the trained archs."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset


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
