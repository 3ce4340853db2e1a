"""Validate one fixed SPOS supernet (seeded weights, BN recalibration on) through the data module, either as a
2-process DDP job (gloo, CPU) or as one process, and save what each rank evaluated: per-arch accuracies and image
counts with ``limit_val_batches=3`` and an evolutionary search on them, then per-arch results on the whole
supernet-val split, whose 100 images (eval batch 11) end in a 1-image batch that rank 1 has no slice of, and on
half of it (``limit_val_batches=0.5``).

Run by tests/test_ddp.py: ``python tests/scripts/ddp_eval_data.py {ddp,single} OUT_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from callbacks import EvolutionSearch
from nas_lightning.data import SyntheticDataModule
from nas_lightning.methods import SPOS
from nas_lightning.spaces import ChainSpace

LIMIT, EVAL_BATCH = 3, 11


def make_data() -> SyntheticDataModule:
    # 400 * 0.25 = 100 supernet-val images: 9 batches of 11 and one of 1. Calibration batches of 16 come from the
    # 300 supernet-train images.
    return SyntheticDataModule(num_classes=5, in_channels=1, image_size=8, num_train=400, num_test=8, batch_size=16,
                               eval_batch_size=EVAL_BATCH, val_fraction=0.25, seed=0, noise=1.5)


def make_model() -> SPOS:
    pl.seed_everything(0, verbose=False)  # the same weights in every process and in both modes
    space = ChainSpace(num_layers=3, C=8, num_classes=5, in_channels=1, input_size=8)
    return SPOS(space, seed=7, num_eval_archs=6, eval_seed=1, bn_recalibration=3)


def validate(mode: str, limit: int | float, callbacks: list[pl.Callback]) -> tuple[pl.Trainer, SPOS]:
    kwargs = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, limit_val_batches=limit, callbacks=callbacks)
    if mode == "ddp":
        trainer = pl.Trainer(devices=2, strategy="ddp", **kwargs)
    else:
        trainer = pl.Trainer(devices=1, **kwargs)
    model = make_model()
    trainer.validate(model, datamodule=make_data(), verbose=False)
    return trainer, model


def per_arch(model: SPOS) -> dict[str, tuple[float, float]]:
    """Accuracy and image count of each eval arch, summed over ranks."""
    totals = model.evaluate(model.eval_archs)
    return {str(a): (float(acc), float(n)) for a, acc, n in zip(model.eval_archs, totals.accuracy, totals.count)}


def main(mode: str, out: Path) -> None:
    search = EvolutionSearch(population=6, generations=2, topk=3, num_mutation=3, num_crossover=3,
                             output_dir=str(out / f"search_{mode}"), resume=False, progress=False)
    trainer, model = validate(mode, LIMIT, [search])
    limited = per_arch(model)
    local = sum(len(y) for _, y in model.batches.validation())
    calibration = [x.sum().item() for x, _ in model.batches.calibration()]
    result = search.result.to_dict() if search.result else None
    _, model = validate(mode, 1.0, [])
    whole = per_arch(model)
    _, model = validate(mode, 0.5, [])  # half of the 10 global batches on every rank, though rank 1 has 9 slices
    half = per_arch(model)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"limited": limited, "whole": whole, "half": half, "local": local, "search": result,
                "calibration": calibration},
               out / f"{mode}_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
