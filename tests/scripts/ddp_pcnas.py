"""PC-NAS as a 2-process DDP job (gloo, CPU): save each rank's pool, history, share of the potential
work, and the potentials of the last shrink recomputed by this rank alone.

Run by tests/test_pcnas.py: ``python tests/scripts/ddp_pcnas.py OUT_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from callbacks.pool_shrinking import PoolShrinking
from nas_lightning.data import SyntheticDataModule
from nas_lightning.methods.pcnas import PCNAS
from nas_lightning.search.potential import potentials
from nas_lightning.spaces import ChainSpace
from nas_lightning.utils.distributed import step_generator


class RecordShares(pl.Callback):
    """After each shrink: how many distinct (arch, batch) pairs this rank evaluated, of how many."""

    def __init__(self) -> None:
        self.shares: list[tuple[int, int]] = []
        self.archs: list[str] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.archs.append(str(pl_module.current_arch))

    # PoolShrinking (listed after this callback) runs after it at an epoch end,
    # so each shrink's result is collected at the next epoch start, the last one at the end of training.
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._collect(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._collect(pl_module)

    def _collect(self, pl_module) -> None:
        result = pl_module.last_result
        if result is not None and len(self.shares) < len(pl_module.pool.history):
            self.shares.append((result.evaluated_here, result.num_units))


def main(out: Path) -> None:
    pl.seed_everything(0, verbose=False)
    space = ChainSpace(num_layers=3, ops=("nor_conv_1x1", "nor_conv_3x3", "skip_connect", "avg_pool_3x3"), C=4,
                       num_classes=4, in_channels=1, input_size=8)
    model = PCNAS(space, seed=2, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), pool_size=2,
                  num_completions=12, num_eval_archs=0, num_val_batches=3)
    shrinking = PoolShrinking(warmup_epochs=1, interval_epochs=1, output_dir=str(out / "pcnas"))
    data = SyntheticDataModule(num_classes=4, in_channels=1, image_size=8, num_train=320, num_test=32, batch_size=16,
                               val_fraction=0.2, seed=0, noise=0.3)
    record = RecordShares()
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[record, shrinking])
    trainer.fit(model, datamodule=data)
    rank = trainer.global_rank

    # The last shrink (end of the last epoch, so the same weights) recomputed by this rank alone (world
    # size 1): splitting the completions over the ranks must not change the potentials.
    last = model.pool.history[-1]
    batches = model.potential_batches("potential", last["shrink"])  # a function of (seed, shrink) alone
    alone = potentials(model.supernet, [tuple(c) for c in last["candidates"]], batches, 12,
                       step_generator(2, "potential", last["shrink"]), model.sampler.limit)
    torch.save({"pool": model.sampler.state_dict(), "shares": record.shares, "archs": record.archs,
                "alone": alone.potentials}, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
