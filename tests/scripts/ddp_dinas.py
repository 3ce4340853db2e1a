"""Train DI-NAS as a 2-process DDP job (gloo, CPU) for three epochs (one of warm-up); save each rank's
sampled archs, controller state, projection matrices and disturbance matrix (trained with the projection).

Run by tests/test_dinas.py: ``python tests/scripts/ddp_dinas.py OUT_DIR``.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from _ddp_common import RecordArchs

from callbacks.controller_step import ControllerStep
from callbacks.disturbance_metrics import DisturbanceMetrics
from callbacks.projection_matrix_update import ProjectionMatrixUpdate
from nas_lightning.data import SyntheticDataModule
from nas_lightning.methods.dinas import DINAS
from nas_lightning.samplers.controller import ControllerSampler
from nas_lightning.spaces import ChainSpace


def main(out: Path) -> None:
    pl.seed_everything(0, verbose=False)
    space = ChainSpace(num_layers=3, C=4, num_classes=4, in_channels=1, input_size=8)
    # The same settings as tests/test_dinas.py; each rank trains 2 steps of 32 per epoch.
    model = DINAS(space, partial(ControllerSampler, hidden_size=16, lr=0.05), seed=3, num_eval_archs=2,
                  optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    data = SyntheticDataModule(num_classes=4, in_channels=1, image_size=8, num_train=192, num_test=32, noise=0.5,
                               batch_size=32, eval_batch_size=16, val_fraction=0.25, seed=0)
    record = RecordArchs()
    disturbance = DisturbanceMetrics(num_archs=3, matrix_archs=2, matrix_at="end", matrix_lr=0.05,
                                     output_dir=str(out / "disturbance"))
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=out / "run",
                         callbacks=[record, disturbance,
                                    ControllerStep(start_epoch=1, steps_per_epoch=3, archs_per_step=2),
                                    ProjectionMatrixUpdate(seed=3)])
    trainer.fit(model, datamodule=data)
    (projection,) = [c for c in trainer.callbacks if isinstance(c, ProjectionMatrixUpdate)]
    torch.save({"archs": record.archs, "sampler": model.sampler.state_dict(), "P": projection.P,
                "steps_per_epoch": trainer.num_training_batches, "matrix": disturbance.last_matrix.table()},
               out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
