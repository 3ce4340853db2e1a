"""Train reduced sharing (g = 3 groups, the stem and the first 2 body parts shared) for a few steps either as a
2-process DDP job (gloo, CPU) or as one process that accumulates the same per-rank micro-batches; save each
rank's archs, groups and weights, copies included.

Run by tests/test_reduced_sharing.py: ``python tests/scripts/ddp_reduced_sharing.py {ddp,single} OUT_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from _ddp_common import RecordArchs, fit_micro_batches

from nas_lightning.methods import ReducedSharing
from nas_lightning.spaces import NB201Space

STEPS, MICRO, WORLD = 6, 8, 2


def main(mode: str, out: Path) -> None:
    pl.seed_everything(0, verbose=False)
    space = NB201Space(C=4, N=1, num_classes=5, in_channels=1, input_size=8)
    model = ReducedSharing(space, seed=7, groups=3, prefix=2, num_eval_archs=0,
                           optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3))
    initial = {k: v.detach().clone() for k, v in model.supernet.named_parameters()}
    record = RecordArchs()
    trainer = fit_micro_batches(model, mode, STEPS, MICRO, WORLD, [record])
    out.mkdir(parents=True, exist_ok=True)
    params = {k: v.detach().clone() for k, v in model.supernet.named_parameters()}
    groups = [model.picker.group(space.arch_at(i)) for i in range(0, space.num_archs, 37)]
    trained = [(a, model.picker.group(space.decode(a))) for a in record.archs]
    torch.save({"archs": record.archs, "initial": initial, "params": params, "groups": groups,
                "trained_groups": trained}, out / f"{mode}_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
