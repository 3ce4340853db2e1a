"""Progressive shrinking of PC-NAS's partial-model pool on Algorithm 2's schedule (arXiv:1910.02543).

After ``warmup_epochs`` (T_w) epochs, and then every ``interval_epochs`` (T_i) epochs, the method's
``PCNAS.shrink_pool`` fixes one more decision. Shrink k (0-based) runs at the end of epoch
``T_w + k * T_i`` (1-based); after the last decision is fixed, training continues on the final pool.
The pool lives in the method's sampler (checkpointed there), and the schedule is a function of the
epoch and the decisions already fixed, so a resumed run continues the same schedule. Rank 0 writes
``pool_history.csv`` after every shrink and ``final_pool.json`` at the end of training (best first;
rows that ``nas-lightning cost --archs_file`` and ``StandaloneModule(arch=...)`` accept).
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info
from typing_extensions import override

from callbacks._paths import output_dir
from nas_lightning.methods.pcnas import PCNAS
from nas_lightning.search.pool_shrink import history_csv, member_text, shrink_due
from nas_lightning.utils.atomic import atomic_write_json, atomic_write_text


def _pcnas(pl_module: pl.LightningModule) -> PCNAS:
    if not isinstance(pl_module, PCNAS):
        raise TypeError("PoolShrinking needs a SupernetModule whose sampler is a PoolSampler (a PCNAS method), "
                        f"got {type(pl_module).__name__}")
    return pl_module


class PoolShrinking(pl.Callback):
    """Algorithm 2's schedule for a ``PCNAS`` method.

    Args:
        warmup_epochs: T_w, epochs of uniform training before the first shrink (paper: 100).
        interval_epochs: T_i, epochs between shrinks (paper: 5).
        output_dir: where ``pool_history.csv`` and ``final_pool.json`` go (default
            ``<trainer.log_dir or default_root_dir>/pcnas``).
    """

    def __init__(self, warmup_epochs: int = 100, interval_epochs: int = 5, output_dir: str | None = None) -> None:
        for name, value in (("warmup_epochs", warmup_epochs), ("interval_epochs", interval_epochs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PoolShrinking {name} must be an int >= 1, got {value!r}")
        self.warmup_epochs, self.interval_epochs, self.output_dir = warmup_epochs, interval_epochs, output_dir

    def _dir(self, trainer: pl.Trainer) -> Path:
        return output_dir(trainer, self.output_dir, "pcnas")  # broadcasts under DDP: every rank asks

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        _pcnas(pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        method = _pcnas(pl_module)
        if shrink_due(trainer.current_epoch + 1, method.pool.num_fixed, method.space.num_decisions,
                      self.warmup_epochs, self.interval_epochs):
            self._report(trainer, method, method.shrink_pool(trainer.current_epoch + 1))

    def _report(self, trainer: pl.Trainer, method: PCNAS, record: dict) -> None:
        best = max(p for p in record["potentials"] if p is not None)
        # Identical on every rank, so the sync is a no-op average that keeps Lightning's DDP check quiet.
        method.log("pcnas/best_potential", best, sync_dist=True)
        method.log("pcnas/decisions_fixed", float(method.pool.num_fixed), sync_dist=True)
        out = self._dir(trainer)
        if trainer.is_global_zero:
            atomic_write_text(out / "pool_history.csv", history_csv(method.space, method.pool.history))
            pool = ", ".join(member_text(method.space, m) for m in method.pool.members)
            rank_zero_info(f"PC-NAS shrink {record['shrink']} (epoch {record['epoch']}, {record['decision']}): "
                           f"best potential {best:.2f}%, pool: {pool}")

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rows = _pcnas(pl_module).final_pool()
        out = self._dir(trainer)
        if trainer.is_global_zero and rows:
            path = atomic_write_json(out / "final_pool.json", rows)
            rank_zero_info(f"PC-NAS final pool ({len(rows)} archs, best first) written to {path}")
