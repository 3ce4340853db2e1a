"""Stand-alone training of one arch from scratch: how a winner is retrained and GT is made."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from nas_lightning.evaluation.inherited import Batch
from nas_lightning.methods.base import NASModule
from nas_lightning.spaces.base import SearchSpace


class StandaloneModule(NASModule):
    """Builds ``space.build_network(arch)`` from an arch string and trains it with cross-entropy.

    Logs ``train/loss``, ``train/acc``, ``val/acc`` (supernet-val split) and ``test/acc``.
    """

    def __init__(self, space: SearchSpace, arch: str, **kwargs: Any) -> None:
        """``kwargs``: see ``NASModule`` (optimizer, lr_scheduler, scheduler_interval, label_smoothing)."""
        super().__init__(space, **kwargs)
        self.arch = space.decode(arch)
        self.network = space.build_network(self.arch)
        self.save_hyperparameters(ignore=["space", "optimizer", "lr_scheduler"])
        self.metrics = torch.nn.ModuleDict(
            {f"{s}_acc": MulticlassAccuracy(space.num_classes, average="micro") for s in ("train", "val", "test")}
        )

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def _step(self, batch: Batch, split: str) -> torch.Tensor:
        x, y = batch
        logits = self.network(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing if split == "train" else 0.0)
        acc = self.metrics[f"{split}_acc"]
        acc(logits, y)
        self.log(f"{split}/loss", loss, prog_bar=split == "train", sync_dist=split != "train")
        self.log(f"{split}/acc", acc, prog_bar=True, on_step=split == "train", on_epoch=True)
        return loss

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    @override
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "val")

    @override
    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "test")
