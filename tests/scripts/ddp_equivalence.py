"""Train SPOS for a few steps either as a 2-process DDP job (gloo, CPU) or as one process that
accumulates the same per-rank micro-batches; save each rank's sampled archs and final weights.

Run by tests/test_ddp.py: ``python tests/scripts/ddp_equivalence.py {ddp,single} OUT_DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from _ddp_common import RecordArchs, fit_micro_batches, make_spos
from torch.utils.data import DataLoader

from callbacks import EvolutionSearch

STEPS, MICRO, WORLD = 6, 8, 2


def main(mode: str, out: Path) -> None:
    model = make_spos()
    initial = {k: v.detach().clone() for k, v in model.supernet.named_parameters()}
    record = RecordArchs()
    trainer = fit_micro_batches(model, mode, STEPS, MICRO, WORLD, [record])
    rank = trainer.global_rank
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
