"""Training and evaluating a predictor (Lin et al., WPNAS, arXiv:2203.02086, section 3.2 and Table 2).

A plain, single-process loop rather than a Lightning ``Trainer``: the data are a few hundred (arch,
accuracy) pairs held in two tensors, a step is a few small matrix products, and 100 epochs take seconds on
one CPU core; DDP would only split a batch of 32 archs. The loop is seeded end to end (initial weights,
batch order, support draws), so the saved file is a function of the data and the settings, and every
process that loads it predicts the same numbers (docs/design_choices.md, "WPNAS").

Loss: the pairwise hinge ranking loss of ReNAS (Xu et al., CVPR 2021; WPNAS cites it for its predictors)
on the standardised predictions of a batch, ``mean over pairs with t_i > t_j of max(0, margin - (p_i - p_j)
/ std)``, plus ``mse_weight`` times the MSE of the standardised predictions (off by default: the paper
trains with the ranking loss alone).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from nas_lightning.metrics.ranking import ranking_metrics
from nas_lightning.predictors.predictor import PREDICTORS, ArchPredictor, FewShotPredictor
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.distributed import step_generator

__all__ = ["TrainSettings", "build_predictor", "fit_predictor", "pairwise_hinge_loss", "predictor_metrics"]

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


@dataclass(frozen=True)
class TrainSettings:
    """Args:
        epochs: passes over the training archs (each arch is a query once per epoch).
        batch_size: queries per optimiser step.
        rank_weight, mse_weight: weights of the ranking loss and of the MSE.
        margin: of the hinge ranking loss, in standard deviations of the training accuracy.
        seed: of the weights, the batch order and the support draws.
    """

    epochs: int = 100
    batch_size: int = 32
    rank_weight: float = 1.0
    mse_weight: float = 0.0
    margin: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"epochs must be >= 1 and batch_size >= 2, got {self.epochs}, {self.batch_size}")
        if self.rank_weight < 0 or self.mse_weight < 0 or self.rank_weight + self.mse_weight == 0:
            raise ValueError(f"rank_weight and mse_weight must be >= 0 and not both 0, got {self.rank_weight}, "
                             f"{self.mse_weight}")


def build_predictor(kind: str, space: SearchSpace, seed: int, **settings: int | str) -> ArchPredictor:
    """``PREDICTORS[kind](space, **settings)`` with initial weights drawn from ``seed`` (global RNG untouched)."""
    cls = PREDICTORS.get(kind)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(space, **settings)


def pairwise_hinge_loss(predicted: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over the pairs (i, j) with ``target_i > target_j`` of ``max(0, margin - (predicted_i -
    predicted_j))``; 0 when every target ties."""
    better = target[:, None] > target[None, :]
    if not better.any():
        return predicted.sum() * 0.0
    gaps = predicted[:, None] - predicted[None, :]
    return torch.clamp(margin - gaps[better], min=0.0).mean()


def fit_predictor(model: ArchPredictor, indices: torch.Tensor, accuracy: torch.Tensor, optimizer: OptimizerFactory,
                  settings: TrainSettings) -> list[float]:
    """Train ``model`` on index-encoded archs ([n, L]) and their accuracies ([n], percent); returns the mean
    loss of each epoch. A few-shot model keeps a seeded support set drawn from these archs at the end."""
    n = len(indices)
    accuracy = accuracy.float()
    support = model.settings.get("support_size", 0)
    if isinstance(model, FewShotPredictor) and support >= n:
        raise ValueError(f"support_size={support} needs at least {support + 1} training archs (the support set "
                         f"plus one query), the training set has {n}; lower support_size or raise train_size")
    batch = min(settings.batch_size, n - support)
    model.set_normalisation(accuracy)
    std = model.target_std
    opt = optimizer(model.parameters())
    model.train()
    history = []
    for epoch in range(settings.epochs):
        gen = step_generator(settings.seed, "predictor-epoch", epoch)
        order = torch.randperm(n, generator=gen)
        losses = []
        for queries in order.split(batch):
            if len(queries) < 2:
                continue  # a single query has no pair to rank
            pred = model.training_predictions(indices, accuracy, queries, gen)
            target = accuracy[queries]
            loss = settings.rank_weight * pairwise_hinge_loss(pred / std, target / std, settings.margin)
            if settings.mse_weight:
                loss = loss + settings.mse_weight * torch.mean(((pred - target) / std) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        history.append(sum(losses) / max(len(losses), 1))
    model.finalise(indices, accuracy, step_generator(settings.seed, "predictor-support", 0))
    model.eval()
    return history


def predictor_metrics(predicted: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Table 2's metrics on held-out archs: Kendall tau (tau-b) and Pearson (torchmetrics, through
    ``ranking_metrics``), Spearman, and the MSE in percent squared."""
    p, t = predicted.detach().double().cpu(), target.detach().double().cpu()
    m = ranking_metrics(p, t, k=())
    return {"kendall_tau": m["kendall_tau"], "pearson": m["pearson"], "spearman": m["spearman"],
            "mse": float(torch.mean((p - t) ** 2))}
