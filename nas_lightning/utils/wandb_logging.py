"""Rows and pictures to Weights & Biases, through the trainer's ``WandbLogger`` (if it has one).

Lightning's loggers take scalars; a table (``wandb.Table``) and an image (``wandb.Image``) go through the
``WandbLogger``'s own run. Nothing happens without a ``WandbLogger``, so a run with only a CSV logger, or none,
needs no W&B at all (wandb is imported only when there is one). Offline runs (``WANDB_MODE=offline``) keep both in
their run folder for ``wandb sync``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import Logger, WandbLogger

__all__ = ["finish_wandb_runs", "log_table_and_image", "wandb_loggers"]


def wandb_loggers(loggers: Iterable[Logger]) -> list[WandbLogger]:
    """The ``WandbLogger`` instances among ``loggers`` (a trainer's ``loggers`` list)."""
    return [logger for logger in loggers if isinstance(logger, WandbLogger)]


def finish_wandb_runs(loggers: Iterable[Logger]) -> None:
    """End the W&B run of every ``WandbLogger`` that started one, now: its log gets the exit record before the
    process exits, rather than from an atexit hook that a loaded machine can leave unfinished (offline runs then
    lack it, and ``wandb sync`` takes them for crashed)."""
    for logger in wandb_loggers(loggers):
        if logger._experiment is not None:  # never start a run just to end it (and non-zero ranks have none)
            logger.experiment.finish()


def log_table_and_image(loggers: Iterable[Logger], rows: Sequence[Mapping[str, Any]], table_key: str,
                        image: str | Path, image_key: str, step: int, caption: str = "") -> int:
    """Log ``rows`` as a ``wandb.Table`` under ``table_key`` (columns: the keys of the rows, in first-seen order)
    and the picture file ``image`` as a ``wandb.Image`` under ``image_key``, in one entry at ``step`` (the trainer's
    global step, W&B's ``trainer/global_step``), to every ``WandbLogger``. Call on global rank 0 only (the
    ``WandbLogger`` runs there). Returns how many loggers took them."""
    targets = wandb_loggers(loggers)
    if not targets:
        return 0
    import wandb

    columns = list(dict.fromkeys(key for row in rows for key in row))
    data = [[row.get(column) for column in columns] for row in rows]
    for logger in targets:
        logger.log_metrics({table_key: wandb.Table(columns=columns, data=data),
                            image_key: wandb.Image(str(image), caption=caption)}, step=step)
    return len(targets)
