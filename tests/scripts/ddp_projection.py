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

import torch
from _ddp_common import RecordArchs, fit_micro_batches, make_spos

from callbacks.projection_matrix_update import ProjectionMatrixUpdate

STEPS, MICRO, WORLD = 4, 8, 2


def main(mode: str, out: Path) -> None:
    model = make_spos()
    record, projection = RecordArchs(), ProjectionMatrixUpdate(alpha=1e-2, max_patches=4, seed=3)
    trainer = fit_micro_batches(model, mode, STEPS, MICRO, WORLD, [projection, record])
    rank = trainer.global_rank
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"archs": record.archs, "P": {k: v.cpu() for k, v in projection.P.items()},
                "updates": projection.updates,
                "params": {k: v.detach().clone() for k, v in model.supernet.named_parameters()}},
               out / f"{mode}_rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
