"""The one evaluator of archs with inherited weights, used by validation, ranking and search.

Each arch runs on whole batches (no per-sample loop). BN layers either use the statistics of the
evaluation batch (``bn_recalibration=0``: the supernet's running statistics mix every arch and
mean little for any one), or are reset and re-estimated on K training batches first (SPOS
practice, SPEC.md "Inherited weights"). The supernet's BN buffers and modes are restored after.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nas_lightning.spaces.arch import Arch
from nas_lightning.supernet.base import Supernet

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class EvalTotals:
    """Per-arch sums over the batches seen; sum them over ranks, then divide."""

    correct: torch.Tensor  # (n_archs,)
    loss: torch.Tensor  # (n_archs,) summed cross-entropy
    count: torch.Tensor  # (n_archs,)

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
    """Restore train/eval modes, BN buffers and BN momenta on exit."""
    modes = {m: m.training for m in model.modules()}
    bns = _batchnorms(model)
    saved = [(m.momentum, {k: b.detach().clone() for k, b in m.named_buffers(recurse=False)}) for m in bns]
    try:
        yield
    finally:
        for m, (momentum, buffers) in zip(bns, saved):
            m.momentum = momentum
            for k, b in buffers.items():
                getattr(m, k).copy_(b)
        for m, training in modes.items():
            m.training = training


def _use_batch_statistics(model: nn.Module) -> None:
    model.eval()
    for m in _batchnorms(model):
        m.train()
        m.momentum = 0.0  # batch statistics in the forward pass, running buffers left untouched


@torch.no_grad()
def recalibrate_bn(model: nn.Module, forward, batches: Sequence[Batch]) -> None:
    """Reset BN running statistics and re-estimate them as the exact average over ``batches``."""
    model.eval()
    for m in _batchnorms(model):
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    for x, _ in batches:
        forward(x)
    model.eval()


@torch.no_grad()
def evaluate_archs(supernet: Supernet, archs: Sequence[Arch], batches: Sequence[Batch],
                   calibration: Sequence[Batch] = ()) -> EvalTotals:
    """Per-arch correct counts, summed loss and sample counts on ``batches``.

    With ``calibration`` batches, BN statistics are re-estimated on them for each arch; without,
    each evaluation batch is normalised by its own statistics.
    """
    device = next(supernet.parameters()).device
    n = len(archs)
    correct = torch.zeros(n, dtype=torch.float64, device=device)
    loss = torch.zeros(n, dtype=torch.float64, device=device)
    count = torch.zeros(n, dtype=torch.float64, device=device)
    with preserved_state(supernet):
        for i, arch in enumerate(archs):
            if calibration:
                recalibrate_bn(supernet, lambda x, a=arch: supernet(x.to(device), a), calibration)
            else:
                _use_batch_statistics(supernet)
            for x, y in batches:
                x, y = x.to(device), y.to(device)
                logits = supernet(x, arch).float()
                correct[i] += (logits.argmax(1) == y).sum()
                loss[i] += F.cross_entropy(logits, y, reduction="sum")
                count[i] += y.numel()
    return EvalTotals(correct, loss, count)
