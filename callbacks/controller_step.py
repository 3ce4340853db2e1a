"""REINFORCE updates of the DI-NAS / ENAS controller between supernet epochs (arXiv:2003.13089, Algorithm 1).

The controller starts after a warm-up (the paper: from epoch 90). At the start of the first epoch
from ``start_epoch`` on, the supernet switches to the controller's archs; at the end of every such
epoch the method's ``DINAS.update_controller`` runs ``steps_per_epoch`` updates of ``archs_per_step``
archs each. The controller, its optimiser, the baseline and the counters live in the method's
``ControllerSampler`` (checkpointed there); this callback only keeps the schedule, and writes
``controller_archs.json`` at the end of fit.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from callbacks._paths import output_dir
from nas_lightning.methods.dinas import DINAS
from nas_lightning.samplers.controller import ControllerSampler, export_controller
from nas_lightning.utils.atomic import atomic_write_json


def _dinas(pl_module: pl.LightningModule) -> DINAS:
    if not isinstance(pl_module, DINAS):
        raise TypeError("ControllerStep needs a SupernetModule whose sampler is a ControllerSampler (a DINAS method), "
                        f"got {type(pl_module).__name__}")
    return pl_module


class ControllerStep(pl.Callback):
    """Train the ``DINAS`` method's controller by REINFORCE after each supernet epoch.

    Args:
        start_epoch: epochs before it are warm-up: uniform archs, no controller updates (the paper: 90).
        steps_per_epoch: controller updates per supernet epoch, each on one supernet-val batch.
        archs_per_step: archs sampled and rewarded per update (their gradients are averaged).
        export_top: how many of the best-rewarded archs to export at the end of fit.
        output_dir: where ``controller_archs.json`` goes (default:
            ``<trainer.log_dir or default_root_dir>/controller``).
    """

    def __init__(self, start_epoch: int = 90, steps_per_epoch: int = 50, archs_per_step: int = 1,
                 export_top: int = 10, output_dir: str | None = None) -> None:
        if start_epoch < 0 or steps_per_epoch < 1 or archs_per_step < 1 or export_top < 0:
            raise ValueError("ControllerStep needs start_epoch >= 0, steps_per_epoch >= 1, archs_per_step >= 1 and "
                             f"export_top >= 0, got {start_epoch}, {steps_per_epoch}, {archs_per_step}, {export_top}")
        self.start_epoch, self.steps_per_epoch, self.archs_per_step = start_epoch, steps_per_epoch, archs_per_step
        self.export_top, self.output_dir = export_top, output_dir
        self.last_stats: dict[str, float] = {}

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        _dinas(pl_module)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        controller = _dinas(pl_module).controller
        if trainer.current_epoch >= self.start_epoch and not controller.started:
            controller.start(trainer.global_step)
            rank_zero_info(f"ControllerStep: warm-up over, the supernet trains the controller's archs from "
                           f"step {trainer.global_step} (epoch {trainer.current_epoch})")

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        method, epoch = _dinas(pl_module), trainer.current_epoch
        # Each epoch's updates run once, even where a resumed run replays an epoch's end.
        if epoch >= self.start_epoch and method.controller.last_update_epoch < epoch:
            self._report(method, epoch, method.update_controller(epoch, self.steps_per_epoch, self.archs_per_step))

    def _report(self, method: DINAS, epoch: int, stats: list[dict[str, float]]) -> None:
        self.last_stats = {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}
        method.log_dict({f"controller/{k}": v for k, v in self.last_stats.items()})
        controller = method.controller
        rank_zero_info(f"controller epoch {epoch}: {len(stats)} updates, reward {self.last_stats['reward']:.4f}, "
                       f"baseline {controller.baseline:.4f}, entropy {self.last_stats['entropy']:.3f}, "
                       f"argmax {controller.controller.argmax_arch()}")

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._export(trainer, _dinas(pl_module).controller)

    def _export(self, trainer: pl.Trainer, controller: ControllerSampler) -> None:
        if controller.num_updates == 0:
            rank_zero_warn(f"ControllerStep: the controller never trained (start_epoch={self.start_epoch}, "
                           f"max_epochs={trainer.max_epochs}); nothing exported")
            return
        out = output_dir(trainer, self.output_dir, "controller")  # broadcasts under DDP: every rank asks
        if trainer.is_global_zero:
            path = atomic_write_json(out / "controller_archs.json", export_controller(controller, self.export_top))
            rank_zero_info(f"ControllerStep: wrote {path}")
