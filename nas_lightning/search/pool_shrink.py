"""PC-NAS's progressive space shrinking (Li et al., "Improving One-Shot NAS by Suppressing the Posterior
Fading", CVPR 2020, arXiv:1910.02543, section 3.3 and Algorithm 2), as plain functions of the pool.

``next_pool`` is one iteration of Algorithm 2: Extend the partial models by every choice of the next
decision, score each candidate by its Potential (eq. 11, Algorithm 1: ``nas_lightning.search.potential``),
keep the Top P. ``shrink_due`` is Algorithm 2's schedule; ``shrink_record``, ``history_csv`` and
``final_pool_rows`` are what a run writes.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from typing import Any

from nas_lightning.samplers.pool import LatencyLimit, PartialModelPool, Prefix, extend, top_partial_models
from nas_lightning.search.potential import PotentialResult
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace

Potentials = Callable[[list[Prefix]], PotentialResult]


def shrink_due(epochs_done: int, num_fixed: int, num_decisions: int, warmup_epochs: int,
               interval_epochs: int) -> bool:
    """Algorithm 2's schedule: shrink k = ``num_fixed`` is due after ``T_w + k * T_i`` epochs."""
    return num_fixed < num_decisions and epochs_done >= warmup_epochs + num_fixed * interval_epochs


def next_pool(members: Sequence[Prefix], space: SearchSpace, potentials: Potentials,
              pool_size: int) -> tuple[list[Prefix], PotentialResult]:
    """One iteration of Algorithm 2: ``Top(Potential(Extend(pool)), P)``. Returns the new members, best
    first, and the potentials of every candidate."""
    result = potentials(extend(members, space))
    return top_partial_models(result.candidates, result.potentials, pool_size), result


def shrink_record(pool: PartialModelPool, space: SearchSpace, result: PotentialResult, kept: Sequence[Prefix],
                  epoch: int) -> dict[str, Any]:
    """The history entry of the shrink that fixes decision ``pool.num_fixed``: plain JSON-able values."""
    layer = pool.num_fixed
    return {
        "shrink": len(pool.history), "epoch": epoch, "layer": layer, "decision": space.decisions[layer].name,
        "candidates": [list(c) for c in result.candidates], "potentials": list(result.potentials),
        "num_valid": result.num_valid, "kept": [list(k) for k in kept],
    }


def member_text(space: SearchSpace, member: Sequence[int]) -> str:
    return "|".join(space.decisions[d].choices[i] for d, i in enumerate(member))


def history_csv(space: SearchSpace, history: list[dict[str, Any]]) -> str:
    """One row per candidate of every shrink: its potential, valid completions and rank if kept."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["shrink", "epoch", "layer", "decision", "candidate", "potential", "num_valid", "kept_rank"])
    for rec in history:
        kept = [tuple(k) for k in rec["kept"]]
        for cand, pot, n in zip(rec["candidates"], rec["potentials"], rec["num_valid"]):
            rank = kept.index(tuple(cand)) + 1 if tuple(cand) in kept else ""
            writer.writerow([rec["shrink"], rec["epoch"], rec["layer"], rec["decision"], member_text(space, cand),
                             "" if pot is None else f"{pot:.4f}", n, rank])
    return buf.getvalue()


def best_completions(result: PotentialResult) -> list[Arch | None]:
    """Each member's best sampled completion (highest one-batch accuracy; the potential of a full arch is
    its accuracy, eq. 11), None for a member with no valid completion."""
    return [c[max(range(len(a)), key=lambda j: (a[j], -j))] if a else None
            for c, a in zip(result.completions, result.accuracies)]


def final_pool_rows(pool: PartialModelPool, space: SearchSpace, limit: LatencyLimit,
                    completed: Sequence[Arch | None] | None = None) -> list[dict[str, Any]]:
    """The pool, best first, as full archs with latency, FLOPs, params and potential.

    ``completed``: for a pool whose members are still partial, the full arch that stands for each
    member (``best_completions``); the rows then say so.
    """
    if not pool.members:
        return []
    last = pool.history[-1]
    potential_of = {tuple(c): p for c, p in zip(last["candidates"], last["potentials"])}
    archs = list(completed) if completed is not None else [space.arch(m) for m in pool.members]
    note = None if completed is None else (
        f"training ended with {pool.num_fixed} of {space.num_decisions} decisions fixed; the member was completed "
        "with the best of its sampled completions (one-batch accuracy)")
    rows = []
    for member, arch in zip(pool.members, archs):
        if arch is None:
            continue
        params, flops = space.cost(arch)
        row = {"arch": str(arch), "potential": potential_of[tuple(member)], "latency": limit.model(arch),
               "latency_unit": limit.model.unit, "flops": flops, "params": params, "partial": list(member)}
        if note:
            row["completed"] = note
        rows.append(row)
    return rows
