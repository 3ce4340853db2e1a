"""DI-NAS: disturbance-immune weight sharing (Niu et al., "Disturbance-immune Weight Sharing for
Neural Architecture Search", arXiv:2003.13089).

Algorithm 1 of the paper, as this method and its two callbacks run it:
1. Supernet training (eq. 2): at each step the arch a ~ pi(theta) (uniform during the warm-up
   epochs) is trained on one batch: ``SupernetModule.training_step`` with a ``ControllerSampler``.
2. Disturbance-immune update (eqs. 6-8): each shared weight's update is projected with its P, and
   after the step P folds in the arch's input features: the ``callbacks.ProjectionMatrixUpdate``
   callback over ``nas_lightning.projection``. ``projection=False`` is the plain-WS ablation.
3. Controller learning (eq. 1): after each epoch from the callback ``callbacks.ControllerStep``'s
   ``start_epoch`` on, ``update_controller`` takes REINFORCE steps on the inherited-weight accuracy of
   sampled archs, one supernet-val batch each.
The values the paper lost are fixed in docs/design_choices.md, "DI-NAS"; each is an argument.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from typing_extensions import override

from nas_lightning.data.batch_source import Batch
from nas_lightning.methods.supernet_module import SupernetModule, require_callbacks
from nas_lightning.samplers.controller import ControllerSampler, controller_updates
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.distributed import step_generator

_CONFIG = "configs/dinas/nb201_fashion_mnist.yaml"


class DINAS(SupernetModule):
    """The supernet trained on the archs an ENAS-style controller samples, with projected updates.

    Args:
        sampler: ``(space, seed) -> ControllerSampler`` (hidden size, Adam, entropy weight, baseline
            decay); its state is the search state, checkpointed with the model.
        projection: project the updates (eq. 6) with ``callbacks.ProjectionMatrixUpdate``, which must
            then be in the trainer's callbacks; False gives plain weight sharing (the ablation): the
            callback, if listed, says so and leaves the gradients alone.
        kwargs: see ``SupernetModule``; ``seed`` also seeds the controller's reward batches.
    """

    search_val_batches = "sharded"  # controller rewards split full supernet-val batches over ranks (setup checks)

    def __init__(self, space: SearchSpace,
                 sampler: Callable[[SearchSpace, int], ControllerSampler] = ControllerSampler,
                 projection: bool = True, **kwargs: Any) -> None:
        super().__init__(space, sampler=sampler, **kwargs)
        if not isinstance(self.sampler, ControllerSampler):
            raise TypeError(f"DINAS needs a ControllerSampler, got {type(self.sampler).__name__}")
        self.projection = projection

    @property
    def controller(self) -> ControllerSampler:
        assert isinstance(self.sampler, ControllerSampler)
        return self.sampler

    @override
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit":
            return
        require_callbacks(self.trainer, "DINAS", ["ControllerStep"] + ["ProjectionMatrixUpdate"] * self.projection,
                          _CONFIG)

    def update_controller(self, epoch: int, num_updates: int, archs_per_step: int) -> list[dict[str, float]]:
        """Algorithm 1, controller learning after supernet epoch ``epoch``: ``num_updates`` REINFORCE steps
        (eq. 1), each on a supernet-val batch drawn from ``(seed, "controller_batches", epoch)``, the same
        on every rank."""
        batches = self.batches.seeded_val(num_updates, step_generator(self.seed, "controller_batches", epoch))
        stats = controller_updates(self.controller, batches, self.reward, archs_per_step)
        self.controller.finish_epoch(epoch)
        return stats

    def reward(self, archs: list[Arch], batch: Batch) -> torch.Tensor:
        """R(a, w_a) of eq. 1: inherited-weight accuracy (a fraction) on ``batch``. Each rank evaluates its
        slice of the batch and the totals are summed, so every rank gets the same rewards."""
        x, y = batch
        rank, world = self.trainer.global_rank, self.trainer.world_size
        if len(y) < world:
            raise ValueError(f"a supernet-val batch of {len(y)} cannot be split over {world} ranks; "
                             "raise data.eval_batch_size")
        shard = (x[rank::world].to(self.device), y[rank::world].to(self.device))
        return self.evaluate(archs, batches=[shard]).accuracy.cpu() / 100.0
