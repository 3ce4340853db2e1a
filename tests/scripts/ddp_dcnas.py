"""Train DC-NAS (M = 2, partner term on) for 2 epochs as a 2-process DDP job (gloo, CPU) with a sharing-state
inference after each epoch; save each rank's own inferences (before rank 0's is broadcast), the adopted state, the
trained archs and partners, and the weights.

Run by tests/test_dcnas.py: ``python tests/scripts/ddp_dcnas.py OUT_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from callbacks.sharing_state_update import SharingStateUpdate
from nas_lightning.data import SyntheticDataModule
from nas_lightning.methods import DCNAS
from nas_lightning.spaces import NB201Space


class Record(pl.Callback):
    def __init__(self) -> None:
        self.archs: list[str] = []
        self.partners: list[str] = []
        self.local_tables: list[torch.Tensor] = []
        self.local_scores: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.archs.append(str(pl_module.current_arch))
        self.partners.append(str(pl_module.current_partner))

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # runs after SharingStateUpdate's (listed first)
        local = pl_module.local_inference
        self.local_tables.append(local.table.clone())
        self.local_scores.append(torch.stack([r.scores for r in local.records]))


def main(out: Path) -> None:
    pl.seed_everything(0, verbose=False)
    space = NB201Space(C=4, N=1, num_classes=4, in_channels=1, input_size=8)
    model = DCNAS(space, seed=7, num_copies=2, partner_weight=0.5, num_eval_archs=0,
                  optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3))
    data = SyntheticDataModule(num_classes=4, in_channels=1, image_size=8, num_train=96, num_test=8, noise=0.5,
                               batch_size=8, eval_batch_size=16, val_fraction=1 / 3, seed=0)
    record = Record()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=[SharingStateUpdate(warmup_epochs=1, every_n_epochs=1, num_archs=16,
                                                       threshold=0.5, output_dir=str(out / "diag")), record])
    trainer.fit(model, datamodule=data)
    out.mkdir(parents=True, exist_ok=True)
    state = model.sharing.state_dict()
    torch.save({"rounds": model.sharing.rounds, "state": state, "archs": record.archs, "partners": record.partners,
                "local_tables": record.local_tables, "local_scores": record.local_scores,
                "splits": int((state["table"] > 0).sum()),
                "params": {k: v.detach().clone() for k, v in model.supernet.named_parameters()}},
               out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
