"""The potential of partial models: Algorithm 1 of PC-NAS, split over DDP ranks.

Li et al., "Improving One-Shot NAS by Suppressing the Posterior Fading", CVPR 2020, arXiv:1910.02543,
eq. (11) and Algorithm 1:

    Potential(o_1..o_l) = E_{m : m_i = o_i, i <= l} [ Acc(m) ],

estimated by the mean one-batch validation accuracy (percent) of S uniform completions that meet the
hard latency limit: S completions *that satisfy* the limit, drawn by rejection sampling (Algorithm 1 draws
S and dumps the invalid ones, which gives the same estimator from fewer samples; docs/design_choices.md,
"PC-NAS").

Choices fixed here (the paper leaves them open; docs/design_choices.md, "PC-NAS"):

- Completions of all candidates are drawn, candidate by candidate, from one generator derived from
  (seed, "potential", shrink index), so every rank draws the same ones and a rerun draws them again.
- Completion j of a candidate uses batch ``j mod B`` of the B batches given: every candidate is scored on
  the same batches in the same proportions, so how hard a batch is weighs on every candidate alike and
  drops out of their comparison. Algorithm 1 scores each completion on one random validation batch:
  ``PCNAS`` passes B batches drawn afresh for every shrink, seeded, from the whole supernet-val split in a
  random order, so the batch of each completion is a uniformly random one of the split.
- BN: batch statistics of the completion's own batch (``bn_recalibration=0``), or, given calibration
  batches, statistics re-estimated on them per arch (docs/design_choices.md, "Inherited weights").
- A candidate none of whose completions can meet the limit (its cheapest completion, found by
  ``LatencyLimit.cheapest_completion``, is over it), or whose rejection sampling found no valid
  completion, is dropped with a warning; if no candidate survives, a ``ValueError`` names the limit.

Evaluation is the shared inherited-weight evaluator (``nas_lightning.evaluation.evaluate_units``) on the
distinct (completion, batch) units, sharded over archs: each rank scores the archs dealt to it and the
counts are summed over ranks, so every rank ends with the identical potentials.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nas_lightning.evaluation.inherited import Batch, Reduce, Unit, assign_archs, evaluate_units
from nas_lightning.samplers.pool import LatencyLimit, Prefix, prefix_text, valid_completions
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.supernet.base import Supernet


@dataclass
class CompletionDraws:
    """The completions of each candidate (empty for a dropped one) and the batch each one uses."""

    candidates: list[Prefix]
    completions: list[list[Arch]]
    batch_ids: list[list[int]]
    dropped: dict[int, str]  # candidate index -> why


@dataclass
class PotentialResult:
    """Potentials (percent; None = dropped), per-completion accuracies, and this rank's share of work."""

    candidates: list[Prefix]
    potentials: list[float | None]
    completions: list[list[Arch]]
    accuracies: list[list[float]]
    num_units: int  # distinct (arch, batch) pairs evaluated over all ranks
    evaluated_here: int  # of which this rank evaluated

    @property
    def num_valid(self) -> list[int]:
        return [len(c) for c in self.completions]


def draw_completions(space: SearchSpace, candidates: Sequence[Prefix], num_completions: int, num_batches: int,
                     generator: torch.Generator, limit: LatencyLimit, max_tries_factor: int = 10) -> CompletionDraws:
    """Algorithm 1's ``expand`` and latency check for every candidate (no evaluation)."""
    completions, batch_ids, dropped = [], [], {}
    for c, prefix in enumerate(candidates):
        archs: list[Arch] = []
        if limit.active:
            cheapest, cost = limit.cheapest_completion(space, prefix)
            if cost > limit.max_latency:
                dropped[c] = f"its cheapest completion {cheapest} costs {cost:.4g} {limit.model.unit}"
        if c not in dropped:
            archs = valid_completions(space, prefix, num_completions, generator, limit,
                                      max_tries=num_completions * max_tries_factor)
            if not archs:
                dropped[c] = f"none of {num_completions * max_tries_factor} sampled completions met the limit"
        completions.append(archs)
        batch_ids.append([j % num_batches for j in range(len(archs))])
    names = [prefix_text(space, p) for p in candidates]
    for c, why in dropped.items():
        warnings.warn(f"PC-NAS: dropped candidate {names[c]} under {limit.describe()}: {why}", stacklevel=2)
    if len(dropped) == len(candidates):
        raise ValueError(
            f"no candidate partial model can meet {limit.describe()} ({len(candidates)} candidates: "
            f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); relax the limit: raise max_latency above "
            f"{limit.max_latency} (the cheapest arch of the space costs "
            f"{limit.cheapest_completion(space, ())[1]:.4g} {limit.model.unit}) or set max_latency: null"
        )
    return CompletionDraws(list(candidates), completions, batch_ids, dropped)


def potentials(supernet: Supernet, candidates: Sequence[Prefix], batches: Sequence[Batch], num_completions: int,
               generator: torch.Generator, limit: LatencyLimit, *, rank: int = 0, world_size: int = 1,
               reduce: Reduce | None = None, calibration: Sequence[Batch] = (), max_tries_factor: int = 10,
               max_batches_per_forward: int | None = None) -> PotentialResult:
    """Algorithm 1 for every candidate: eq. (11) estimated from ``num_completions`` valid completions.

    Every rank must pass the same ``batches`` and a generator in the same state; ``reduce`` sums a
    tensor over ranks (identity for one process). ``max_batches_per_forward``: batches of one completion
    stacked into one forward pass (None: the evaluator's default for the device).
    """
    if not batches:
        raise ValueError("potentials need at least one validation batch")
    space = supernet.space
    draws = draw_completions(space, candidates, num_completions, len(batches), generator, limit, max_tries_factor)
    index: dict[Unit, int] = {}
    unit_of = [[index.setdefault((a, b), len(index)) for a, b in zip(archs, ids)]
               for archs, ids in zip(draws.completions, draws.batch_ids)]
    units = list(index)
    correct = evaluate_units(supernet, units, batches, calibration=calibration, shard="archs", rank=rank,
                             world_size=world_size, reduce=reduce,
                             max_batches_per_forward=max_batches_per_forward).correct
    done = sum(owner == rank for owner in assign_archs(units, world_size))
    sizes = torch.tensor([len(batches[b][1]) for _, b in units], dtype=torch.float64, device=correct.device)
    unit_acc = (100.0 * correct / sizes).tolist()
    accuracies = [[unit_acc[u] for u in units_c] for units_c in unit_of]
    pots = [sum(a) / len(a) if a else None for a in accuracies]
    return PotentialResult(list(candidates), pots, draws.completions, accuracies, len(units), done)
