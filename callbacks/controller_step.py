"""REINFORCE updates of the DI-NAS / ENAS controller between supernet epochs.

DI-NAS (Niu et al., arXiv:2003.13089, Algorithm 1 and eq. 1) alternates supernet training on the
controller's archs with controller training; the controller starts after a warm-up (the paper: from
epoch 90). At the end of every epoch from ``start_epoch`` on, this callback runs ``steps_per_epoch``
updates: draw ``archs_per_step`` archs from the controller, reward each with its inherited-weight
accuracy on one supernet-val batch (a fraction in [0, 1]), and take one REINFORCE step
(``nas_lightning.samplers.controller.reinforce_step``; SPEC.md fixes the constants).

Rank consistency: every rank draws the same batches (a permutation of the supernet-val set seeded
by (seed, epoch)) and the same archs (seeded by (seed, update)); each rank evaluates its slice of
the batch and the totals are summed over ranks, so every rank gets the same rewards and takes the
same step, and the controllers stay identical without any broadcast.

State: none here. The controller, its optimiser, the baseline and the counters live in the
method's ``ControllerSampler``, which the method checkpoints once (``"nas_sampler"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, RandomSampler

from callbacks._paths import output_dir
from nas_lightning.evaluation.inherited import Batch
from nas_lightning.methods.supernet_module import SupernetModule, require_sampler
from nas_lightning.samplers.controller import ControllerSampler
from nas_lightning.spaces.arch import Arch
from nas_lightning.utils.atomic import atomic_write_json
from nas_lightning.utils.distributed import step_generator


def controller_batches(loader: DataLoader, n: int, generator: torch.Generator) -> Iterator[Batch]:
    """``n`` batches of ``loader``'s dataset and batch size in an order drawn from ``generator``
    (a fresh permutation each time the dataset runs out), whatever order the loader itself has."""
    dataset, batch_size = loader.dataset, loader.batch_size
    if batch_size is None or len(dataset) < batch_size:  # type: ignore[arg-type]
        raise ValueError(f"the supernet-val set ({len(dataset)} images, batch size {batch_size}) must hold at "  # type: ignore[arg-type]
                         "least one batch for the controller's rewards; raise data.val_fraction")
    while n > 0:
        order = RandomSampler(dataset, generator=generator)  # type: ignore[arg-type]
        for batch in DataLoader(dataset, batch_size=batch_size, sampler=order, drop_last=True,
                                collate_fn=loader.collate_fn, num_workers=loader.num_workers):
            yield batch
            n -= 1
            if n == 0:
                return


def controller_updates(sampler: ControllerSampler, batches: Iterable[Batch],
                       reward: Callable[[list[Arch], Batch], torch.Tensor], archs_per_step: int,
                       entropy_weight: float, baseline_decay: float) -> list[dict[str, float]]:
    """One REINFORCE update per batch; ``reward(archs, batch)`` gives each arch's reward in [0, 1]."""
    stats = []
    for batch in batches:
        archs = sampler.draw_update_archs(archs_per_step)
        stats.append(sampler.update(archs, reward(archs, batch), entropy_weight, baseline_decay))
    return stats


class ControllerStep(pl.Callback):
    """Train the method's ``ControllerSampler`` by REINFORCE after each supernet epoch.

    Args:
        start_epoch: epochs before it are warm-up: uniform archs, no controller updates (the paper:
            90). From this epoch on the supernet trains the controller's archs, and each epoch ends
            with the controller's updates.
        steps_per_epoch: controller updates per supernet epoch, each on one supernet-val batch.
        archs_per_step: archs sampled and rewarded per update (their gradients are averaged).
        entropy_weight: weight of the entropy bonus (SPEC.md: 1e-4).
        baseline_decay: decay of the moving-average reward baseline (SPEC.md: 0.95).
        export_top: how many of the best-rewarded archs to export at the end of fit.
        output_dir: where ``controller_archs.json`` goes (default:
            ``<trainer.log_dir or default_root_dir>/controller``).

    The seed of the batches and archs and the controller's Adam settings belong to the sampler
    (``DINAS(seed=..., controller_lr=...)``), so each value is given once.
    """

    def __init__(self, start_epoch: int = 90, steps_per_epoch: int = 50, archs_per_step: int = 1,
                 entropy_weight: float = 1e-4, baseline_decay: float = 0.95, export_top: int = 10,
                 output_dir: str | None = None) -> None:
        if start_epoch < 0 or steps_per_epoch < 1 or archs_per_step < 1 or export_top < 0:
            raise ValueError("ControllerStep needs start_epoch >= 0, steps_per_epoch >= 1, archs_per_step >= 1 and "
                             f"export_top >= 0, got {start_epoch}, {steps_per_epoch}, {archs_per_step}, {export_top}")
        if entropy_weight < 0 or not 0 <= baseline_decay < 1:
            raise ValueError(f"need entropy_weight >= 0 and baseline_decay in [0, 1), got {entropy_weight}, "
                             f"{baseline_decay}")
        self.start_epoch, self.steps_per_epoch, self.archs_per_step = start_epoch, steps_per_epoch, archs_per_step
        self.entropy_weight, self.baseline_decay = entropy_weight, baseline_decay
        self.export_top, self.output_dir = export_top, output_dir
        self.last_stats: dict[str, float] = {}

    @staticmethod
    def _sampler(pl_module: pl.LightningModule) -> ControllerSampler:
        return require_sampler(pl_module, ControllerSampler, "ControllerStep", "DINAS")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._sampler(pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = self._sampler(pl_module)
        if trainer.current_epoch >= self.start_epoch and sampler.start_step is None:
            sampler.start_step = trainer.global_step
            rank_zero_info(f"ControllerStep: warm-up over, the supernet trains the controller's archs from "
                           f"step {trainer.global_step} (epoch {trainer.current_epoch})")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_updates(trainer, pl_module, trainer.current_epoch)

    def _run_updates(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        sampler = self._sampler(pl_module)
        # Each epoch's updates run once, even where a resumed run replays an epoch's end.
        if epoch < self.start_epoch or sampler.last_update_epoch >= epoch:
            return
        assert isinstance(pl_module, SupernetModule)
        rank, world = trainer.global_rank, trainer.world_size

        def reward(archs: list[Arch], batch: Batch) -> torch.Tensor:
            x, y = batch
            if len(y) < world:
                raise ValueError(f"a supernet-val batch of {len(y)} cannot be split over {world} ranks; "
                                 "raise data.eval_batch_size")
            shard = (x[rank::world].to(pl_module.device), y[rank::world].to(pl_module.device))
            return pl_module.evaluate(archs, batches=[shard]).accuracy.cpu() / 100.0

        datamodule = trainer.datamodule
        if datamodule is None:
            raise RuntimeError("ControllerStep draws its reward batches from trainer.datamodule.val_dataloader(); "
                               "fit with a datamodule instead of bare dataloaders")
        datamodule.setup("fit")
        batches = controller_batches(datamodule.val_dataloader(), self.steps_per_epoch,
                                     step_generator(sampler.seed, "controller_batches", epoch))
        stats = controller_updates(sampler, batches, reward, self.archs_per_step, self.entropy_weight,
                                   self.baseline_decay)
        sampler.last_update_epoch = epoch
        self.last_stats = {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}
        pl_module.log_dict({f"controller/{k}": v for k, v in self.last_stats.items()})
        rank_zero_info(f"controller epoch {epoch}: {len(stats)} updates, reward {self.last_stats['reward']:.4f}, "
                       f"baseline {sampler.baseline:.4f}, entropy {self.last_stats['entropy']:.3f}, "
                       f"argmax {sampler.controller.argmax_arch()}")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = self._sampler(pl_module)
        if sampler.num_updates == 0:
            rank_zero_warn(f"ControllerStep: the controller never trained (start_epoch={self.start_epoch}, "
                           f"max_epochs={trainer.max_epochs}); nothing exported")
            return
        # trainer.log_dir broadcasts under DDP, so every rank asks for it.
        out = output_dir(trainer, self.output_dir, "controller")
        if trainer.is_global_zero:
            path = atomic_write_json(out / "controller_archs.json", export_controller(sampler, self.export_top))
            rank_zero_info(f"ControllerStep: wrote {path}")


def export_controller(sampler: ControllerSampler, top: int) -> dict[str, Any]:
    """The controller's result: its argmax arch and the ``top`` archs by mean reward, best first,
    with params and FLOPs (as ``EvolutionSearch`` exports them)."""
    space, argmax = sampler.space, sampler.controller.argmax_arch()

    def costs(arch: str) -> dict[str, int]:
        params, flops = space.cost(space.decode(arch))
        return {"params": params, "flops": flops}

    with torch.no_grad():
        log_prob = float(sampler.controller.log_prob([argmax])[0])
    return {
        "argmax": {"arch": str(argmax), "log_prob": log_prob, **costs(str(argmax))},
        "top": [{**row, **costs(row["arch"])} for row in sampler.top_archs(top)],
        "baseline": sampler.baseline, "num_updates": sampler.num_updates,
    }
