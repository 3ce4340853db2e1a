"""Rank consistency: the two helpers every method uses so that all DDP ranks agree.

1. ``step_generator``: randomness derived from (seed, stream, step) alone, so every rank draws the
   same arch at the same step, and a resumed run draws what an uninterrupted one would have drawn.
2. ``reduce_sum`` / ``broadcast_object``: evaluation results summed over ranks (each rank
   evaluates its shard of the data), and rank 0's decision shared where one rank must decide.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import pytorch_lightning as pl


def derive_seed(seed: int, stream: str, step: int) -> int:
    """A 63-bit seed from (seed, stream, step); stable across processes, platforms and runs."""
    digest = hashlib.sha256(f"{seed}/{stream}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def step_generator(seed: int, stream: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, stream, step))


def reduce_sum(tensor: torch.Tensor, trainer: pl.Trainer | None) -> torch.Tensor:
    """Sum ``tensor`` over all ranks (identity without a trainer or with one process)."""
    if trainer is None or trainer.world_size == 1:
        return tensor
    return trainer.strategy.reduce(tensor.clone(), reduce_op="sum")


def broadcast_object(obj: Any, trainer: pl.Trainer | None) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if trainer is None or trainer.world_size == 1:
        return obj
    return trainer.strategy.broadcast(obj, src=0)
