"""Where callbacks write their files."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl


def output_dir(trainer: pl.Trainer, configured: str | None, name: str) -> Path:
    """``configured``, or ``<log_dir or default_root_dir>/<name>``.

    ``trainer.log_dir`` broadcasts under DDP, so every rank must call this, not only rank 0.
    """
    return Path(configured or Path(trainer.log_dir or trainer.default_root_dir) / name)
