"""PC-NAS with pool shrinking as one node of a 2-node DDP job (gloo, CPU, one process per node), or as one process
that accumulates the same micro-batches; save the final weights, the pool (search state) and the trained archs.

Node mode reads the launch variables Lightning's ``LightningEnvironment`` reads (MASTER_ADDR, MASTER_PORT,
NODE_RANK, WORLD_SIZE, LOCAL_RANK), as ``torchrun --nnodes 2 --nproc-per-node 1`` or ``srun`` would set them, and
runs ``Trainer(num_nodes=2, devices=1)``: node n trains micro-batches n, n+2, ... of each step, the single process
trains them all in order, two per optimiser step.

Run by tests/test_multinode.py: ``python tests/scripts/multinode_pcnas.py {node,single} OUT_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from _ddp_common import MicroBatches, RecordArchs
from torch.utils.data import DataLoader, TensorDataset

from callbacks.pool_shrinking import PoolShrinking
from nas_lightning.methods.pcnas import PCNAS
from nas_lightning.spaces import ChainSpace

NODES, STEPS_PER_EPOCH, EPOCHS, MICRO = 2, 3, 3, 8  # 3 epochs: warm-up, then one shrink per epoch (3 decisions)


class MicroBatchData(pl.LightningDataModule):
    """Training: this process's micro-batches (``batch_size=None``: each item is a whole micro-batch), the same
    each epoch. Validation: one unsharded seeded set, from which PC-NAS draws its potential batches."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        gen = torch.Generator().manual_seed(11)
        self.val = TensorDataset(torch.randn(64, 1, 8, 8, generator=gen), torch.randint(0, 4, (64,), generator=gen))

    def train_dataloader(self) -> DataLoader:
        count = STEPS_PER_EPOCH * NODES
        rank = self.trainer.global_rank
        indices = list(range(rank, count, NODES)) if self.mode == "node" else list(range(count))
        return DataLoader(MicroBatches(indices, count, MICRO, num_classes=4), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=16)


def main(mode: str, out: Path) -> None:
    pl.seed_everything(0, verbose=False)
    space = ChainSpace(num_layers=3, ops=("nor_conv_1x1", "nor_conv_3x3", "skip_connect", "avg_pool_3x3"), C=4,
                       num_classes=4, in_channels=1, input_size=8)
    model = PCNAS(space, seed=2, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), pool_size=2,
                  num_completions=6, num_eval_archs=0, num_val_batches=2)
    initial = {k: v.detach().clone() for k, v in model.supernet.named_parameters()}
    record = RecordArchs()
    shrinking = PoolShrinking(warmup_epochs=1, interval_epochs=1, output_dir=str(out / f"pcnas_{mode}"))
    kwargs = dict(max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                  use_distributed_sampler=False, limit_val_batches=1, callbacks=[record, shrinking])
    if mode == "node":
        # A single-path supernet leaves the unsampled ops without gradients: DDP must be told to expect that.
        trainer = pl.Trainer(num_nodes=NODES, devices=1, strategy="ddp_find_unused_parameters_true", **kwargs)
    else:
        trainer = pl.Trainer(devices=1, accumulate_grad_batches=NODES, **kwargs)
    trainer.fit(model, datamodule=MicroBatchData(mode))
    launch = {"num_nodes": trainer.num_nodes, "node_rank": trainer.node_rank, "global_rank": trainer.global_rank,
              "world_size": trainer.world_size, "environment": type(trainer.strategy.cluster_environment).__name__
              if mode == "node" else None}
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"launch": launch, "archs": record.archs, "pool": model.sampler.state_dict(), "initial": initial,
                "params": {k: v.detach().clone() for k, v in model.supernet.named_parameters()},
                "global_step": trainer.global_step}, out / f"{mode}_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
