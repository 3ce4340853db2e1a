"""Train SPOS for a few steps either as a 2-process DDP job (gloo, CPU) or as one process that
accumulates the same per-rank micro-batches; save each rank's sampled archs and final weights.

Run by tests/test_ddp.py: ``python tests/scripts/ddp_equivalence.py {ddp,single} OUT_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from _ddp_common import MicroBatches, RecordArchs
from torch.utils.data import DataLoader

from callbacks import EvolutionSearch
from nas_lightning.methods import SPOS
from nas_lightning.spaces import NB201Space

STEPS, MICRO, WORLD = 6, 8, 2


def main(mode: str, out: Path) -> None:
    pl.seed_everything(0, verbose=False)
    space = NB201Space(C=4, N=1, num_classes=5, in_channels=1, input_size=8)
    model = SPOS(space, seed=7, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
                 num_eval_archs=0)
    initial = {k: v.detach().clone() for k, v in model.supernet.named_parameters()}
    record = RecordArchs()
    kwargs = dict(max_steps=STEPS, accelerator="cpu", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False,
                  use_distributed_sampler=False, callbacks=[record])
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
    params = {k: v.detach().clone() for k, v in model.supernet.named_parameters()}

    # The search state: an evolution whose scores are summed over ranks, each rank on its shard.
    search = EvolutionSearch(population=6, generations=2, topk=3, num_mutation=3, num_crossover=3,
                             output_dir=str(out / f"search_{mode}"), resume=False, progress=False)
    trainer.callbacks.append(search)
    gen = torch.Generator().manual_seed(5)
    val = [(torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 5, (16,), generator=gen)) for _ in range(4)]
    shard = val[rank::WORLD] if mode == "ddp" else val
    trainer.validate(model, dataloaders=DataLoader(shard, batch_size=None), verbose=False)
    result = search.result.to_dict() if search.result else None
    torch.save({"archs": record.archs, "initial": initial, "params": params, "search": result},
               out / f"{mode}_rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
