"""The potential of partial models: Algorithm 1 of PC-NAS, batched and split over DDP ranks.

Li et al., "Improving One-Shot NAS by Suppressing the Posterior Fading", CVPR 2020, arXiv:1910.02543,
eq. (11) and Algorithm 1:

    Potential(o_1..o_l) = E_{m : m_i = o_i, i <= l} [ Acc(m) ],

estimated by the mean one-batch validation accuracy (percent) of S uniform completions that meet the
hard latency limit (SPEC.md: S completions *that satisfy* the limit, drawn by rejection sampling;
Algorithm 1 draws S and dumps the invalid ones, which gives the same estimator with fewer samples).

Choices fixed here (the paper leaves them open):

- Completions of all candidates are drawn, candidate by candidate, from one generator derived from
  (seed, "potential", shrink index), so every rank draws the same ones and a rerun draws them again.
- Completion j of a candidate uses validation batch ``j mod B`` (B = number of batches given): every
  candidate is scored on the same batches in the same proportions.
- BN: batch statistics of the completion's own batch (SPEC.md, "Inherited weights", with
  ``bn_recalibration=0``), or, given calibration batches, statistics re-estimated on them per arch.
- A candidate none of whose completions can meet the limit (its cheapest completion, found by
  ``LatencyLimit.cheapest_completion``, is over it), or whose rejection sampling found no valid
  completion, is dropped with a warning; if no candidate survives, a ``ValueError`` names the limit.

Speed: identical (arch, batch) pairs are evaluated once (a full arch, or a small space, repeats them
often); the batches of one arch run as one forward pass with BN statistics computed per batch (the
batches are stacked along the channel axis for ``F.batch_norm``, which gives exactly per-batch
statistics); correct counts stay on the device until one reduction at the end. The distinct archs are
split over the DDP ranks (balanced by their number of batches) and the per-pair counts summed over
ranks, so every rank ends with the identical potentials.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nas_lightning.evaluation.inherited import Batch, preserved_state, recalibrate_bn
from nas_lightning.samplers.pool import LatencyLimit, Prefix, valid_completions
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.supernet.base import Supernet

Reduce = Callable[[torch.Tensor], torch.Tensor]


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
    names = [_prefix_text(space, p) for p in candidates]
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


def _prefix_text(space: SearchSpace, prefix: Prefix) -> str:
    return "[" + ", ".join(f"{d.name}={d.choices[i]}" for d, i in zip(space.decisions, prefix)) + "]"


@contextmanager
def per_batch_norm(model: nn.Module, group: list[int]) -> Iterator[None]:
    """BN layers normalise each consecutive block of ``group[0]`` samples by its own statistics.

    The blocks are moved to the channel axis, so one ``F.batch_norm`` call computes exactly the
    statistics each block would get alone. Running buffers are neither used nor updated.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def make(m: nn.modules.batchnorm._BatchNorm) -> Callable[[torch.Tensor], torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            size = group[0]
            k, c, rest = x.shape[0] // size, x.shape[1], x.shape[2:]
            xs = x.reshape(k, size, c, *rest).transpose(0, 1).reshape(size, k * c, *rest)
            w = None if m.weight is None else m.weight.repeat(k)
            b = None if m.bias is None else m.bias.repeat(k)
            y = F.batch_norm(xs, None, None, w, b, True, 0.0, m.eps)
            return y.reshape(size, k, c, *rest).transpose(0, 1).reshape(x.shape)
        return forward

    for m in bns:
        m.forward = make(m)
    try:
        yield
    finally:
        for m in bns:
            del m.forward


def _assign(groups: list[list[int]], world_size: int) -> list[int]:
    """Rank of each arch group: greedy, to the rank with the fewest batches so far (lowest on ties)."""
    load = [0] * world_size
    ranks = []
    for units in groups:
        r = min(range(world_size), key=lambda i: (load[i], i))
        load[r] += len(units)
        ranks.append(r)
    return ranks


@torch.inference_mode()
def evaluate_pairs(supernet: Supernet, pairs: Sequence[tuple[Arch, int]], batches: Sequence[Batch], *,
                   rank: int = 0, world_size: int = 1, calibration: Sequence[Batch] = (),
                   max_batches_per_forward: int = 8) -> tuple[torch.Tensor, int]:
    """Correct counts (float64, on the supernet's device) of distinct (arch, batch index) pairs.

    This rank evaluates only the archs assigned to it; the other entries are 0, so summing the result
    over ranks gives every count. Returns the counts and how many pairs this rank evaluated.
    """
    device = next(supernet.parameters()).device
    correct = torch.zeros(len(pairs), dtype=torch.float64, device=device)
    by_arch: dict[Arch, list[int]] = {}
    for u, (arch, _) in enumerate(pairs):
        by_arch.setdefault(arch, []).append(u)
    groups = list(by_arch.values())
    done = 0
    group_size = [1]
    with preserved_state(supernet):
        for units, owner in zip(groups, _assign(groups, world_size)):
            if owner != rank:
                continue
            arch = pairs[units[0]][0]
            if calibration:
                recalibrate_bn(supernet, lambda x, a=arch: supernet(x.to(device), a), calibration)
            else:
                supernet.eval()
            units = sorted(units, key=lambda u: -len(batches[pairs[u][1]][1]))  # equal sizes side by side
            for chunk in _chunks(units, lambda u: len(batches[pairs[u][1]][1]), max_batches_per_forward):
                x = torch.cat([batches[pairs[u][1]][0] for u in chunk]).to(device, non_blocking=True)
                y = torch.cat([batches[pairs[u][1]][1] for u in chunk]).to(device, non_blocking=True)
                group_size[0] = len(y) // len(chunk)
                if calibration:
                    pred = supernet(x, arch).argmax(1)
                else:
                    with per_batch_norm(supernet, group_size):
                        pred = supernet(x, arch).argmax(1)
                correct[torch.tensor(chunk, device=device)] = (pred == y).view(len(chunk), -1).sum(1).double()
                done += len(chunk)
    return correct, done


def _chunks(units: list[int], size_of: Callable[[int], int], limit: int) -> Iterator[list[int]]:
    chunk: list[int] = []
    for u in units:
        if chunk and (len(chunk) == limit or size_of(u) != size_of(chunk[0])):
            yield chunk
            chunk = []
        chunk.append(u)
    if chunk:
        yield chunk


def potentials(supernet: Supernet, candidates: Sequence[Prefix], batches: Sequence[Batch], num_completions: int,
               generator: torch.Generator, limit: LatencyLimit, *, rank: int = 0, world_size: int = 1,
               reduce: Reduce | None = None, calibration: Sequence[Batch] = (), max_tries_factor: int = 10,
               max_batches_per_forward: int = 8) -> PotentialResult:
    """Algorithm 1 for every candidate: eq. (11) estimated from ``num_completions`` valid completions.

    Every rank must pass the same ``batches`` and a generator in the same state; ``reduce`` sums a
    tensor over ranks (identity for one process).
    """
    if not batches:
        raise ValueError("potentials need at least one validation batch")
    space = supernet.space
    draws = draw_completions(space, candidates, num_completions, len(batches), generator, limit, max_tries_factor)
    index: dict[tuple[Arch, int], int] = {}
    unit_of = [[index.setdefault((a, b), len(index)) for a, b in zip(archs, ids)]
               for archs, ids in zip(draws.completions, draws.batch_ids)]
    pairs = list(index)
    correct, done = evaluate_pairs(supernet, pairs, batches, rank=rank, world_size=world_size,
                                   calibration=calibration, max_batches_per_forward=max_batches_per_forward)
    if reduce is not None:
        correct = reduce(correct)
    sizes = torch.tensor([len(batches[b][1]) for _, b in pairs], dtype=torch.float64, device=correct.device)
    unit_acc = (100.0 * correct / sizes).tolist()
    accuracies = [[unit_acc[u] for u in units] for units in unit_of]
    pots = [sum(a) / len(a) if a else None for a in accuracies]
    return PotentialResult(list(candidates), pots, draws.completions, accuracies, len(pairs), done)
