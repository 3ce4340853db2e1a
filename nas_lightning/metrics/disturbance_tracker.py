"""The bookkeeping of performance disturbance during supernet training (DI-NAS, Niu et al.,
arXiv:2003.13089, section 5.3).

``DisturbanceTracker`` owns what the ``DisturbanceMetrics`` callback measures: the fixed set of archs
(drawn once from ``step_generator(seed, "disturbance", 0)``, so every rank and every resumed run has the
same set; from the archs a GT table covers when one is given), their inherited-weight accuracy per epoch
(search state: ``state_dict`` round-trips it), the section 5.3 metrics of each epoch, the two CSVs written
from the history, and the disturbance matrix of Fig. 1b on the latest training batches. It needs no
Trainer: a caller hands it accuracies, batches and the method's optimiser.

Metrics of an epoch t (``epoch_metrics``): ``performance_change`` (mean |acc_t(a) - acc_{t-d}(a)|),
``ktau`` (Kendall tau-b between the rankings at t and t-d), and with GT ``gt_tau`` and
``gt_tau_equal_cost`` (over pairs of equal FLOPs). The metrics CSV puts beside them what GT-Tau has to
beat on the same archs: the GT's seed-to-seed tau (``gt_ceiling``) and the params and FLOPs proxies' tau.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nas_lightning.evaluation.inherited import Batch
from nas_lightning.metrics.disturbance import (
    DisturbanceMatrix,
    OptimizerFactory,
    ReduceSum,
    StepRuleFactory,
    disturbance_matrix,
    draw_archs,
    epoch_metrics,
    gt_tau_references,
    save_disturbance_matrix,
)
from nas_lightning.metrics.ground_truth import load_ground_truth
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.supernet.base import Supernet
from nas_lightning.utils.atomic import atomic_write_csv
from nas_lightning.utils.distributed import step_generator

__all__ = ["LOGGED", "DisturbanceTracker"]

#: The metrics logged every epoch (as ``disturbance/<name>``); the CSV has the rest too.
LOGGED = ("performance_change", "ktau", "gt_tau", "gt_tau_equal_cost")


class DisturbanceTracker:
    """A fixed set of archs, their accuracy per epoch and the section 5.3 metrics over it.

    Args:
        num_archs: size of the fixed set (the paper: 64).
        interval: epoch interval d of the performance change and KTau (the paper: 1 to 3).
        ground_truth: GT file for GT-Tau; the fixed set is then drawn from the archs it covers.
        matrix_archs: n archs of the disturbance matrix (0: no matrix).
        matrix_steps: optimiser steps per arch in the matrix (Fig. 1b: 1).
        seed: seed of the fixed set and of the matrix archs.
    """

    def __init__(self, num_archs: int = 64, interval: int = 1, ground_truth: str | None = None,
                 matrix_archs: int = 0, matrix_steps: int = 1, seed: int = 0) -> None:
        if num_archs < 2:
            raise ValueError(f"num_archs must be >= 2 (a ranking needs two archs), got {num_archs}")
        if interval < 1:
            raise ValueError(f"interval (epochs between compared evaluations) must be >= 1, got {interval}")
        if matrix_archs < 0 or matrix_steps < 1:
            raise ValueError(f"need matrix_archs >= 0 and matrix_steps >= 1, got {matrix_archs}, {matrix_steps}")
        self.num_archs, self.interval, self.ground_truth = num_archs, interval, ground_truth
        self.matrix_archs, self.matrix_steps, self.seed = matrix_archs, matrix_steps, seed
        self.archs: list[Arch] = []
        self.gt_acc: list[float] | None = None
        self.flops: list[float] | None = None
        self.references: dict[str, float] = {}  # with GT: the ceiling and cost proxies GT-Tau must beat
        self.matrix_arch_list: list[Arch] = []
        self.history: dict[int, list[float]] = {}  # epoch -> accuracy (%) of each arch of the fixed set
        self.global_steps: dict[int, int] = {}
        self.last_metrics: dict[str, float] = {}
        self.last_matrix: DisturbanceMatrix | None = None
        self._saved_archs: list[str] | None = None
        # The latest training batches: the matrix trains on what the run itself was training on.
        self.train_batches: deque[Batch] = deque(maxlen=max(1, matrix_archs * matrix_steps))

    # --- the fixed set and its state ------------------------------------------------------------------
    def choose_archs(self, space: SearchSpace) -> list[Arch]:
        """Draw the fixed set (and the matrix archs) once, load the GT of the set; later calls keep them."""
        if self.archs:
            return self.archs
        pool = None
        if self.ground_truth is not None:
            gt = load_ground_truth(self.ground_truth, space)
            pool = gt.archs
            if len(pool) < 2:
                raise ValueError(f"ground truth {self.ground_truth} covers {len(pool)} arch; GT-Tau needs >= 2")
        self.archs = draw_archs(space, self.num_archs, step_generator(self.seed, "disturbance", 0), pool)
        if pool is not None:
            self.gt_acc = [gt.accuracy[a] for a in self.archs]
            self.flops = [float(space.flops(a)) for a in self.archs]
            self.references = gt_tau_references(self.gt_acc, [float(space.params(a)) for a in self.archs],
                                                self.flops, gt.restrict(self.archs).seed_to_seed_tau())
        if self.matrix_archs:
            self.matrix_arch_list = draw_archs(space, self.matrix_archs,
                                               step_generator(self.seed, "disturbance_matrix", 0))
        self._check_saved_archs()
        return self.archs

    def state_dict(self) -> dict[str, Any]:
        return {"archs": [str(a) for a in self.archs], "history": {e: list(v) for e, v in self.history.items()},
                "global_steps": dict(self.global_steps)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {int(e): [float(x) for x in v] for e, v in state_dict["history"].items()}
        self.global_steps = {int(e): int(s) for e, s in state_dict["global_steps"].items()}
        self._saved_archs = list(state_dict["archs"])
        self._check_saved_archs()

    def _check_saved_archs(self) -> None:
        if self._saved_archs is None or not self.archs:
            return
        if self._saved_archs != [str(a) for a in self.archs]:
            raise ValueError(
                f"the checkpoint's DisturbanceMetrics history is over another arch set ({len(self._saved_archs)} "
                f"archs, first {self._saved_archs[:1]}) than this run's ({len(self.archs)}, first "
                f"{[str(a) for a in self.archs[:1]]}); resume with the same num_archs, seed, ground_truth and space"
            )

    # --- per epoch --------------------------------------------------------------------------------------
    def record(self, epoch: int, global_step: int, accuracy: Sequence[float]) -> dict[str, float]:
        """Keep the fixed set's accuracy (%) at ``epoch``; returns the metrics to log, as
        ``disturbance/<name>`` for the names in ``LOGGED`` (NaN ones left out). ``last_metrics`` holds all
        of the epoch's metrics."""
        if len(accuracy) != len(self.archs):
            raise ValueError(f"need one accuracy per arch of the fixed set ({len(self.archs)}), got {len(accuracy)}")
        self.history[epoch] = [float(a) for a in accuracy]
        self.global_steps[epoch] = global_step
        self.last_metrics = epoch_metrics(self.history, epoch, self.interval, self.gt_acc, self.flops)
        return {f"disturbance/{k}": v for k, v in self.last_metrics.items() if k in LOGGED and not math.isnan(v)}

    def metrics_rows(self) -> list[dict[str, Any]]:
        """One row per recorded epoch: epoch, global step, the epoch's metrics and the GT references."""
        return [{"epoch": e, "global_step": self.global_steps.get(e, -1),
                 **epoch_metrics(self.history, e, self.interval, self.gt_acc, self.flops), **self.references}
                for e in sorted(self.history)]

    def history_rows(self) -> list[dict[str, Any]]:
        """One row per arch of the fixed set: the arch, its GT accuracy (with GT), its accuracy per epoch."""
        epochs = sorted(self.history)
        rows = []
        for i, arch in enumerate(self.archs):
            row: dict[str, Any] = {"arch": str(arch)}
            if self.gt_acc is not None:
                row["gt_accuracy"] = self.gt_acc[i]
            row.update({f"epoch_{e}": self.history[e][i] for e in epochs})
            rows.append(row)
        return rows

    def write_history(self, out: str | Path) -> None:
        """``disturbance_metrics.csv`` and ``disturbance_history.csv`` in ``out``, rewritten from the history."""
        out = Path(out)
        atomic_write_csv(out / "disturbance_metrics.csv", self.metrics_rows())
        atomic_write_csv(out / "disturbance_history.csv", self.history_rows())

    # --- the disturbance matrix -------------------------------------------------------------------------
    def observe_train_batch(self, batch: Sequence[torch.Tensor]) -> None:
        """Keep a training batch of the run for the matrix (only the latest ``matrix_archs * matrix_steps``)."""
        if self.matrix_archs:
            self.train_batches.append((batch[0].detach(), batch[1].detach()))

    def matrix_ready(self, val_batches: Sequence[Batch]) -> bool:
        """Whether a matrix can be computed: matrix archs asked for, training batches kept, validation batches."""
        return bool(self.matrix_archs and self.train_batches and val_batches)

    def compute_matrix(self, supernet: Supernet, val_batches: Sequence[Batch], optimizer_factory: OptimizerFactory,
                       calibration: Sequence[Batch] = (), label_smoothing: float = 0.0,
                       reduce_sum: ReduceSum | None = None, world_size: int = 1,
                       step_rule: StepRuleFactory | None = None) -> DisturbanceMatrix:
        """``disturbance_matrix`` of the matrix archs on the kept training batches, kept as ``last_matrix``.
        Under DDP every rank calls it with its own batches (see ``disturbance_matrix``)."""
        if not self.matrix_archs:
            raise ValueError("no matrix archs: the tracker was built with matrix_archs=0")
        self.last_matrix = disturbance_matrix(supernet, self.matrix_arch_list, list(self.train_batches), val_batches,
                                              optimizer_factory, self.matrix_steps, calibration, label_smoothing,
                                              reduce_sum, world_size, step_rule)
        return self.last_matrix

    def save_matrix(self, out: str | Path, tag: str) -> Path:
        """Write ``last_matrix`` as ``disturbance_matrix_<tag>.csv`` and ``.png`` in ``out``; returns the CSV."""
        if self.last_matrix is None:
            raise RuntimeError("no disturbance matrix computed yet")
        csv_path, _ = save_disturbance_matrix(self.last_matrix, Path(out) / f"disturbance_matrix_{tag}")
        return csv_path
