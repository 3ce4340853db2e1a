"""Progressive shrinking of the partial-model pool: Algorithm 2 of PC-NAS.

Li et al., "Improving One-Shot NAS by Suppressing the Posterior Fading", CVPR 2020, arXiv:1910.02543,
section 3.3 and Algorithm 2. After ``warmup_epochs`` (T_w) epochs of uniform training, and then every
``interval_epochs`` (T_i) epochs, one decision (layer) at a time, in order: each of the P partial
models is extended by every choice of the next decision, each candidate's potential (eq. 11,
Algorithm 1, ``nas_lightning.search.potential``) is estimated from ``num_completions`` (S) completions
within the latency limit, and the top P form the new pool. Shrink k (0-based) runs at the end of epoch
``T_w + k * T_i`` (1-based); after the last decision is fixed, training continues on the final pool.

The pool and its history live in the ``PoolSampler`` (checkpointed with the method); this callback
keeps no state of its own, and the schedule is a function of the epoch and the number of decisions
already fixed, so a resumed run continues the same shrinking schedule. Rank 0 writes
``pool_history.csv`` after every shrink and ``final_pool.json`` at the end of training (best first;
a list of ``{"arch": ..., ...}`` rows that ``nas-lightning cost --archs_file`` and
``StandaloneModule(arch=...)`` accept).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info

from callbacks._paths import output_dir
from nas_lightning.evaluation.inherited import Batch
from nas_lightning.methods.supernet_module import SupernetModule, require_sampler
from nas_lightning.samplers.pool import PartialModelPool, PoolSampler, top_partial_models
from nas_lightning.search.potential import PotentialResult, potentials
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.atomic import atomic_write_json, atomic_write_text
from nas_lightning.utils.distributed import broadcast_object, reduce_sum, step_generator


def shrink_due(epochs_done: int, num_fixed: int, num_decisions: int, warmup_epochs: int,
               interval_epochs: int) -> bool:
    """Algorithm 2's schedule: shrink k = ``num_fixed`` is due after ``T_w + k * T_i`` epochs."""
    return num_fixed < num_decisions and epochs_done >= warmup_epochs + num_fixed * interval_epochs


def shrink(pool: PartialModelPool, space: SearchSpace, result: PotentialResult, pool_size: int,
           epoch: int) -> dict[str, Any]:
    """Keep the top ``pool_size`` candidates of ``result`` as the new pool and record the shrink."""
    kept = top_partial_models(result.candidates, result.potentials, pool_size)
    layer = pool.num_fixed
    record = {
        "shrink": len(pool.history), "epoch": epoch, "layer": layer, "decision": space.decisions[layer].name,
        "candidates": [list(c) for c in result.candidates], "potentials": list(result.potentials),
        "num_valid": result.num_valid, "kept": [list(k) for k in kept],
    }
    pool.members = kept
    pool.history.append(record)
    return record


def history_csv(space: SearchSpace, history: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["shrink", "epoch", "layer", "decision", "candidate", "potential", "num_valid", "kept_rank"])
    for rec in history:
        kept = [tuple(k) for k in rec["kept"]]
        for cand, pot, n in zip(rec["candidates"], rec["potentials"], rec["num_valid"]):
            names = "|".join(space.decisions[d].choices[i] for d, i in enumerate(cand))
            rank = kept.index(tuple(cand)) + 1 if tuple(cand) in kept else ""
            writer.writerow([rec["shrink"], rec["epoch"], rec["layer"], rec["decision"], names,
                             "" if pot is None else f"{pot:.4f}", n, rank])
    return buf.getvalue()


class PoolShrinking(pl.Callback):
    """Algorithm 2 of PC-NAS (arXiv:1910.02543) for a ``SupernetModule`` whose sampler is a ``PoolSampler``.

    Args:
        pool_size: P, partial models kept after each shrink (paper: 5).
        num_completions: S, completions per candidate in Algorithm 1 (paper: 900).
        warmup_epochs: T_w, epochs of uniform training before the first shrink (paper: 100).
        interval_epochs: T_i, epochs between shrinks (paper: 5).
        seed: completions of shrink k come from ``step_generator(seed, "potential", k)``.
        output_dir: where ``pool_history.csv`` and ``final_pool.json`` go (default
            ``<trainer.log_dir or default_root_dir>/pcnas``).
        num_val_batches: the first this many supernet-val batches (unsharded, the same on every rank)
            score the completions; completion j of a candidate uses batch ``j mod num_val_batches``.
        max_tries_factor: rejection sampling of S valid completions gives up after S times this many draws.
    """

    def __init__(self, pool_size: int = 5, num_completions: int = 900, warmup_epochs: int = 100,
                 interval_epochs: int = 5, seed: int = 0, output_dir: str | None = None, num_val_batches: int = 16,
                 max_tries_factor: int = 10) -> None:
        for name, value in (("pool_size", pool_size), ("num_completions", num_completions),
                            ("warmup_epochs", warmup_epochs), ("interval_epochs", interval_epochs),
                            ("num_val_batches", num_val_batches), ("max_tries_factor", max_tries_factor)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PoolShrinking {name} must be an int >= 1, got {value!r}")
        self.pool_size, self.num_completions = pool_size, num_completions
        self.warmup_epochs, self.interval_epochs = warmup_epochs, interval_epochs
        self.seed, self.output_dir = seed, output_dir
        self.num_val_batches, self.max_tries_factor = num_val_batches, max_tries_factor
        self.last_result: PotentialResult | None = None

    def _dir(self, trainer: pl.Trainer) -> Path:
        return output_dir(trainer, self.output_dir, "pcnas")

    @staticmethod
    def _sampler(pl_module: pl.LightningModule) -> PoolSampler:
        return require_sampler(pl_module, PoolSampler, "PoolShrinking", "PCNAS")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = self._sampler(pl_module)
        pool, space = sampler.pool, pl_module.space
        if not shrink_due(trainer.current_epoch + 1, pool.num_fixed, space.num_decisions, self.warmup_epochs,
                          self.interval_epochs):
            return
        record = self.shrink(trainer, pl_module, sampler)
        best = max(p for p in record["potentials"] if p is not None)
        # Identical on every rank, so the sync is a no-op average that keeps Lightning's DDP check quiet.
        pl_module.log("pcnas/best_potential", best, sync_dist=True)
        pl_module.log("pcnas/decisions_fixed", float(pool.num_fixed), sync_dist=True)
        out = self._dir(trainer)  # trainer.log_dir broadcasts under DDP, so every rank asks for it
        if trainer.is_global_zero:
            atomic_write_text(out / "pool_history.csv", history_csv(space, pool.history))
            names = ", ".join("|".join(space.decisions[d].choices[i] for d, i in enumerate(m)) for m in pool.members)
            rank_zero_info(f"PC-NAS shrink {record['shrink']} (epoch {trainer.current_epoch + 1}, "
                           f"{record['decision']}): best potential {best:.2f}%, pool: {names}")

    def shrink(self, trainer: pl.Trainer, pl_module: SupernetModule, sampler: PoolSampler) -> dict[str, Any]:
        """One iteration of Algorithm 2: extend, estimate potentials (Algorithm 1), keep the top P."""
        pool = sampler.pool
        result = self._potentials(trainer, pl_module, sampler, pool.candidates(pl_module.space), len(pool.history),
                                  "potential")
        self.last_result = result
        return shrink(pool, pl_module.space, result, self.pool_size, trainer.current_epoch + 1)

    def _potentials(self, trainer: pl.Trainer, pl_module: SupernetModule, sampler: PoolSampler,
                    candidates: list[tuple[int, ...]], index: int, stream: str) -> PotentialResult:
        calibration = pl_module.calibration_batches() if pl_module.bn_recalibration else ()
        return potentials(
            pl_module.supernet, candidates, self._batches(trainer), self.num_completions,
            step_generator(self.seed, stream, index), sampler.limit, rank=trainer.global_rank,
            world_size=trainer.world_size, reduce=lambda t: reduce_sum(t, trainer), calibration=calibration,
            max_tries_factor=self.max_tries_factor,
        )

    def _batches(self, trainer: pl.Trainer) -> list[Batch]:
        """The first ``num_val_batches`` supernet-val batches, unsharded, checked equal on every rank."""
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None:
            datamodule.setup("fit")
            loader = datamodule.val_dataloader()
        else:
            loader = trainer.val_dataloaders
            loader = loader[0] if isinstance(loader, list | tuple) else loader
        if loader is None:
            raise RuntimeError("PoolShrinking needs validation data to estimate potentials: give the trainer a "
                               "datamodule with a val_dataloader (or val_dataloaders)")
        batches = []
        for x, y in loader:
            batches.append((x, y))
            if len(batches) == self.num_val_batches:
                break
        if not batches:
            raise RuntimeError("the validation loader is empty; PoolShrinking cannot estimate potentials")
        checksum = sum(float(x.double().sum()) + float(y.double().sum()) for x, y in batches)
        mismatch = torch.tensor(float(checksum != broadcast_object(checksum, trainer)))
        if float(reduce_sum(mismatch.to(trainer.strategy.root_device), trainer)) > 0:
            raise RuntimeError("ranks see different validation batches; PoolShrinking needs the same unsharded "
                               "batches on every rank (use a datamodule, whose val_dataloader() is unsharded)")
        return batches

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = self._sampler(pl_module)
        rows = self.final_pool(trainer, pl_module, sampler)
        out = self._dir(trainer)  # trainer.log_dir broadcasts under DDP, so every rank asks for it
        if trainer.is_global_zero and rows:
            path = atomic_write_json(out / "final_pool.json", rows)
            rank_zero_info(f"PC-NAS final pool ({len(rows)} archs, best first) written to {path}")

    def final_pool(self, trainer: pl.Trainer, pl_module: SupernetModule, sampler: PoolSampler) -> list[dict[str, Any]]:
        """The pool, best first, as full archs with latency, FLOPs, params and potential.

        If training ended before every decision was fixed, each member is completed with its best
        completion: the one of S valid completions with the highest one-batch accuracy (the potential
        of a full arch is its accuracy, eq. 11), drawn from ``(seed, "final", shrinks done)``.
        """
        pool, space = sampler.pool, pl_module.space
        if not pool.members:
            return []
        last = pool.history[-1]
        potential_of = {tuple(c): p for c, p in zip(last["candidates"], last["potentials"])}
        archs, note = [space.arch(m) if len(m) == space.num_decisions else None for m in pool.members], None
        if not pool.is_complete(space):
            result = self._potentials(trainer, pl_module, sampler, pool.members, len(pool.history), "final")
            # A member with no valid completion this time (warned about) has no full arch to report.
            archs = [c[max(range(len(a)), key=lambda j: (a[j], -j))] if a else None
                     for c, a in zip(result.completions, result.accuracies)]
            note = (f"training ended with {pool.num_fixed} of {space.num_decisions} decisions fixed; the member was "
                    "completed with the best of its sampled completions (one-batch accuracy)")
        rows = []
        for member, arch in zip(pool.members, archs):
            if arch is None:
                continue
            params, flops = space.cost(arch)
            row = {"arch": str(arch), "potential": potential_of[tuple(member)],
                   "latency": sampler.limit.model(arch), "latency_unit": sampler.limit.model.unit,
                   "flops": flops, "params": params, "partial": list(member)}
            if note:
                row["completed"] = note
            rows.append(row)
        return rows
