"""DI-NAS's disturbance-immune update of the shared weights (Niu et al., arXiv:2003.13089, section 4.1,
Algorithm 1 lines 9-10, eqs. 6-8), after the orthogonal weight modification (OWM) of Zeng et al. 2019
(arXiv:1810.01256), as one object that owns its state: ``OrthogonalProjector``. It needs no Trainer;
``callbacks.ProjectionMatrixUpdate`` calls it from Lightning's hooks, ``ProjectedSteps`` applies the same
update to a copy of the supernet (the disturbance matrix's ``StepRule``).

Every selected Conv2d/Linear of the supernet owns a projection matrix P (fp32, P_0 = I, created the first
time the layer's features are folded in). One optimiser step t (0-based) is:

1. ``begin_step(t)``: on a folding step (``t % every_n_steps == 0``) a forward pre-hook keeps the batch
   sum of each layer's input (only the layers on the path that ran; micro-batches add up).
2. ``before_optimizer_step(t, optimizer)``, after backward and before the optimiser: a copy of [W | b] of
   every layer that has a P and a gradient (the layers a torch optimiser can move this step; off-path
   layers have none and are left alone).
3. ``end_step(reduce)``, after the optimiser step: each such layer's applied update becomes its
   projection, [W | b] <- before + ([W | b] - before) @ P (eq. 6 on the step actually taken, after momentum,
   weight decay or Adam's scaling, with any torch optimiser); then the step's mean inputs are folded into P
   with the block Woodbury identity (eqs. 7-8), so the features of the arch just trained are not part of
   the P that trained it ("we do not include its input feature in A"). A step the optimiser did not take
   (``applied=False``: AMP's scaler skipped it on an overflow) neither projects nor folds. The mean is
   over every sample of the
   step: all accumulated micro-batches, and all DDP ranks (``reduce`` sums the input sums and counts
   over ranks before dividing), so P is the same on every rank and equals that of one process
   accumulating the same micro-batches. The conv patch subsample is drawn from
   ``step_generator(seed, patch_stream, t)``: the same rows on every rank, and on resume.

Why the applied update and not the gradient: projecting G before the optimiser lets momentum carry the
unprojected part of earlier gradients into later steps (and weight decay add an unprojected -lr*wd*W), which
at momentum 0.9 undoes most of the protection (tests/test_projection.py reproduces it). The optimiser's own
state (SGD's momentum buffer, Adam's moments) is left as it is: every update that reaches the weights is
projected with the P of its step, which is what Theorem 4.1 needs, and the meaning of a state buffer is the
optimiser's (Adam's second moment is not a direction to project). The price is that momentum spent on
protected directions is lost, not redirected.

The regulariser alpha, its scale (relative to each layer's feature energy by default), its decay and the
per-layer alphas are choices the paper leaves open (docs/design_choices.md, "DI-NAS").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from nas_lightning.projection.layer_inputs import LayerInputRecorder, layer_features
from nas_lightning.projection.owm import (
    LayerLayout,
    alpha_at,
    energy_normalised,
    project_layer_gradient,
    project_layer_update,
    weight_matrix,
    woodbury_update,
)
from nas_lightning.utils.distributed import step_generator

#: Sums a tensor over all processes (DDP ranks); the identity for one process.
Reduce = Callable[[torch.Tensor], torch.Tensor]

#: Which layer types ``layers=`` selects.
LAYER_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "all": (nn.Conv2d, nn.Linear),
    "conv": (nn.Conv2d,),
    "linear": (nn.Linear,),
}

#: How alpha is read: relative to each fold's feature energy (``owm.energy_normalised``) or as it is.
ALPHA_SCALES = ("energy", "absolute")

#: alpha of ``OrthogonalProjector`` and ``callbacks.ProjectionMatrixUpdate`` (relative to the feature energy),
#: from the sweep in docs/design_choices.md, "DI-NAS".
DEFAULT_ALPHA = 10.0

#: The patch-subsample stream of the run's P, and that of a copy's (``ProjectedSteps``).
RUN_STREAM, COPY_STREAM = "owm-patches", "owm-patches-copy"


def select_layers(supernet: nn.Module, layers: str) -> dict[str, nn.Module]:
    """The supernet's layers of the chosen types (a key of ``LAYER_TYPES``), by module name."""
    types = LAYER_TYPES[layers]
    return {name: m for name, m in supernet.named_modules() if isinstance(m, types)}


def _on_device(P: dict[str, torch.Tensor], name: str, device: torch.device) -> torch.Tensor:
    if P[name].device != device:  # restored from a checkpoint on the CPU
        P[name] = P[name].to(device)
    return P[name]


def amp_step_applied(scale_before: float | None, scale_after: float | None) -> bool:
    """Whether the optimiser step ran, from AMP's loss scale before and after it (None: no scaler): a
    ``GradScaler`` backs its scale off exactly when it skipped the step for non-finite gradients."""
    return scale_before is None or scale_after is None or scale_after >= scale_before


def snapshot_layers(layers: Mapping[str, nn.Module], layouts: Mapping[str, LayerLayout], P: Mapping[str, torch.Tensor],
                    params: set[int] | None = None) -> dict[str, torch.Tensor]:
    """A copy of [W | b] of every layer that has a P and a gradient (and whose weight is in ``params``, the
    ids of the stepping optimiser's parameters, if given): the layers whose step ``project_updates`` projects.
    A layer without a P has P = I, and torch optimisers skip parameters without a gradient."""
    def copy_of(module: nn.Module, layout: LayerLayout) -> torch.Tensor:
        w = weight_matrix(module, layout)
        return w if layout.has_bias else w.clone()  # with a bias, weight_matrix already made a new tensor

    return {name: copy_of(module, layouts[name]) for name, module in layers.items()
            if name in P and (params is None or id(module.weight) in params)
            and (module.weight.grad is not None or (layouts[name].has_bias and module.bias.grad is not None))}


def project_updates(layers: Mapping[str, nn.Module], layouts: Mapping[str, LayerLayout], P: dict[str, torch.Tensor],
                    before: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Eq. 6 on the update applied since ``before`` (``snapshot_layers``), in place; per layer the norms of
    the update after and before projection."""
    return {name: project_layer_update(layers[name], layouts[name], old, _on_device(P, name, old.device))
            for name, old in before.items()}


def project_gradients(layers: Mapping[str, nn.Module], layouts: Mapping[str, LayerLayout],
                      P: dict[str, torch.Tensor], params: set[int] | None = None) -> int:
    """Eq. 6 on the gradients (G <- G @ P) of every layer that has a P and a gradient (and whose weight is in
    ``params``, the ids of the stepping optimiser's parameters, if given). Returns how many layers were
    projected. Exact only for plain SGD: ``OrthogonalProjector`` projects the applied update instead
    (``project_updates``), which momentum and weight decay cannot undo."""
    done = 0
    for name, module in layers.items():
        if name not in P or (params is not None and id(module.weight) not in params):
            continue  # no P yet is P = I
        done += project_layer_gradient(module, layouts[name], _on_device(P, name, module.weight.device))
    return done


def mean_inputs(sums: Mapping[str, tuple[torch.Tensor, int]], reduce: Reduce | None = None) -> dict[str, torch.Tensor]:
    """Each layer's mean input over all samples of the step on all ranks: sums and counts are added up
    by ``reduce`` (None: one process) in one flat tensor (every rank ran the same path, so the same
    layers and shapes)."""
    names = sorted(sums)
    if not names:
        return {}
    flat = torch.cat([sums[n][0].flatten() for n in names]
                     + [torch.tensor([float(sums[n][1]) for n in names], device=sums[names[0]][0].device)])
    if reduce is not None:
        flat = reduce(flat)
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
                  generator: torch.Generator, alpha_linear: float | None = None,
                  alpha_scale: str = "energy") -> None:
    """Fold each layer's features (from its mean input) into its P (eq. 8, block form), creating P = I
    for a layer seen for the first time. Layers in sorted name order, so the patch draws are stable.
    Linear layers use ``alpha_linear`` when it is given (OWM's per-layer alphas), the others ``alpha``.
    ``alpha_scale="energy"``: alpha is relative to the mean squared norm of the rows folded (per group),
    i.e. the rows are ``owm.energy_normalised``; ``"absolute"``: as given."""
    if alpha_scale not in ALPHA_SCALES:
        raise ValueError(f"alpha_scale must be one of {ALPHA_SCALES}, got {alpha_scale!r}")
    for name in sorted(means):
        module, layout = layers[name], layouts[name]
        device = module.weight.device
        if name not in P:
            P[name] = layout.identity(device)
        X = layer_features(module, layout, means[name].to(device), max_patches, generator)
        if alpha_scale == "energy":
            X = energy_normalised(X)
        a = alpha_linear if alpha_linear is not None and isinstance(module, nn.Linear) else alpha
        P[name] = woodbury_update(_on_device(P, name, device), X, a)


class OrthogonalProjector:
    """Orthogonal gradient projection of a supernet's shared weights (DI-NAS eqs. 6-8; the step protocol
    is in this module's docstring). Owns P and the count of folds; ``state_dict`` is what to checkpoint.

    Args:
        alpha: the regulariser of eqs. 7-8 (the paper's value is lost; the default is from our sweep,
            docs/design_choices.md, "DI-NAS"). Smaller protects the outputs on seen inputs more (Theorem 4.1)
            and leaves less room to learn. With ``alpha_scale="energy"`` it is relative to each fold's
            feature energy: a row x is folded at alpha * e, e the mean squared norm of the step's rows for
            that layer (its features, the bias's 1 included), so one alpha suits every layer.
        alpha_decay: use OWM's schedule alpha0 ** progress (1 at the start, alpha at the end of training);
            needs ``set_training_length``.
        every_n_steps: fold features in after every n-th optimiser step (projection happens every step).
        layers: which layers are projected: Conv2d and Linear, or one of the two.
        max_patches: conv patches folded in per layer and step (a seeded subsample).
        seed: seed of the patch subsample.
        alpha_linear: a separate alpha for the Linear layers (OWM uses about 1e-5 for convs and 0.1 for the
            last linear layer); None: ``alpha`` for every layer. Decayed like ``alpha`` with ``alpha_decay``.
        patch_stream: the ``step_generator`` stream of the patch subsample.
        alpha_scale: ``"energy"`` (alpha relative to the feature energy, scale-free) or ``"absolute"`` (alpha
            as eq. 7 writes it; the setting of runs before the scale-free alpha).
    """

    def __init__(self, alpha: float = DEFAULT_ALPHA, alpha_decay: bool = False, every_n_steps: int = 1,
                 layers: Literal["all", "conv", "linear"] = "all", max_patches: int = 16, seed: int = 0,
                 alpha_linear: float | None = None, patch_stream: str = RUN_STREAM,
                 alpha_scale: Literal["energy", "absolute"] = "energy") -> None:
        alpha_at(alpha, 0.0, alpha_decay)  # validates alpha
        if alpha_linear is not None:
            alpha_at(alpha_linear, 0.0, alpha_decay)
        if layers not in LAYER_TYPES:
            raise ValueError(f"layers must be one of {sorted(LAYER_TYPES)}, got {layers!r}")
        if every_n_steps < 1 or max_patches < 1:
            raise ValueError(f"every_n_steps and max_patches must be >= 1, got {every_n_steps}, {max_patches}")
        if alpha_scale not in ALPHA_SCALES:
            raise ValueError(f"alpha_scale must be one of {ALPHA_SCALES}, got {alpha_scale!r}")
        self.alpha_scale = alpha_scale
        self.alpha, self.alpha_decay, self.every_n_steps = alpha, alpha_decay, every_n_steps
        self.alpha_linear = alpha_linear
        self.layers, self.max_patches, self.seed, self.patch_stream = layers, max_patches, seed, patch_stream
        self.P: dict[str, torch.Tensor] = {}
        self.updates = 0  # folds done
        self.total_steps = 0.0  # the training length that ``progress`` divides by
        self.modules: dict[str, nn.Module] = {}
        self.layouts: dict[str, LayerLayout] = {}
        self._recorder: LayerInputRecorder | None = None
        self._pending: int | None = None  # the step snapshotted and not folded yet
        self._before: dict[str, torch.Tensor] = {}  # [W | b] of the pending step's layers, before the step
        #: Per layer, |update after projection| / |update before| of the last step measured (``end_step``).
        self.surviving: dict[str, torch.Tensor] = {}

    # --- wiring ----------------------------------------------------------------------------------
    def attach(self, supernet: nn.Module) -> None:
        """Select the supernet's layers and hook the input recorder on them (replacing any earlier
        attachment). P is kept: a checkpoint's P stays valid for the same supernet."""
        modules = select_layers(supernet, self.layers)
        if not modules:
            raise ValueError(f"the supernet has no layers of type {self.layers!r} to project")
        layouts = {name: LayerLayout.of(m) for name, m in modules.items()}
        self.detach()
        self.modules, self.layouts = modules, layouts
        self._recorder = LayerInputRecorder(modules)

    def detach(self) -> None:
        """Remove the input hooks; P stays."""
        if self._recorder is not None:
            self._recorder.remove()
            self._recorder = None

    def set_training_length(self, total_steps: float) -> None:
        """The number of optimiser steps of the whole training, for ``alpha_decay``."""
        if self.alpha_decay and not 0 < total_steps < float("inf"):
            raise ValueError(f"alpha_decay=True needs a finite training length, got {total_steps} steps: "
                             "set max_steps or max_epochs")
        self.total_steps = float(total_steps)

    # --- schedule --------------------------------------------------------------------------------
    def progress(self, step: int) -> float:
        """The fraction of training done at optimiser step ``step``."""
        return step / max(self.total_steps, 1.0)

    def alphas(self, progress: float) -> tuple[float, float | None]:
        """(alpha, alpha_linear) of a fold at ``progress``, decayed if asked (``owm.alpha_at``)."""
        alpha_linear = None if self.alpha_linear is None else alpha_at(self.alpha_linear, progress, self.alpha_decay)
        return alpha_at(self.alpha, progress, self.alpha_decay), alpha_linear

    # --- each step -------------------------------------------------------------------------------
    def begin_step(self, step: int) -> None:
        """Record this step's layer inputs if it is a folding step (called before each micro-batch)."""
        if self._recorder is not None:
            self._recorder.active = step % self.every_n_steps == 0

    def stop_recording(self) -> None:
        """Ignore layer inputs until the next ``begin_step`` (``end_step`` does it too)."""
        if self._recorder is not None:
            self._recorder.active = False

    @property
    def pending_step(self) -> int | None:
        """The step ``before_optimizer_step`` marked and ``end_step`` has not finished yet, if any."""
        return self._pending

    def before_optimizer_step(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Before the optimiser step: keep [W | b] of every layer with a P and a gradient (only those
        ``optimizer`` steps, if given), and mark ``step`` for ``end_step``. False, and nothing done, if
        ``optimizer`` steps none of the projected layers (e.g. a controller's optimiser). A second call before
        ``end_step`` (an optimiser that calls its closure more than once) keeps the first copy."""
        params = None if optimizer is None else {id(p) for group in optimizer.param_groups for p in group["params"]}
        if params is not None and not any(id(m.weight) in params for m in self.modules.values()):
            return False
        if self._pending is None:
            self._before = snapshot_layers(self.modules, self.layouts, self.P, params)
            self._pending = step
        return True

    def end_step(self, reduce: Reduce | None = None, applied: bool = True, measure: bool = False) -> bool:
        """After the optimiser step: project the update it applied (eq. 6), then fold the step's mean inputs
        into P (eqs. 7-8) if it was a folding step. Does nothing before ``before_optimizer_step``
        (accumulating micro-batches: their inputs keep adding up). ``reduce`` sums over DDP ranks (None: one
        process). ``applied=False``: the optimiser skipped the step (AMP overflow), so nothing is projected
        or folded. ``measure``: also keep each layer's surviving share in ``surviving`` (two norms per
        layer). True if P was updated."""
        if self._recorder is None or self._pending is None:
            return False
        self._recorder.active = False
        step, self._pending = self._pending, None
        before, self._before = self._before, {}
        sums = self._recorder.pop()
        if not applied:
            return False
        norms = project_updates(self.modules, self.layouts, self.P, before)
        if measure:
            self.surviving = {name: after / before_norm.clamp_min(torch.finfo(before_norm.dtype).tiny)
                              for name, (after, before_norm) in norms.items()}
        if step % self.every_n_steps or not sums:
            return False
        alpha, alpha_linear = self.alphas(self.progress(step))
        fold_features(self.modules, self.layouts, self.P, mean_inputs(sums, reduce), alpha, self.max_patches,
                      step_generator(self.seed, self.patch_stream, step), alpha_linear, self.alpha_scale)
        self.updates += 1
        return True

    def finish_step(self, reduce: Reduce | None, applied: bool,
                    log_every_n_steps: int) -> tuple[int | None, dict[str, float]]:
        """``end_step``, measuring the surviving shares on every ``log_every_n_steps``-th step (0: never).
        Returns the step and, on a measured step, the metrics to log: ``projection/surviving/<layer>`` and
        their mean ``projection/surviving_mean`` (read with one device sync); else ``(step, {})`` (step None
        while accumulating micro-batches)."""
        step = self._pending
        measure = step is not None and log_every_n_steps > 0 and step % log_every_n_steps == 0
        self.end_step(reduce, applied, measure)
        if not measure or not self.surviving:
            return step, {}
        names = sorted(self.surviving)
        values = torch.stack([self.surviving[n].float() for n in names]).tolist()
        self.surviving = {}
        metrics = {f"projection/surviving/{n}": v for n, v in zip(names, values)}
        metrics["projection/surviving_mean"] = sum(values) / len(values)
        return step, metrics

    # --- the same update on a copy ---------------------------------------------------------------
    def projected_steps(self, net: nn.Module, progress: float, reduce: Reduce | None = None) -> ProjectedSteps:
        """This update on ``net`` (a copy of the supernet): a copy of the current P, the alphas at
        ``progress``; this projector's P is never touched."""
        alpha, alpha_linear = self.alphas(progress)
        return ProjectedSteps(net, self.P, alpha, self.layers, self.max_patches, self.seed, reduce, alpha_linear,
                              self.alpha_scale)

    # --- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"P": dict(self.P), "updates": self.updates}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.P = {name: P.float() for name, P in state_dict["P"].items()}
        self.updates = int(state_dict["updates"])


class ProjectedSteps:
    """The projector's update on another copy of the supernet, such as the disturbance matrix's (a
    ``StepRule`` of ``nas_lightning.metrics.disturbance``): each applied update projected with a private
    copy of P, into which each step's mean inputs are folded after the step, as in the run, at fixed
    alphas. The run's P is never touched.

    Args:
        net: the copy; its layers are selected as the run's supernet's (same names).
        P: the run's projection matrices (copied).
        alpha, layers, max_patches, seed, alpha_linear, alpha_scale: as ``OrthogonalProjector``'s (the alphas
            at the run's current progress).
        reduce: sums over DDP ranks (None: one process).
    """

    def __init__(self, net: nn.Module, P: Mapping[str, torch.Tensor], alpha: float, layers: str, max_patches: int,
                 seed: int, reduce: Reduce | None = None, alpha_linear: float | None = None,
                 alpha_scale: Literal["energy", "absolute"] = "energy") -> None:
        self.projector = OrthogonalProjector(alpha=alpha, layers=layers, max_patches=max_patches, seed=seed,
                                             alpha_linear=alpha_linear, patch_stream=COPY_STREAM,
                                             alpha_scale=alpha_scale)
        self.projector.load_state_dict({"P": {name: p.clone() for name, p in P.items()}, "updates": 0})
        self.projector.attach(net)
        self.reduce = reduce
        self.steps = 0

    @property
    def P(self) -> dict[str, torch.Tensor]:
        return self.projector.P

    @property
    def alpha(self) -> float:
        return self.projector.alpha

    def begin_step(self) -> None:
        self.projector.begin_step(self.steps)

    def before_optimizer_step(self) -> None:
        self.projector.stop_recording()
        self.projector.before_optimizer_step(self.steps)

    def end_step(self) -> None:
        self.projector.end_step(self.reduce)
        self.steps += 1

    def close(self) -> None:
        self.projector.detach()
