"""DI-NAS's disturbance-immune update of the shared weights (Niu et al., arXiv:2003.13089, section 4.1,
Algorithm 1 lines 9-10, eqs. 6-8) in a Lightning run: a thin callback around
``nas_lightning.projection.OrthogonalProjector``, which holds the algorithm and its state (P).

- ``on_train_batch_start``: record the layer inputs of a folding step.
- ``on_before_optimizer_step`` (after backward, AMP unscaling and every accumulated micro-batch): keep the
  projected layers' weights as they are before the step.
- ``on_train_batch_end``, after the optimiser step (Lightning runs it in between, in automatic
  optimisation): the update the optimiser applied, after momentum and weight decay, is replaced by its
  projection (eq. 6), then the step's mean inputs (summed over DDP ranks) are folded into P (eqs. 7-8). A
  step AMP's scaler skipped (non-finite gradients: its scale fell) is neither projected nor folded.
  Every ``log_every_n_steps`` steps, each layer's surviving share |update after projection| / |update
  before| goes to the loggers as ``projection/surviving/<layer>`` (and their mean as
  ``projection/surviving_mean``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from nas_lightning.projection.projector import (
    DEFAULT_ALPHA,
    OrthogonalProjector,
    ProjectedSteps,
    amp_step_applied,
    fold_features,
    mean_inputs,
    select_layers,
)
from nas_lightning.utils.distributed import reduce_sum

# ProjectedSteps, fold_features, mean_inputs and select_layers are re-exported for callers that still import
# them from here; they live in nas_lightning.projection.
__all__ = ["ProjectedSteps", "ProjectionMatrixUpdate", "fold_features", "mean_inputs", "select_layers"]


def _setting(name: str) -> property:
    return property(lambda self: getattr(self.projector, name), doc=f"The projector's ``{name}``.")


def _amp_scale(trainer: pl.Trainer) -> float | None:
    """The loss scale of AMP's gradient scaler, None without one (fp32, bf16)."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else None


def _supernet(pl_module: pl.LightningModule) -> nn.Module:
    supernet = getattr(pl_module, "supernet", None)
    if not isinstance(supernet, nn.Module):
        raise TypeError("ProjectionMatrixUpdate projects the gradients of `pl_module.supernet`; "
                        f"{type(pl_module).__name__} has none (use a SupernetModule method)")
    return supernet


class ProjectionMatrixUpdate(pl.Callback):
    """Orthogonal gradient projection of ``pl_module.supernet``'s shared weights (DI-NAS eqs. 6-8).

    The arguments are ``OrthogonalProjector``'s (alpha: the regulariser of eqs. 7-8, relative to each layer's
    feature energy unless ``alpha_scale="absolute"``; alpha_decay: OWM's
    alpha0 ** progress schedule, which needs a finite ``max_steps``/``max_epochs``; every_n_steps: fold
    after every n-th optimiser step; layers: which layer types are projected; max_patches: conv patches
    folded per layer and step; seed: of the patch subsample; alpha_linear: the Linear layers' own alpha).
    The checkpointed state is the projector's: ``{"P": {layer name: P}, "updates": folds done}``.
    """

    alpha = _setting("alpha")
    alpha_decay = _setting("alpha_decay")
    alpha_linear = _setting("alpha_linear")
    alpha_scale = _setting("alpha_scale")
    every_n_steps = _setting("every_n_steps")
    layers = _setting("layers")
    max_patches = _setting("max_patches")
    seed = _setting("seed")
    P = _setting("P")
    updates = _setting("updates")

    def __init__(self, alpha: float = DEFAULT_ALPHA, alpha_decay: bool = False, every_n_steps: int = 1,
                 layers: Literal["all", "conv", "linear"] = "all", max_patches: int = 16, seed: int = 0,
                 alpha_linear: float | None = None, alpha_scale: Literal["energy", "absolute"] = "energy") -> None:
        self.projector = OrthogonalProjector(alpha=alpha, alpha_decay=alpha_decay, every_n_steps=every_n_steps,
                                             layers=layers, max_patches=max_patches, seed=seed,
                                             alpha_linear=alpha_linear, alpha_scale=alpha_scale)
        self.enabled = True  # False for a method that asks for no projection (DINAS(projection=False))
        self._scale: float | None = None  # AMP's loss scale before the step, if a scaler is in use

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.layers, seed=self.seed)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.enabled = getattr(pl_module, "projection", True)
        if stage == "fit" and self.enabled:
            self.projector.attach(_supernet(pl_module))
        elif not self.enabled:
            rank_zero_info(f"ProjectionMatrixUpdate: off, {type(pl_module).__name__}(projection=False) is the plain "
                           "weight-sharing ablation")

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.projector.detach()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled:
            self.projector.set_training_length(float(trainer.estimated_stepping_batches))

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.enabled:
            self.projector.begin_step(trainer.global_step)

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        # False for another optimiser (e.g. a controller's): nothing of ours to project
        if self.enabled and self.projector.before_optimizer_step(trainer.global_step, optimizer):
            self._scale = _amp_scale(trainer)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.enabled:  # no-op while accumulating micro-batches
            applied, self._scale = amp_step_applied(self._scale, _amp_scale(trainer)), None
            step, metrics = self.projector.finish_step(partial(reduce_sum, trainer=trainer), applied,
                                                       trainer.log_every_n_steps if trainer.loggers else 0)
            for logger in trainer.loggers if metrics else ():
                logger.log_metrics(metrics, step=step)

    def disturbance_step_rule(self, trainer: pl.Trainer) -> Callable[[nn.Module], ProjectedSteps]:
        """A ``StepRule`` factory for ``DisturbanceMetrics``: its matrix trains a copy of the supernet with
        this projection (the current P and alpha), so it measures DI-NAS's disturbance, not SGD's."""
        return partial(self.projector.projected_steps, progress=self.projector.progress(trainer.global_step),
                       reduce=partial(reduce_sum, trainer=trainer))

    @override
    def state_dict(self) -> dict[str, Any]:
        return self.projector.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.projector.load_state_dict(state_dict)
