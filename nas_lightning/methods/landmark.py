"""Landmark regularisation (Yu, Ranftl and Salzmann, "Landmark Regularization: Ranking Guided Super-Net Training
in Neural Architecture Search", CVPR 2021, arXiv:2104.05309), the second row of WPNAS's Table 1.

A few landmark archs with known ground truth, sorted by it (worst first), guide the supernet's ranking: at each
step one pair i < j of landmarks is drawn (m_j the better arch), each runs on a separate supernet-val batch,
and the hinge

    lambda_t * max(0, L(m_j) - L(m_i))        (L: cross-entropy with the shared weights)

is added to the single-path loss of the step, so it is minimised in the same optimiser step as the
arch's own cross-entropy: the better landmark is pushed to a loss no higher than the worse one's. lambda_t is 0
for ``warmup_epochs``, then rises on a cosine from 0 to ``max_weight`` (10) at the end of training. The choices
the papers leave open are in docs/design_choices.md, "WPNAS".

``LandmarkRegularizer`` is the mechanism, ``LandmarkSPOS`` the method that adds it to SPOS; WPNAS (which
subclasses ``LandmarkSPOS``) takes the same collaborator, as its Table 1 stacks "SPOS + landmark + PS + ...".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from nas_lightning.data.batch_source import Batch
from nas_lightning.methods.supernet_module import SupernetModule
from nas_lightning.metrics.ground_truth import load_ground_truth
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.distributed import step_generator

__all__ = ["LandmarkFactory", "LandmarkRegularizer", "LandmarkSPOS", "landmark_weight"]


def landmark_weight(progress: float, warmup_epochs: float, total_epochs: float, max_weight: float) -> float:
    """lambda_t at ``progress`` epochs into training (fractional): 0 during the warm-up, then
    ``max_weight * (1 - cos(pi * s)) / 2`` with s the share of the remaining epochs gone, 1 from the end on."""
    if progress < warmup_epochs:
        return 0.0
    span = total_epochs - warmup_epochs
    share = 1.0 if span <= 0 else min(1.0, (progress - warmup_epochs) / span)
    return max_weight * (1.0 - math.cos(math.pi * share)) / 2.0


class LandmarkRegularizer:
    """The landmark archs and the ranking hinge on them.

    Built as ``LandmarkRegularizer(space, seed, ground_truth=..., ...)`` by a method (a ``class_path`` with
    ``init_args`` in YAML, like a sampler).

    Args:
        space: the search space the ground truth is for.
        seed: seeds the landmark subset, each step's pair and each step's supernet-val batch.
        ground_truth: a GT file (``nas-lightning ground-truth``, WPNAS's GT acquisition, or NATS-Bench).
        num_landmarks: how many GT archs are landmarks (a seeded subset when the GT holds more; 50 as in the
            paper's experiments).
        max_weight: lambda at the end of training (10).
        warmup_epochs: epochs with lambda = 0.
        batch_size: images of each supernet-val batch the landmarks run on (None: the whole eval batch).
        metric, nats_dataset: forwarded to ``load_ground_truth``.
    """

    def __init__(self, space: SearchSpace, seed: int = 0, *, ground_truth: str, num_landmarks: int = 50,
                 max_weight: float = 10.0, warmup_epochs: float = 0.0, batch_size: int | None = None,
                 metric: str = "accuracy", nats_dataset: str = "cifar10") -> None:
        if num_landmarks < 2 or max_weight < 0 or warmup_epochs < 0 or (batch_size is not None and batch_size < 1):
            raise ValueError(f"LandmarkRegularizer needs num_landmarks >= 2, max_weight >= 0, warmup_epochs >= 0 and "
                             f"batch_size >= 1 or None, got {num_landmarks}, {max_weight}, {warmup_epochs}, "
                             f"{batch_size}")
        self.space, self.seed, self.ground_truth = space, seed, ground_truth
        self.max_weight, self.warmup_epochs, self.batch_size = float(max_weight), float(warmup_epochs), batch_size
        gt = load_ground_truth(ground_truth, space, metric, nats_dataset)
        archs = gt.archs
        if len(archs) < 2:
            raise ValueError(f"ground truth {ground_truth} holds {len(archs)} arch; landmarks need at least 2")
        if len(archs) > num_landmarks:
            keep = torch.randperm(len(archs), generator=step_generator(seed, "landmarks", 0))[:num_landmarks]
            archs = [archs[i] for i in sorted(keep.tolist())]
        #: the landmarks, worst GT first (ties in the GT file's order): j > i means m_j is at least as good.
        self.landmarks: list[Arch] = sorted(archs, key=lambda a: gt[a])
        self.accuracy = [gt[a] for a in self.landmarks]

    def weight(self, progress: float, total_epochs: float) -> float:
        return landmark_weight(progress, self.warmup_epochs, total_epochs, self.max_weight)

    def pair(self, step: int) -> tuple[int, int]:
        """The pair (i, j), i < j, of optimiser step ``step``: two distinct landmarks, uniformly, from (seed,
        ``"landmark_pair"``, step)."""
        i, j = torch.randperm(len(self.landmarks), generator=step_generator(self.seed, "landmark_pair", step))[:2]
        return (int(i), int(j)) if i < j else (int(j), int(i))

    def hinge(self, supernet: nn.Module, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """max(0, L(m_j) - L(m_i)) of step ``step``'s pair on ``batch`` (differentiable in the supernet's
        weights), and the two losses."""
        i, j = self.pair(step)
        x, y = batch
        if self.batch_size is not None:
            x, y = x[: self.batch_size], y[: self.batch_size]
        loss_i = F.cross_entropy(supernet(x, self.landmarks[i]).float(), y)
        loss_j = F.cross_entropy(supernet(x, self.landmarks[j]).float(), y)
        losses = {"loss_worse": float(loss_i.detach()), "loss_better": float(loss_j.detach())}
        return torch.relu(loss_j - loss_i), losses


#: ``(space, seed) -> LandmarkRegularizer``: how a method receives it (a class with init_args in YAML).
LandmarkFactory = Callable[[SearchSpace, int], LandmarkRegularizer]


class LandmarkSPOS(SupernetModule):
    """SPOS (or any sampler's single-path training) plus the landmark hinge in the same optimiser step.

    Args:
        landmark: ``(space, seed) -> LandmarkRegularizer``; None trains without it (plain single-path training).
        kwargs: see ``SupernetModule`` (``sampler``, ``seed``, the optimiser, ...).
    """

    search_val_batches = "whole"  # each step's landmarks run on a full supernet-val batch (setup checks the split)

    def __init__(self, space: SearchSpace, landmark: LandmarkFactory | None = None, **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        self.landmark = landmark(space, self.seed) if landmark is not None else None
        self.save_hyperparameters(ignore=["space", "optimizer", "lr_scheduler", "sampler", "landmark"])

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)  # the sampled arch's cross-entropy
        if self.landmark is None:
            return loss
        return loss + self.landmark_term(batch_idx)

    def landmark_term(self, batch_idx: int) -> torch.Tensor:
        """lambda_t * max(0, L(m_j) - L(m_i)) for this optimiser step (0, and nothing evaluated, while lambda_t
        is 0). The batch and pair depend on (seed, step) alone: every rank adds the same term."""
        assert self.landmark is not None
        trainer = self.trainer
        if trainer.max_epochs is None or trainer.max_epochs < 1:
            raise ValueError(f"the landmark weight's cosine runs over trainer.max_epochs, got {trainer.max_epochs}; "
                             "set max_epochs")
        progress = self.current_epoch + batch_idx / max(float(trainer.num_training_batches), 1.0)
        weight = self.landmark.weight(progress, trainer.max_epochs)
        self.log("landmark/weight", weight)
        if weight == 0.0:
            return torch.zeros((), device=self.device)
        x, y = self.batches.seeded_val(1, step_generator(self.seed, "landmark_batch", self.global_step))[0]
        hinge, losses = self.landmark.hinge(self.supernet, (x.to(self.device), y.to(self.device)), self.global_step)
        self.log_dict({"landmark/hinge": hinge.detach(), **{f"landmark/{k}": v for k, v in losses.items()}})
        return weight * hinge
