"""DI-NAS: disturbance-immune weight sharing (Niu et al., "Disturbance-immune Weight Sharing for
Neural Architecture Search", arXiv:2003.13089).

Algorithm 1 of the paper, as this module and its two callbacks run it:
1. Supernet training (eq. 2): at each step the arch a ~ pi(theta) (uniform during the warm-up
   epochs) is trained on one batch, ``training_step`` of ``SupernetModule``.
2. Disturbance-immune update (eq. 6): each shared weight's gradient is projected, W <- W - lr * G P,
   and after the step P folds in the arch's input features (eqs. 7-8, recursive Woodbury form):
   ``callbacks.ProjectionMatrixUpdate``. ``projection=False`` drops it (the plain-WS ablation).
3. Controller learning (eq. 1): after each epoch from ``start_epoch`` on, REINFORCE on the
   inherited-weight accuracy of sampled archs on one validation batch: ``callbacks.ControllerStep``
   and ``nas_lightning.samplers.controller``.
SPEC.md ("DI-NAS equations") fixes the values the paper text lost; each is an argument here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable

from nas_lightning.methods.supernet_module import SupernetModule
from nas_lightning.samplers.controller import ControllerSampler
from nas_lightning.spaces.base import SearchSpace


class DINAS(SupernetModule):
    """The supernet trained on the archs an ENAS-style controller samples, with projected gradients.

    ``configure_callbacks`` returns the ``ControllerStep`` and (with ``projection``) the
    ``ProjectionMatrixUpdate`` built from these arguments, so a config cannot forget them. The
    search state (controller, its Adam state, baseline, counters) lives in the ``ControllerSampler``
    and is checkpointed with the model; the projection matrices are checkpointed by their callback.

    Args:
        seed: seeds the warm-up archs, the controller's initial weights, its samples and its batches.
        start_epoch: warm-up epochs of uniform sampling before the controller takes over (paper: 90).
        controller_steps_per_epoch: controller updates after each supernet epoch.
        archs_per_step: archs rewarded per controller update.
        controller_hidden: LSTM hidden size (SPEC.md: 64).
        controller_lr, controller_weight_decay: its Adam (SPEC.md: lr 3.5e-4).
        controller_temperature, controller_tanh_constant: ENAS's logit shaping (None: off).
        entropy_weight: entropy bonus of the controller loss (SPEC.md: 1e-4).
        baseline_decay: moving-average reward baseline decay (SPEC.md: 0.95).
        export_top, output_dir: the controller's top archs written at the end of fit.
        projection: project the gradients (eq. 6); False gives plain weight sharing (ablation).
        alpha, alpha_decay, alpha_linear, projection_every_n_steps, projection_layers, max_patches: forwarded
            to ``ProjectionMatrixUpdate`` (alpha, alpha_decay, alpha_linear, every_n_steps, layers, max_patches).
        Others: see ``SupernetModule``.
    """

    def __init__(self, space: SearchSpace, seed: int = 0, start_epoch: int = 90, controller_steps_per_epoch: int = 50,
                 archs_per_step: int = 1, controller_hidden: int = 64, controller_lr: float = 3.5e-4,
                 controller_weight_decay: float = 0.0, controller_temperature: float | None = None,
                 controller_tanh_constant: float | None = None, entropy_weight: float = 1e-4,
                 baseline_decay: float = 0.95, export_top: int = 10, output_dir: str | None = None,
                 projection: bool = True, alpha: float = 1e-3, alpha_decay: bool = False,
                 alpha_linear: float | None = None,
                 projection_every_n_steps: int = 1, projection_layers: Literal["all", "conv", "linear"] = "all",
                 max_patches: int = 16, optimizer: OptimizerCallable = torch.optim.SGD,
                 lr_scheduler: LRSchedulerCallable | None = None, scheduler_interval: str = "epoch",
                 label_smoothing: float = 0.0, eval_archs: Sequence[str] | None = None, num_eval_archs: int = 16,
                 eval_seed: int = 0, bn_recalibration: int = 0) -> None:
        sampler = ControllerSampler(space, seed=seed, hidden_size=controller_hidden, lr=controller_lr,
                                    weight_decay=controller_weight_decay, temperature=controller_temperature,
                                    tanh_constant=controller_tanh_constant)
        super().__init__(space, sampler, optimizer, lr_scheduler, scheduler_interval, label_smoothing, eval_archs,
                         num_eval_archs, eval_seed, bn_recalibration)
        self.save_hyperparameters(ignore=["space", "optimizer", "lr_scheduler"])
        # Built here, not in configure_callbacks, so a bad value fails when the config is read.
        self._callbacks = self._build_callbacks()

    def _build_callbacks(self) -> list[pl.Callback]:
        # Imported here: the callbacks import the methods package, so a top-level import would cycle.
        from callbacks.controller_step import ControllerStep

        h = self.hparams
        built: list[pl.Callback] = [ControllerStep(
            start_epoch=h.start_epoch, steps_per_epoch=h.controller_steps_per_epoch, archs_per_step=h.archs_per_step,
            entropy_weight=h.entropy_weight, baseline_decay=h.baseline_decay, export_top=h.export_top,
            output_dir=h.output_dir,
        )]
        if h.projection:
            from callbacks.projection_matrix_update import ProjectionMatrixUpdate

            built.append(ProjectionMatrixUpdate(alpha=h.alpha, alpha_decay=h.alpha_decay, alpha_linear=h.alpha_linear,
                                                every_n_steps=h.projection_every_n_steps,
                                                layers=h.projection_layers, max_patches=h.max_patches, seed=h.seed))
        return built

    def configure_callbacks(self) -> list[pl.Callback]:
        return self._callbacks

    @property
    def controller_sampler(self) -> ControllerSampler:
        assert isinstance(self.sampler, ControllerSampler)
        return self.sampler
