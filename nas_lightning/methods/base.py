"""What every LightningModule of the project shares: a space, an optimiser from the config, a check that
the space fits the data, and the training loop that resumes exactly from any step's checkpoint
(``nas_lightning.loops``)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from typing_extensions import override

from nas_lightning.loops import install_resumable_loops
from nas_lightning.spaces.base import SearchSpace


class NASModule(pl.LightningModule):
    """Base of the methods and of ``StandaloneModule``.

    Args:
        space: the search space (``class_path`` in YAML).
        optimizer: optimiser factory from the config, called with the parameters.
        lr_scheduler: optional scheduler factory, called with the optimiser.
        scheduler_interval: step the scheduler every ``"epoch"`` or every ``"step"``.
        label_smoothing: of the cross-entropy loss.
    """

    def __init__(self, space: SearchSpace, optimizer: OptimizerCallable = torch.optim.SGD,
                 lr_scheduler: LRSchedulerCallable | None = None, scheduler_interval: str = "epoch",
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        self.space = space
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.scheduler_interval = scheduler_interval
        self.label_smoothing = label_smoothing

    @override
    def setup(self, stage: str) -> None:
        check_space_matches_data(self.space, getattr(self.trainer, "datamodule", None))
        if stage == "fit":
            # Before Lightning restores the loops from a checkpoint: a run resumed from an epoch's last batch
            # then still runs that epoch's validation and end.
            install_resumable_loops(self.trainer)

    @override
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}


def check_space_matches_data(space: SearchSpace, datamodule: Any) -> None:
    """A config whose space disagrees with its data fails here, naming the keys to change."""
    if datamodule is None:
        return
    problems = []
    for attr in ("num_classes", "in_channels"):
        want, have = getattr(space, attr, None), getattr(datamodule, attr, None)
        if want is not None and have is not None and want != have:
            problems.append(f"model.init_args.space.init_args.{attr}={want} but the data has {attr}={have}")
    have_size = getattr(datamodule, "image_size", None)
    if have_size is not None and space.input_size != have_size:
        problems.append(
            f"model.init_args.space.init_args.input_size={space.input_size} but the data gives {have_size}x{have_size} "
            "images (set data.init_args.image_size or the space's input_size)"
        )
    if problems:
        raise ValueError(
            f"the search space {type(space).__name__} does not match the data {type(datamodule).__name__}: "
            + "; ".join(problems)
        )
