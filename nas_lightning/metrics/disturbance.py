"""Performance-disturbance (PD) metrics of DI-NAS (Niu et al., arXiv:2003.13089, section 5.3 and Fig. 1b).

The metrics of section 5.3, which every method can be measured with (docs/design_choices.md,
"Performance disturbance"):

* Performance change over an epoch interval d, averaged over a fixed set S of archs (64 in the paper,
  ``draw_archs``): ``PC_t = 1/|S| * sum_{a in S} |acc_t(a) - acc_{t-d}(a)|`` (``performance_change``).
* KTau: Kendall tau-b between the rankings of S at epoch t and at epoch t-d (``epoch_ktau``).
* GT-Tau: Kendall tau-b between inherited-weight accuracy and ground truth (``gt_tau``).
* Disturbance matrix (Fig. 1b): train a_1..a_n sequentially, one step (or k) each, and after each,
  evaluate every a_i with inherited weights: ``after[i, j]`` = val accuracy of a_i right after a_j was
  trained; ``before[i]`` = its accuracy before any of them was trained (``disturbance_matrix``). It runs on
  a deep copy of the supernet, so the real training run is never disturbed.

Accuracies are in percent, as ``EvalTotals.accuracy`` gives them; every evaluation goes through the one
inherited-weight evaluator, ``evaluate_archs``. Everything here needs no Trainer.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from nas_lightning.evaluation.inherited import Batch, EvalTotals, evaluate_archs
from nas_lightning.metrics.ranking import cost_proxy_metrics, ranking_metrics
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.supernet.base import Supernet
from nas_lightning.utils.atomic import atomic_write_bytes, atomic_write_text

__all__ = [
    "DisturbanceMatrix",
    "OptimizerFactory",
    "ReduceSum",
    "StepRule",
    "StepRuleFactory",
    "disturbance_matrix",
    "draw_archs",
    "epoch_ktau",
    "epoch_metrics",
    "gt_tau",
    "gt_tau_references",
    "lr_of",
    "optimizer_at_lr",
    "performance_change",
    "save_disturbance_matrix",
]

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
ReduceSum = Callable[[Tensor], Tensor]


class StepRule(Protocol):
    """What a method does to a training step beyond forward, backward and the optimiser (e.g. DI-NAS's
    projection of the applied update), applied to the disturbance matrix's copy of the supernet so that the matrix
    measures the method's own update. Built by a factory from that copy."""

    def begin_step(self) -> None:
        """Before the step's forward."""

    def before_optimizer_step(self) -> None:
        """After backward (and the DDP gradient average), before ``optimizer.step()``."""

    def end_step(self) -> None:
        """After ``optimizer.step()``."""

    def close(self) -> None:
        """The matrix is done with the copy (remove hooks)."""


StepRuleFactory = Callable[[Supernet], StepRule]


def _vector(x: Tensor | Sequence[float], name: str) -> Tensor:
    t = x.detach().to("cpu", torch.float64).flatten() if isinstance(x, Tensor) \
        else torch.as_tensor(x, dtype=torch.float64).flatten()
    if t.numel() == 0:
        raise ValueError(f"{name} is empty: the fixed set of archs needs at least one arch")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def draw_archs(space: SearchSpace, n: int, generator: torch.Generator, pool: list[Arch] | None = None) -> list[Arch]:
    """``n`` distinct archs (fewer if the space or ``pool`` has fewer), from ``pool`` or the whole space: the
    fixed set S of section 5.3 (the paper: 64 random archs) or the archs of a disturbance matrix.

    A pool keeps its own order; draws from the space keep the order they were drawn in.
    """
    if pool is not None:
        keep = torch.randperm(len(pool), generator=generator)[:n]
        return [pool[i] for i in sorted(keep.tolist())]
    n = min(n, space.num_archs)
    drawn: dict[Arch, None] = {}
    while len(drawn) < n:  # a small space repeats archs; draw again until n distinct
        for arch in space.sample_many(n, generator):
            drawn.setdefault(arch)
            if len(drawn) == n:
                break
    return list(drawn)


def performance_change(acc_now: Tensor | Sequence[float], acc_before: Tensor | Sequence[float]) -> float:
    """Mean over the fixed set of ``|acc_t(a) - acc_{t-d}(a)|`` (DI-NAS section 5.3, metric 1)."""
    now, before = _vector(acc_now, "acc_now"), _vector(acc_before, "acc_before")
    if now.numel() != before.numel():
        raise ValueError(f"acc_now and acc_before must cover the same archs, got {now.numel()} and {before.numel()}")
    return float((now - before).abs().mean())


def epoch_ktau(acc_now: Tensor | Sequence[float], acc_before: Tensor | Sequence[float]) -> float:
    """Kendall tau-b between the rankings of the fixed set at epoch t and t-d (section 5.3, metric 2).

    NaN when either epoch ranks every arch equal (no ranking to compare).
    """
    return ranking_metrics(acc_now, acc_before, k=())["kendall_tau"]


def gt_tau(acc: Tensor | Sequence[float], gt_acc: Tensor | Sequence[float]) -> float:
    """GT-Tau (Sciuto et al., arXiv:1902.08142): Kendall tau-b of inherited-weight accuracy against GT."""
    return ranking_metrics(acc, gt_acc, k=())["kendall_tau"]


@dataclass
class DisturbanceMatrix:
    """``after[i, j]``: val accuracy (%) of ``archs[i]`` right after ``archs[j]`` was trained, the archs
    being trained in list order; ``before[i]``: its accuracy before any of them was trained."""

    archs: list[Arch]
    before: Tensor  # (n,)
    after: Tensor  # (n, n)

    def table(self) -> Tensor:
        """(n, n + 1): column 0 is ``before``, column j + 1 is the state after training ``archs[j]``."""
        return torch.cat([self.before[:, None], self.after], dim=1)

    def step_changes(self) -> Tensor:
        """(n, n): entry (i, j) is how much training ``archs[j]`` changed the accuracy of ``archs[i]``."""
        return self.table().diff(dim=1)

    def disturbance(self) -> float:
        """Mean |change| that training one arch causes in the *other* archs' accuracy (points): Fig. 1b's
        off-diagonal, the interference weight sharing has to suppress."""
        changes = self.step_changes().abs()
        n = changes.shape[0]
        return float((changes.sum() - changes.diagonal().sum()) / max(n * (n - 1), 1))

    def own_change(self) -> float:
        """Mean change of the trained arch's own accuracy (points): what the step was for."""
        return float(self.step_changes().diagonal().mean())


def lr_of(optimizers: Sequence[torch.optim.Optimizer], params: Iterable[torch.nn.Parameter]) -> float | None:
    """The learning rate of the first param group that holds any of ``params`` (None if none does): the
    rate a run trains the supernet with now, so a matrix follows its schedule."""
    own = {id(p) for p in params}
    lrs = [g["lr"] for opt in optimizers for g in opt.param_groups if any(id(p) in own for p in g["params"])]
    return lrs[0] if lrs else None


def optimizer_at_lr(optimizer_factory: OptimizerFactory, lr: float | None) -> OptimizerFactory:
    """``optimizer_factory`` with every param group's learning rate set to ``lr`` (None: as it builds it)."""

    def factory(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        optimizer = optimizer_factory(params)
        if lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr
        return optimizer

    return factory


def _train_step(net: Supernet, arch: Arch, batch: Batch, optimizer: torch.optim.Optimizer,
                label_smoothing: float, reduce_sum: ReduceSum | None, world_size: int,
                rule: StepRule | None) -> None:
    device = next(net.parameters()).device
    x, y = batch[0].to(device), batch[1].to(device)
    optimizer.zero_grad(set_to_none=True)
    if rule is not None:
        rule.begin_step()
    loss = F.cross_entropy(net(x, arch), y, label_smoothing=label_smoothing)
    loss.backward()
    if reduce_sum is not None and world_size > 1:
        # What DDP does to the real run: average the gradients over ranks, so every rank's copy moves
        # identically. Every rank trains the same arch, so the same parameters have gradients.
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        flat = reduce_sum(torch.cat([g.flatten() for g in grads])) / world_size
        for g, new in zip(grads, torch.split(flat, [g.numel() for g in grads])):
            g.copy_(new.view_as(g))
    if rule is not None:
        rule.before_optimizer_step()
    optimizer.step()
    if rule is not None:
        rule.end_step()


def disturbance_matrix(supernet: Supernet, archs: Sequence[Arch], train_batches: Sequence[Batch],
                       val_batches: Sequence[Batch], optimizer_factory: OptimizerFactory, steps_per_arch: int = 1,
                       calibration: Sequence[Batch] = (), label_smoothing: float = 0.0,
                       reduce_sum: ReduceSum | None = None, world_size: int = 1,
                       step_rule: StepRuleFactory | None = None) -> DisturbanceMatrix:
    """The disturbance matrix of DI-NAS Fig. 1b, computed on a deep copy of ``supernet``.

    ``archs[j]`` is trained for ``steps_per_arch`` optimiser steps (cross-entropy, one batch per step)
    on the train batches that follow those of ``archs[j-1]`` (cycling through ``train_batches``), with
    a fresh optimiser ``optimizer_factory(copy.parameters())`` shared by the whole sequence. After each
    arch, every arch is evaluated with ``evaluate_archs`` on ``val_batches`` (BN recalibrated on
    ``calibration`` when given). ``supernet`` itself, its BN buffers and its gradients are untouched.
    ``step_rule``, given the copy, adds the method's own update to every training step (``StepRule``).

    Under DDP, call it on every rank with that rank's batches, ``reduce_sum`` summing a tensor over
    ranks and ``world_size``: gradients are averaged as DDP averages them and the evaluation totals are
    summed, so every rank returns the same matrix. Every rank must then call it (it runs collectives).
    """
    if not archs:
        raise ValueError("disturbance_matrix needs at least one arch")
    if steps_per_arch < 1:
        raise ValueError(f"steps_per_arch must be >= 1, got {steps_per_arch}")
    if not train_batches or not val_batches:
        raise ValueError(f"need train and val batches, got {len(train_batches)} and {len(val_batches)}")
    archs = list(archs)

    def accuracy(net: Supernet) -> Tensor:
        totals = evaluate_archs(net, archs, val_batches, calibration)
        if reduce_sum is not None and world_size > 1:
            totals = EvalTotals.from_stacked(reduce_sum(totals.stacked()))  # one collective for all totals
        return totals.accuracy.to("cpu", torch.float64)

    # Validation hooks run under inference mode; training the copy needs autograd and normal tensors.
    with torch.inference_mode(False), torch.enable_grad():
        net = copy.deepcopy(supernet)
        for p in net.parameters():
            p.grad = None
        optimizer = optimizer_factory(net.parameters())
        rule = step_rule(net) if step_rule is not None else None
        try:
            before = accuracy(net)
            columns = []
            for j, arch in enumerate(archs):
                net.train()
                for s in range(steps_per_arch):
                    batch = train_batches[(j * steps_per_arch + s) % len(train_batches)]
                    _train_step(net, arch, batch, optimizer, label_smoothing, reduce_sum, world_size, rule)
                columns.append(accuracy(net))
        finally:
            if rule is not None:
                rule.close()
    return DisturbanceMatrix(archs, before, torch.stack(columns, dim=1))


def _matrix_csv(result: DisturbanceMatrix) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["arch", "before", *(f"after_{j}" for j in range(len(result.archs)))])
    for arch, row in zip(result.archs, result.table().tolist()):
        writer.writerow([str(arch), *(repr(float(v)) for v in row)])
    return buf.getvalue()


def _matrix_png(result: DisturbanceMatrix, path: Path, title: str) -> None:
    # Figure + the Agg canvas directly: no pyplot, so no global backend switch and no GUI.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = result.table().numpy()
    n = len(result.archs)
    size = min(4.0 + 0.45 * n, 14.0)
    fig = Figure(figsize=(size + 1.5, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(table, cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label="val accuracy (%)")
    ax.set_xticks(range(n + 1), ["init", *(f"a{j + 1}" for j in range(n))], rotation=90 if n > 12 else 0)
    ax.set_yticks(range(n), [f"a{i + 1}" for i in range(n)])
    ax.set_xlabel("after training arch")
    ax.set_ylabel("evaluated arch")
    ax.set_title(title)
    if n <= 12:
        mid = (table.max() + table.min()) / 2
        for i in range(n):
            for j in range(n + 1):
                ax.text(j, i, f"{table[i, j]:.1f}", ha="center", va="center", fontsize=7,
                        color="black" if table[i, j] > mid else "white")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())


def save_disturbance_matrix(result: DisturbanceMatrix, stem: str | os.PathLike[str],
                            title: str = "performance disturbance (DI-NAS Fig. 1b)") -> tuple[Path, Path]:
    """Write ``<stem>.csv`` (rows: archs; columns: ``before``, ``after_0..after_{n-1}``) and a heatmap
    ``<stem>.png``, both atomically. Returns the two paths."""
    stem = Path(stem)
    csv_path = atomic_write_text(stem.with_name(stem.name + ".csv"), _matrix_csv(result))
    png_path = stem.with_name(stem.name + ".png")
    _matrix_png(result, png_path, title)
    return csv_path, png_path


def epoch_metrics(history: Mapping[int, Sequence[float]], epoch: int, interval: int,
                  gt_acc: Sequence[float] | None = None, costs: Sequence[float] | None = None) -> dict[str, float]:
    """The section 5.3 metrics of ``epoch`` from the per-epoch accuracies of the fixed set.

    ``performance_change`` and ``ktau`` compare with epoch ``epoch - interval`` and are NaN when that
    epoch is not in ``history``; ``gt_tau`` is present when ``gt_acc`` is given, and with ``costs`` (the
    archs' FLOPs) also ``gt_tau_equal_cost``, GT-Tau over the pairs of equal cost only.
    """
    acc = history[epoch]
    before = history.get(epoch - interval)
    out = {"acc_mean": float(_vector(acc, "acc").mean()),
           "performance_change": math.nan if before is None else performance_change(acc, before),
           "ktau": math.nan if before is None else epoch_ktau(acc, before)}
    if gt_acc is not None:
        out["gt_tau"] = gt_tau(acc, gt_acc)
        if costs is not None:
            out["gt_tau_equal_cost"] = ranking_metrics(acc, gt_acc, k=(), costs=costs)["kendall_tau_equal_cost"]
    return out


def gt_tau_references(gt_acc: Sequence[float], params: Sequence[float], flops: Sequence[float],
                      ceiling: float) -> dict[str, float]:
    """What a GT-Tau has to beat on the same archs: the GT's own seed-to-seed tau (``gt_ceiling``) and the
    Kendall tau of the params and FLOPs cost proxies against GT."""
    proxies = cost_proxy_metrics(gt_acc, {"params": params, "flops": flops}, k=())
    return {"gt_ceiling": ceiling, **{f"{name}_tau": m["kendall_tau"] for name, m in proxies.items()}}
