"""The one evaluator of archs with inherited weights: validation, ranking, search, potentials, disturbance.

The unit of work is an (arch, batch) pair: the arch runs on the whole batch (no per-sample loop) with the
supernet's weights, and the unit's correct count, summed cross-entropy and sample count are kept as sums
(``EvalTotals``) so that they add over batches and over ranks before anything is divided. Per-arch
evaluation (``evaluate_archs``) is the case "every arch on every batch"; PC-NAS potentials (arXiv:1910.02543,
eq. 11, Algorithm 1) score each completion on one batch.

BatchNorm (docs/design_choices.md, "Inherited weights"): the supernet's running statistics mix every arch
and describe none, so they are never used. Either every evaluation batch is normalised by its own
statistics (``bn_recalibration=0``), or, given calibration batches, the statistics are reset and
re-estimated per arch as the exact average over them (SPOS practice), then the arch runs in eval mode.
The supernet's BN buffers, momenta and train/eval modes are restored afterwards.

Work split over DDP ranks, one of two ways; ``reduce`` (a sum over ranks, identity for one process, never
a Trainer) then gives every rank all the totals:

- ``shard="data"``: the caller gives this rank's shard of the batches; every rank evaluates every unit.
- ``shard="archs"``: every rank gets the same batches; the archs are dealt to the ranks (greedy, by their
  number of batches) and a rank leaves the units of the others at zero.

Speed: identical units are evaluated once; the batches of one arch are stacked into one forward pass
(``torch.func.vmap`` over the batch axis, which keeps each batch's BN statistics its own and gives the same
numbers as one forward per batch; no BN module is patched); counts stay on the device until one write at the
end. Stacking pays where a forward pass is bound by kernel launches (a GPU). On a CPU a forward pass is bound
by arithmetic and memory traffic: ``benchmarks/potential_eval.py --stacking`` measured stacking 0.6-1.05x of
one batch per forward with one thread (up to 1.5x with two threads on 16x16 inputs, but 0.6-0.9x on 32x32
ones), so by default only accelerators stack; ``max_batches_per_forward`` overrides that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from nas_lightning.spaces.arch import Arch
from nas_lightning.supernet.base import Supernet

Batch = tuple[torch.Tensor, torch.Tensor]
Unit = tuple[Arch, int]  # an arch and the index of the batch it runs on
Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums a tensor over ranks


@dataclass
class EvalTotals:
    """Per-arch (or per-unit) sums over the batches seen; sum them over ranks, then divide."""

    correct: torch.Tensor  # (n,)
    loss: torch.Tensor  # (n,) summed cross-entropy
    count: torch.Tensor  # (n,)

    def stacked(self) -> torch.Tensor:
        return torch.stack([self.correct, self.loss, self.count])

    @classmethod
    def from_stacked(cls, t: torch.Tensor) -> EvalTotals:
        return cls(t[0], t[1], t[2])

    @property
    def accuracy(self) -> torch.Tensor:
        """Top-1 accuracy in percent."""
        return 100.0 * self.correct / self.count.clamp_min(1)

    @property
    def mean_loss(self) -> torch.Tensor:
        return self.loss / self.count.clamp_min(1)


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Restore train/eval modes, BN buffers, momenta and ``track_running_stats`` on exit."""
    modes = {m: m.training for m in model.modules()}
    bns = _batchnorms(model)
    saved = [(m.momentum, m.track_running_stats,
              {k: b.detach().clone() for k, b in m.named_buffers(recurse=False)}) for m in bns]
    try:
        yield
    finally:
        for m, (momentum, track, buffers) in zip(bns, saved):
            m.momentum, m.track_running_stats = momentum, track
            for k, b in buffers.items():
                getattr(m, k).copy_(b)
        for m, training in modes.items():
            m.training = training


def use_batch_statistics(model: nn.Module) -> None:
    """Eval mode, except that every BN layer normalises each input by the input's own statistics.

    BN in train mode without tracked statistics is PyTorch's own "batch statistics only" mode: the running
    buffers are neither read nor written, and the forward pass holds no state, so ``vmap`` can run it.
    """
    model.eval()
    for m in _batchnorms(model):
        m.train()
        m.track_running_stats = False


@torch.no_grad()
def recalibrate_bn(model: nn.Module, forward: Callable[[torch.Tensor], object], batches: Sequence[Batch]) -> None:
    """Reset BN running statistics and re-estimate them as the exact average over ``batches``."""
    model.eval()
    for m in _batchnorms(model):
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    for x, _ in batches:
        forward(x)
    model.eval()


def default_batches_per_forward(device: torch.device, batch_size: int) -> int:
    """How many batches of ``batch_size`` one forward pass stacks by default (module docstring, "Speed").

    One on a CPU. On an accelerator, up to 8 and at most 512 samples in all: small batches leave it waiting
    on kernel launches, large ones already fill it (and 8 of them could exhaust its memory).
    """
    if device.type == "cpu":
        return 1
    return max(1, min(8, 512 // max(batch_size, 1)))


def assign_archs(units: Sequence[Unit], world_size: int) -> list[int]:
    """The rank that evaluates each unit under ``shard="archs"``: all units of an arch go to one rank.

    Archs in order of first appearance go, one by one, to the rank with the fewest distinct batches so far
    (the lowest rank on ties), so every rank computes the same assignment.
    """
    batches_of: dict[Arch, set[int]] = {}
    for arch, b in units:
        batches_of.setdefault(arch, set()).add(b)
    load = [0] * world_size
    rank_of: dict[Arch, int] = {}
    for arch, ids in batches_of.items():
        r = min(range(world_size), key=lambda i: (load[i], i))
        load[r] += len(ids)
        rank_of[arch] = r
    return [rank_of[arch] for arch, _ in units]


def _unit_totals(supernet: Supernet, arch: Arch, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Correct count and summed cross-entropy of ``arch`` on one batch."""
    logits = supernet(x, arch).float()
    return (logits.argmax(1) == y).sum(), F.cross_entropy(logits, y, reduction="sum")


def _chunks(ids: list[int], size_of: Callable[[int], int], limit: Callable[[int], int]) -> Iterator[list[int]]:
    """Consecutive runs of batch ids of one size, at most ``limit(size)`` long (the ids arrive sorted by size)."""
    chunk: list[int] = []
    for b in ids:
        if chunk and (len(chunk) == limit(size_of(chunk[0])) or size_of(b) != size_of(chunk[0])):
            yield chunk
            chunk = []
        chunk.append(b)
    if chunk:
        yield chunk


@torch.no_grad()
def evaluate_units(supernet: Supernet, units: Sequence[Unit], batches: Sequence[Batch], *,
                   calibration: Sequence[Batch] = (), shard: Literal["data", "archs"] = "data", rank: int = 0,
                   world_size: int = 1, reduce: Reduce | None = None,
                   max_batches_per_forward: int | None = None) -> EvalTotals:
    """Per-unit correct counts, summed loss and sample counts (float64, on the supernet's device).

    Args:
        units: (arch, index into ``batches``) pairs; repeats are evaluated once and reported at every place.
        batches: the evaluation batches (this rank's shard under ``shard="data"``, the same on every rank
            under ``shard="archs"``).
        calibration: if given, BN statistics are re-estimated on them for each arch; if empty, each
            evaluation batch is normalised by its own statistics.
        shard, rank, world_size: how the work is split over ranks (module docstring).
        reduce: sums a tensor over ranks; without it the totals are this rank's alone. Every rank must
            pass the same ``units`` (the reduced tensor has one column per unit).
        max_batches_per_forward: batches of one arch stacked into one forward pass (None:
            ``default_batches_per_forward``, 1 on a CPU).
    """
    if shard not in ("data", "archs"):
        raise ValueError(f"shard must be 'data' or 'archs', got {shard!r}")
    if max_batches_per_forward is not None and max_batches_per_forward < 1:
        raise ValueError(f"max_batches_per_forward must be >= 1 or None, got {max_batches_per_forward}")
    device = next(supernet.parameters()).device

    def limit(batch_size: int) -> int:
        return max_batches_per_forward or default_batches_per_forward(device, batch_size)

    owners = assign_archs(units, world_size) if shard == "archs" else [rank] * len(units)
    slot: dict[Unit, int] = {}  # distinct unit -> row of ``sums``
    unit_slot = []
    ids_of: dict[Arch, list[int]] = {}  # this rank's archs -> their distinct batch ids
    for unit, owner in zip(units, owners):
        if unit not in slot:
            slot[unit] = len(slot)
            if owner == rank:
                ids_of.setdefault(unit[0], []).append(unit[1])
        unit_slot.append(slot[unit])
    rows: list[int] = []  # slot of each evaluated unit, in evaluation order
    correct: list[torch.Tensor] = []
    loss: list[torch.Tensor] = []
    count: list[float] = []

    def size_of(b: int) -> int:
        return len(batches[b][1])

    with preserved_state(supernet):
        if not calibration:
            use_batch_statistics(supernet)
        for arch, ids in ids_of.items():
            if calibration:
                recalibrate_bn(supernet, lambda x, a=arch: supernet(x.to(device), a), calibration)
            for chunk in _chunks(sorted(ids, key=lambda b: -size_of(b)), size_of, limit):
                if len(chunk) == 1:
                    x, y = batches[chunk[0]]
                    c, lo = _unit_totals(supernet, arch, x.to(device, non_blocking=True),
                                         y.to(device, non_blocking=True))
                    c, lo = c.view(1), lo.view(1)
                else:  # vmap keeps each batch's BN statistics its own: the same numbers as one forward per batch
                    x = torch.stack([batches[b][0] for b in chunk]).to(device, non_blocking=True)
                    y = torch.stack([batches[b][1] for b in chunk]).to(device, non_blocking=True)
                    c, lo = torch.func.vmap(lambda xb, yb, a=arch: _unit_totals(supernet, a, xb, yb))(x, y)
                rows += [slot[(arch, b)] for b in chunk]
                correct.append(c)
                loss.append(lo)
                count += [float(size_of(b)) for b in chunk]
    sums = torch.zeros(len(slot), 3, dtype=torch.float64, device=device)
    if rows:  # one write at the end: no per-unit indexing and no host-device synchronisation on the way
        values = torch.stack([torch.cat(correct).double(), torch.cat(loss).double(),
                              torch.tensor(count, dtype=torch.float64, device=device)], 1)
        sums[torch.tensor(rows, device=device)] = values
    totals = sums[torch.tensor(unit_slot, dtype=torch.long, device=device)].T
    if reduce is not None:
        totals = reduce(totals.contiguous())
    return EvalTotals(totals[0], totals[1], totals[2])


@torch.no_grad()
def evaluate_archs(supernet: Supernet, archs: Sequence[Arch], batches: Sequence[Batch],
                   calibration: Sequence[Batch] = (), *, reduce: Reduce | None = None,
                   max_batches_per_forward: int | None = None) -> EvalTotals:
    """Per-arch correct counts, summed loss and sample counts on ``batches`` (sharded over data).

    With ``calibration`` batches, BN statistics are re-estimated on them for each arch; without, each
    evaluation batch is normalised by its own statistics. ``reduce`` sums the totals over ranks.
    """
    n, per = len(archs), len(batches)
    units = [(arch, b) for arch in archs for b in range(per)]
    totals = evaluate_units(supernet, units, batches, calibration=calibration,
                            max_batches_per_forward=max_batches_per_forward).stacked()
    totals = totals.view(3, n, per).sum(2)  # per arch before the reduction: shards may hold unequal batch counts
    return EvalTotals.from_stacked(totals if reduce is None else reduce(totals))
