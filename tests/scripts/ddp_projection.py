"""Train SPOS with ``ProjectionMatrixUpdate`` for a few steps, either as a 2-process DDP job (gloo, CPU)
or as one process that accumulates the same per-rank micro-batches; save each rank's projection
matrices, archs and weights.

The feature folded in after a step is the mean input over all samples of the step: in DDP the input
sums and counts are added up over the ranks, in the single process over the accumulated micro-batches,
so both define the same P (up to float summation order).

Run by tests/test_projection.py: ``python tests/scripts/ddp_projection.py {ddp,single} OUT_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from _ddp_common import MicroBatches, RecordArchs
from torch.utils.data import DataLoader

from callbacks.projection_matrix_update import ProjectionMatrixUpdate
from nas_lightning.methods import SPOS
from nas_lightning.spaces import NB201Space

STEPS, MICRO, WORLD = 4, 8, 2


def main(mode: str, out: Path) -> None:
    pl.seed_everything(0, verbose=False)
    space = NB201Space(C=4, N=1, num_classes=5, in_channels=1, input_size=8)
    model = SPOS(space, seed=7, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
                 num_eval_archs=0)
    record, projection = RecordArchs(), ProjectionMatrixUpdate(alpha=1e-2, max_patches=4, seed=3)
    kwargs = dict(max_steps=STEPS, accelerator="cpu", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False,
                  use_distributed_sampler=False, callbacks=[projection, record])
    if mode == "ddp":
        trainer = pl.Trainer(devices=WORLD, strategy="ddp_find_unused_parameters_true", **kwargs)
    else:
        trainer = pl.Trainer(devices=1, accumulate_grad_batches=WORLD, **kwargs)
    rank = trainer.global_rank
    # DDP rank r trains micro-batches r, r+2, ...; the single process trains them all in order.
    indices = list(range(rank, STEPS * WORLD, WORLD)) if mode == "ddp" else list(range(STEPS * WORLD))
    loader = DataLoader(MicroBatches(indices, STEPS * WORLD, MICRO), batch_size=None, shuffle=False)
    trainer.fit(model, train_dataloaders=loader)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"archs": record.archs, "P": {k: v.cpu() for k, v in projection.P.items()},
                "updates": projection.updates,
                "params": {k: v.detach().clone() for k, v in model.supernet.named_parameters()}},
               out / f"{mode}_rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
