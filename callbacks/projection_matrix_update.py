"""DI-NAS's disturbance-immune update of the shared weights (Niu et al., arXiv:2003.13089, section 4.1,
Algorithm 1 lines 9-10; SPEC.md "DI-NAS equations").

Every shared Conv2d/Linear of ``pl_module.supernet`` owns a projection matrix P (fp32, P_0 = I, created
the first time the layer runs). At each optimiser step:

1. ``on_before_optimizer_step``: every gradient G of a projected layer becomes G @ P (eq. 6), in place,
   after AMP unscaling and before clipping, momentum and weight decay, so it works with any optimiser.
   Layers off the sampled path have no gradient and are left alone.
2. During the step a forward pre-hook keeps the batch sum of each layer's input (only the path that ran).
3. ``on_train_batch_end``, after the step: the features of the arch just trained are folded into its
   layers' P with the block Woodbury identity (eq. 8), so they are not part of the P that trained
   that arch ("we do not include its input feature in A"). The feature is the mean input over every
   sample of the step: all accumulated micro-batches, and all DDP ranks (input sums and counts are
   added up over ranks before dividing), so P is the same on every rank and equals that of one process
   accumulating the same micro-batches. The conv patch subsample is drawn from
   ``step_generator(seed, "owm-patches", step)``: the same rows on every rank, and on resume.

Folding happens on steps t (0-based optimiser steps) with ``t % every_n_steps == 0``; inputs are only
recorded on those steps. P is this callback's checkpointed state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import nn

from nas_lightning.projection.layer_inputs import LayerInputRecorder, layer_features
from nas_lightning.projection.owm import LayerLayout, alpha_at, project_layer_gradient, woodbury_update
from nas_lightning.utils.distributed import reduce_sum, step_generator

#: Which layer types ``layers=`` selects.
LAYER_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "all": (nn.Conv2d, nn.Linear),
    "conv": (nn.Conv2d,),
    "linear": (nn.Linear,),
}


def select_layers(supernet: nn.Module, layers: str) -> dict[str, nn.Module]:
    """The supernet's layers of the chosen types, by module name."""
    types = LAYER_TYPES[layers]
    return {name: m for name, m in supernet.named_modules() if isinstance(m, types)}


def _on_device(P: dict[str, torch.Tensor], name: str, device: torch.device) -> torch.Tensor:
    if P[name].device != device:  # restored from a checkpoint on the CPU
        P[name] = P[name].to(device)
    return P[name]


def project_gradients(layers: Mapping[str, nn.Module], layouts: Mapping[str, LayerLayout],
                      P: dict[str, torch.Tensor], params: set[int] | None = None) -> int:
    """Eq. 6 on every layer that has a P and a gradient (and whose weight is in ``params``, the ids of
    the stepping optimiser's parameters, if given). Returns how many layers were projected."""
    done = 0
    for name, module in layers.items():
        if name not in P or (params is not None and id(module.weight) not in params):
            continue  # no P yet is P = I
        done += project_layer_gradient(module, layouts[name], _on_device(P, name, module.weight.device))
    return done


def mean_inputs(sums: Mapping[str, tuple[torch.Tensor, int]], trainer: pl.Trainer | None) -> dict[str, torch.Tensor]:
    """Each layer's mean input over all samples of the step on all ranks: sums and counts are added up
    over ranks in one flat all-reduce (every rank ran the same path, so the same layers and shapes)."""
    names = sorted(sums)
    if not names:
        return {}
    flat = torch.cat([sums[n][0].flatten() for n in names]
                     + [torch.tensor([float(sums[n][1]) for n in names], device=sums[names[0]][0].device)])
    flat = reduce_sum(flat, trainer)
    counts = flat[-len(names):]
    out, offset = {}, 0
    for i, n in enumerate(names):
        shape = sums[n][0].shape
        size = sums[n][0].numel()
        out[n] = flat[offset: offset + size].reshape(shape) / counts[i]
        offset += size
    return out


@torch.no_grad()
def fold_features(layers: Mapping[str, nn.Module], layouts: Mapping[str, LayerLayout], P: dict[str, torch.Tensor],
                  means: Mapping[str, torch.Tensor], alpha: float, max_patches: int,
                  generator: torch.Generator, alpha_linear: float | None = None) -> None:
    """Fold each layer's features (from its mean input) into its P (eq. 8, block form), creating P = I
    for a layer seen for the first time. Layers in sorted name order, so the patch draws are stable.
    Linear layers use ``alpha_linear`` when it is given (OWM's per-layer alphas), the others ``alpha``."""
    for name in sorted(means):
        module, layout = layers[name], layouts[name]
        device = module.weight.device
        if name not in P:
            P[name] = layout.identity(device)
        X = layer_features(module, layout, means[name].to(device), max_patches, generator)
        a = alpha_linear if alpha_linear is not None and isinstance(module, nn.Linear) else alpha
        P[name] = woodbury_update(_on_device(P, name, device), X, a)


class ProjectedSteps:
    """``ProjectionMatrixUpdate``'s update on another copy of the supernet, such as the disturbance matrix's
    (a ``StepRule``): gradients projected with a private copy of P, into which each step's mean inputs are
    folded after the step, as in the run. The run's own P is never touched.

    Args:
        net: the copy; its layers are selected as the callback selects the supernet's (same names).
        P: the run's projection matrices (copied).
        alpha, alpha_linear, layers, max_patches, seed: as the callback's (the alphas at the run's current
            progress).
        trainer: for the DDP sum of the inputs (None: one process).
    """

    def __init__(self, net: nn.Module, P: Mapping[str, torch.Tensor], alpha: float, layers: str, max_patches: int,
                 seed: int, trainer: pl.Trainer | None = None, alpha_linear: float | None = None) -> None:
        self.modules = select_layers(net, layers)
        self.layouts = {name: LayerLayout.of(m) for name, m in self.modules.items()}
        self.P = {name: p.clone() for name, p in P.items()}
        self.alpha, self.alpha_linear = alpha, alpha_linear
        self.max_patches, self.seed, self.trainer = max_patches, seed, trainer
        self.steps = 0
        self._recorder = LayerInputRecorder(self.modules)

    def begin_step(self) -> None:
        self._recorder.active = True

    def before_optimizer_step(self) -> None:
        self._recorder.active = False
        project_gradients(self.modules, self.layouts, self.P)

    def end_step(self) -> None:
        sums = self._recorder.pop()
        if sums:
            fold_features(self.modules, self.layouts, self.P, mean_inputs(sums, self.trainer), self.alpha,
                          self.max_patches, step_generator(self.seed, "owm-patches-copy", self.steps),
                          self.alpha_linear)
        self.steps += 1

    def close(self) -> None:
        self._recorder.remove()


class ProjectionMatrixUpdate(pl.Callback):
    """Orthogonal gradient projection of the supernet's shared weights (DI-NAS eqs. 6-8).

    Args:
        alpha: the regulariser of eqs. 7-8 (SPEC.md default 1e-3; the paper's value is lost). Smaller
            protects the outputs on seen inputs more (Theorem 4.1) and leaves less room to learn.
        alpha_decay: use OWM's schedule alpha0 ** progress (1 at the start, alpha at the end of
            training); needs a finite ``max_steps``/``max_epochs``.
        alpha_linear: a separate alpha for the Linear layers (OWM uses about 1e-5 for convs and 0.1 for the
            last linear layer); None: ``alpha`` for every layer. Decayed like ``alpha`` with ``alpha_decay``.
        every_n_steps: fold features in after every n-th optimiser step (projection happens every step).
        layers: which shared layers are projected: Conv2d and Linear, or one of the two.
        max_patches: conv patches folded in per layer and step (a seeded subsample).
        seed: seed of the patch subsample.
    """

    def __init__(self, alpha: float = 1e-3, alpha_decay: bool = False, every_n_steps: int = 1,
                 layers: Literal["all", "conv", "linear"] = "all", max_patches: int = 16, seed: int = 0,
                 alpha_linear: float | None = None) -> None:
        alpha_at(alpha, 0.0, alpha_decay)  # validates alpha
        if alpha_linear is not None:
            alpha_at(alpha_linear, 0.0, alpha_decay)
        if layers not in LAYER_TYPES:
            raise ValueError(f"layers must be one of {sorted(LAYER_TYPES)}, got {layers!r}")
        if every_n_steps < 1 or max_patches < 1:
            raise ValueError(f"every_n_steps and max_patches must be >= 1, got {every_n_steps}, {max_patches}")
        self.alpha, self.alpha_decay, self.every_n_steps = alpha, alpha_decay, every_n_steps
        self.alpha_linear = alpha_linear
        self.layers, self.max_patches, self.seed = layers, max_patches, seed
        self.P: dict[str, torch.Tensor] = {}
        self.updates = 0
        self._modules: dict[str, nn.Module] = {}
        self._layouts: dict[str, LayerLayout] = {}
        self._recorder: LayerInputRecorder | None = None
        self._stepped: int | None = None
        self._total_steps = 0.0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.layers, seed=self.seed)

    # --- wiring ----------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        supernet = getattr(pl_module, "supernet", None)
        if not isinstance(supernet, nn.Module):
            raise TypeError("ProjectionMatrixUpdate projects the gradients of `pl_module.supernet`; "
                            f"{type(pl_module).__name__} has none (use a SupernetModule method)")
        self._modules = select_layers(supernet, self.layers)
        if not self._modules:
            raise ValueError(f"the supernet has no layers of type {self.layers!r} to project")
        self._layouts = {name: LayerLayout.of(m) for name, m in self._modules.items()}
        self.teardown(trainer, pl_module, stage)
        self._recorder = LayerInputRecorder(self._modules)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._recorder is not None:
            self._recorder.remove()
            self._recorder = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._total_steps = float(trainer.estimated_stepping_batches)
        if self.alpha_decay and not 0 < self._total_steps < float("inf"):
            raise ValueError(f"alpha_decay=True needs a finite training length, got {self._total_steps} steps: "
                             "set max_steps or max_epochs")

    # --- each step -------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._recorder is not None:
            self._recorder.active = trainer.global_step % self.every_n_steps == 0

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        params = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if not any(id(m.weight) in params for m in self._modules.values()):
            return  # another optimiser (e.g. a controller's)
        project_gradients(self._modules, self._layouts, self.P, params)
        self._stepped = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._recorder is None or self._stepped is None:
            return  # accumulating: the step's inputs keep adding up
        self._recorder.active = False
        step, self._stepped = self._stepped, None
        sums = self._recorder.pop()
        if step % self.every_n_steps or not sums:
            return
        alpha, alpha_linear = self._alphas(step)
        fold_features(self._modules, self._layouts, self.P, mean_inputs(sums, trainer), alpha, self.max_patches,
                      step_generator(self.seed, "owm-patches", step), alpha_linear)
        self.updates += 1

    # --- the same update on a copy ------------------------------------------------------------------
    def disturbance_step_rule(self, trainer: pl.Trainer) -> Callable[[nn.Module], ProjectedSteps]:
        """A ``StepRule`` factory for ``DisturbanceMetrics``: its matrix trains a copy of the supernet with
        this projection (the current P and alpha), so it measures DI-NAS's disturbance, not SGD's."""
        alpha, alpha_linear = self._alphas(trainer.global_step)
        return lambda net: ProjectedSteps(net, self.P, alpha, self.layers, self.max_patches, self.seed, trainer,
                                          alpha_linear)

    def _alphas(self, step: int) -> tuple[float, float | None]:
        """(alpha, alpha_linear) of a fold after optimiser step ``step``, decayed if asked."""
        progress = step / max(self._total_steps, 1.0)
        alpha_linear = None if self.alpha_linear is None else alpha_at(self.alpha_linear, progress, self.alpha_decay)
        return alpha_at(self.alpha, progress, self.alpha_decay), alpha_linear

    # --- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"P": dict(self.P), "updates": self.updates}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.P = {name: P.float() for name, P in state_dict["P"].items()}
        self.updates = int(state_dict["updates"])
