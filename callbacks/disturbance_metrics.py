"""Performance disturbance during supernet training (DI-NAS, Niu et al., arXiv:2003.13089, section 5.3).

After every validation epoch of ``fit``, a fixed set of archs (64 in the paper; drawn once from
``step_generator(seed, "disturbance", 0)``, so every rank and every resumed run has the same set) is
evaluated with inherited weights (``SupernetModule.evaluate``: each rank on its shard, summed). From
the per-epoch accuracies the callback logs (SPEC.md "Performance-disturbance metrics"):

* ``disturbance/performance_change``: mean |acc_t(a) - acc_{t-d}(a)| over the set (d = ``interval``);
* ``disturbance/ktau``: Kendall tau-b between the set's rankings at epoch t and t-d;
* ``disturbance/gt_tau``: Kendall tau-b of the set's accuracy against ground truth (with ``ground_truth``),
  and ``disturbance/gt_tau_equal_cost`` over the pairs of equal FLOPs only. The CSV puts beside them what
  GT-Tau has to beat on the same archs: the GT's seed-to-seed tau (``gt_ceiling``) and the params and
  FLOPs proxies' tau (``params_tau``, ``flops_tau``).

The accuracy history is search state: it is checkpointed, and the CSVs are rewritten from it.
Optionally it also computes the disturbance matrix of Fig. 1b (``matrix_archs`` > 0) on a copy of the
supernet, at the end of fit or after every validation epoch. Every rank computes it, on its own
batches, with gradients averaged and evaluation totals summed over ranks as DDP does, so every rank
runs the same collectives and holds the same matrix; rank 0 writes it. The copy trains with the
method's own update: a callback that offers ``disturbance_step_rule`` (DI-NAS's ``ProjectionMatrixUpdate``
projects the copy's gradients with its P) adds it to every step of the matrix.
"""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from callbacks._paths import output_dir
from nas_lightning.evaluation.inherited import Batch
from nas_lightning.methods.supernet_module import SupernetModule
from nas_lightning.metrics.disturbance import (
    DisturbanceMatrix,
    StepRuleFactory,
    disturbance_matrix,
    epoch_metrics,
    gt_tau_references,
    save_disturbance_matrix,
)
from nas_lightning.metrics.ground_truth import load_ground_truth
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.atomic import atomic_write_csv
from nas_lightning.utils.distributed import reduce_sum, step_generator

_LOGGED = ("performance_change", "ktau", "gt_tau", "gt_tau_equal_cost")


def draw_archs(space: SearchSpace, n: int, generator: torch.Generator, pool: list[Arch] | None = None) -> list[Arch]:
    """``n`` distinct archs (fewer if the space or ``pool`` has fewer), from ``pool`` or the whole space.

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


class DisturbanceMetrics(pl.Callback):
    """Measure how much training disturbs the inherited-weight accuracy of a fixed set of archs.

    Args:
        num_archs: size of the fixed set (the paper: 64).
        interval: epoch interval d of the performance change and KTau (the paper: 1 to 3).
        ground_truth: GT file (CSV/JSON/NATS-Bench) for GT-Tau; the fixed set is then drawn from the
            archs it covers.
        matrix_archs: n archs of the disturbance matrix (0: no matrix).
        matrix_at: compute the matrix at the ``"end"`` of fit or after ``"every"`` validation epoch.
        matrix_steps: optimiser steps per arch in the matrix (Fig. 1b: 1).
        matrix_lr: learning rate of the matrix's steps; None: the run's current one (0 at the end of a
            schedule that decays to 0, where the matrix would train nothing).
        seed: seed of the fixed set and of the matrix archs.
        output_dir: where CSVs and PNGs go (default: ``<trainer.log_dir or default_root_dir>/disturbance``).
    """

    def __init__(self, num_archs: int = 64, interval: int = 1, ground_truth: str | None = None,
                 matrix_archs: int = 0, matrix_at: Literal["end", "every"] = "end", matrix_steps: int = 1,
                 matrix_lr: float | None = None, seed: int = 0, output_dir: str | None = None) -> None:
        if num_archs < 2:
            raise ValueError(f"num_archs must be >= 2 (a ranking needs two archs), got {num_archs}")
        if interval < 1:
            raise ValueError(f"interval (epochs between compared evaluations) must be >= 1, got {interval}")
        if matrix_archs < 0 or matrix_steps < 1:
            raise ValueError(f"need matrix_archs >= 0 and matrix_steps >= 1, got {matrix_archs}, {matrix_steps}")
        if matrix_at not in ("end", "every"):
            raise ValueError(f"matrix_at must be 'end' or 'every', got {matrix_at!r}")
        if matrix_lr is not None and not matrix_lr > 0:
            raise ValueError(f"matrix_lr must be > 0 (or None for the run's current learning rate), got {matrix_lr}")
        self.num_archs, self.interval, self.ground_truth_path = num_archs, interval, ground_truth
        self.matrix_archs, self.matrix_at, self.matrix_steps = matrix_archs, matrix_at, matrix_steps
        self.matrix_lr = matrix_lr
        self.seed, self.output_dir = seed, output_dir
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
        self._train_batches: deque[Batch] = deque(maxlen=max(1, matrix_archs * matrix_steps))

    @property
    def state_key(self) -> str:
        return self._generate_state_key(num_archs=self.num_archs, seed=self.seed, ground_truth=self.ground_truth_path)

    # --- setup and state --------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, SupernetModule):
            raise TypeError(f"DisturbanceMetrics needs a SupernetModule method, got {type(pl_module).__name__}")
        if self.archs:
            return
        space = pl_module.space
        pool = None
        if self.ground_truth_path is not None:
            gt = load_ground_truth(self.ground_truth_path, space)
            pool = gt.archs
            if len(pool) < 2:
                raise ValueError(f"ground truth {self.ground_truth_path} covers {len(pool)} arch; GT-Tau needs >= 2")
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

    # --- hooks ------------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.matrix_archs:
            self._train_batches.append((batch[0].detach(), batch[1].detach()))

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        assert isinstance(pl_module, SupernetModule)
        if not pl_module.val_batches:
            return
        epoch = trainer.current_epoch
        self.history[epoch] = pl_module.evaluate(self.archs).accuracy.tolist()
        self.global_steps[epoch] = trainer.global_step
        self.last_metrics = epoch_metrics(self.history, epoch, self.interval, self.gt_acc, self.flops)
        logged = {f"disturbance/{k}": v for k, v in self.last_metrics.items() if k in _LOGGED and not math.isnan(v)}
        if logged:
            pl_module.log_dict(logged, rank_zero_only=True)
        out = self._out(trainer)  # trainer.log_dir broadcasts under DDP, so every rank asks for it
        if trainer.is_global_zero:
            self._write_history(out)
        if self.matrix_archs and self.matrix_at == "every":
            self._matrix(trainer, pl_module, f"epoch{epoch}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.matrix_archs and self.matrix_at == "end":
            assert isinstance(pl_module, SupernetModule)
            self._matrix(trainer, pl_module, "end")

    # --- the disturbance matrix -------------------------------------------------------------------
    def _matrix(self, trainer: pl.Trainer, pl_module: SupernetModule, tag: str) -> None:
        # Batch counts are equal on every rank (the distributed sampler pads), so all ranks skip together.
        if not pl_module.val_batches or not self._train_batches:
            rank_zero_warn("DisturbanceMetrics: no train or validation batches seen yet; disturbance matrix skipped")
            return
        self.last_matrix = disturbance_matrix(
            pl_module.supernet, self.matrix_arch_list, list(self._train_batches), pl_module.val_batches,
            self._optimizer_factory(trainer, pl_module), self.matrix_steps, pl_module.calibration_batches(),
            pl_module.label_smoothing, lambda t: reduce_sum(t, trainer), trainer.world_size,
            self._step_rule(trainer))
        out = self._out(trainer)
        if trainer.is_global_zero:
            csv_path, _ = save_disturbance_matrix(self.last_matrix, out / f"disturbance_matrix_{tag}")
            rank_zero_info(f"DisturbanceMetrics: disturbance matrix written to {csv_path}")

    @staticmethod
    def _step_rule(trainer: pl.Trainer) -> StepRuleFactory | None:
        """The method's own step rule (a callback with ``disturbance_step_rule``, e.g. DI-NAS's projection)."""
        rules = [cb.disturbance_step_rule(trainer) for cb in trainer.callbacks if hasattr(cb, "disturbance_step_rule")]
        if len(rules) > 1:
            raise ValueError(f"DisturbanceMetrics can apply one step rule to its matrix, found {len(rules)} callbacks "
                             "with disturbance_step_rule")
        return rules[0] if rules else None

    def _optimizer_factory(self, trainer: pl.Trainer, pl_module: SupernetModule):
        """The method's optimiser factory at ``matrix_lr``, or else at the learning rate the run uses now (so
        a schedule is followed)."""
        own = {id(p) for p in pl_module.supernet.parameters()}
        lrs = [g["lr"] for opt in trainer.optimizers for g in opt.param_groups
               if any(id(p) in own for p in g["params"])]
        lr = self.matrix_lr if self.matrix_lr is not None else lrs[0] if lrs else None
        if lr == 0:
            rank_zero_warn("DisturbanceMetrics: the run's learning rate is 0 now (the end of its schedule), so the "
                           "disturbance matrix trains nothing; set matrix_lr or matrix_at='every'")

        def factory(params):
            optimizer = pl_module.optimizer_factory(params)
            if lr is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr
            return optimizer

        return factory

    # --- files ------------------------------------------------------------------------------------
    def _out(self, trainer: pl.Trainer) -> Path:
        return output_dir(trainer, self.output_dir, "disturbance")

    def _write_history(self, out: Path) -> None:
        epochs = sorted(self.history)
        metrics = [{"epoch": e, "global_step": self.global_steps.get(e, -1),
                    **epoch_metrics(self.history, e, self.interval, self.gt_acc, self.flops), **self.references}
                   for e in epochs]
        atomic_write_csv(out / "disturbance_metrics.csv", metrics)
        rows = []
        for i, arch in enumerate(self.archs):
            row: dict[str, Any] = {"arch": str(arch)}
            if self.gt_acc is not None:
                row["gt_accuracy"] = self.gt_acc[i]
            row.update({f"epoch_{e}": self.history[e][i] for e in epochs})
            rows.append(row)
        atomic_write_csv(out / "disturbance_history.csv", rows)
