"""Where callbacks write their files."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger


def output_dir(trainer: pl.Trainer, configured: str | None, name: str) -> Path:
    """``configured``, or ``<log_dir or default_root_dir>/<name>``; under a ``WandbLogger``, whose log dir is its
    ``save_dir`` for every run, ``<save_dir>/<run id>/<name>``, so that the runs of a sweep never share a folder.

    ``trainer.log_dir`` broadcasts under DDP, so every rank must call this, not only rank 0.
    """
    if configured:
        return Path(configured)
    base = Path(trainer.log_dir or trainer.default_root_dir)
    if isinstance(trainer.logger, WandbLogger):
        base = base / str(trainer.strategy.broadcast(trainer.logger.version if trainer.is_global_zero else None))
    return base / name
