"""Train WPNAS (with the landmark term) as a 2-process DDP job (gloo, CPU) for three epochs, one of warm-up; save
each rank's sampled archs, sampler state (alphas, Adam state, counters), last policy statistics, exported arch and
supernet weights.

Run by tests/test_wpnas.py: ``python tests/scripts/ddp_wpnas.py OUT_DIR``.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from _ddp_common import RecordArchs

from callbacks.policy_step import PolicyStep
from nas_lightning.data import SyntheticDataModule
from nas_lightning.methods.landmark import LandmarkRegularizer
from nas_lightning.methods.wpnas import WPNAS
from nas_lightning.samplers.probabilistic import ProbabilisticSampler
from nas_lightning.spaces import ChainSpace


def main(out: Path) -> None:
    pl.seed_everything(0, verbose=False)
    space = ChainSpace(num_layers=3, C=4, num_classes=4, in_channels=1, input_size=8)
    gt = out / "gt.csv"
    gt.write_text("arch,accuracy\n" + "".join(f"{space.arch_at(i)},{80 - 2 * i}\n" for i in range(8)))
    landmark = partial(LandmarkRegularizer, ground_truth=str(gt), num_landmarks=5, max_weight=2.0, warmup_epochs=1)
    model = WPNAS(space, partial(ProbabilisticSampler, lr=0.2), seed=3, num_eval_archs=2, landmark=landmark,
                  optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))
    # Each rank trains 2 steps of 32 per epoch; reward batches of 16 are split 8 + 8 over the ranks.
    data = SyntheticDataModule(num_classes=4, in_channels=1, image_size=8, num_train=192, num_test=32, noise=0.5,
                               batch_size=32, eval_batch_size=16, val_fraction=0.25, seed=0)
    record = RecordArchs()
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=out / "run",
                         callbacks=[record, PolicyStep(start_epoch=1, output_dir=str(out / "wpnas"))])
    trainer.fit(model, datamodule=data)
    torch.save({"archs": record.archs, "sampler": model.policy.state_dict(), "stats": model.last_policy_stats,
                "export": model.export(out, write=False),
                "params": {k: v.detach().clone() for k, v in model.supernet.state_dict().items()}},
               out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
