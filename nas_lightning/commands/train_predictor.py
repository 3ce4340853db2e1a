"""``nas-lightning train-predictor``: train an accuracy predictor on a ground-truth file and save it for the
WPNAS search (WPNAS, Lin et al., arXiv:2203.02086, section 4, step 3; section 3.2; Table 2).

The results file (any ground-truth format ``load_ground_truth`` reads: ``nas-lightning acquire-gt`` or
``ground-truth`` output) is split, seeded, into ``train_size`` training and ``val_size`` held-out archs
(section 4: 170 / 30). The predictor (``kind``: the few-shot relation network or a supervised baseline, with
an encoder from ``ENCODERS``) trains on the first and is scored on the second: Kendall tau, Pearson and MSE
(Table 2). Written: the predictor file (``output``), ``<output>.metrics.json`` (settings, split, metrics,
loss per epoch), ``<output>.metrics.csv`` (one row) and ``<output>.val.csv`` (each held-out arch, its
accuracy and its prediction).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import auto_cli
from pytorch_lightning.cli import OptimizerCallable

from nas_lightning.metrics.ground_truth import GroundTruth, load_ground_truth
from nas_lightning.predictors.encoding import arch_indices
from nas_lightning.predictors.file import save_predictor
from nas_lightning.predictors.training import TrainSettings, build_predictor, fit_predictor, predictor_metrics
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.atomic import atomic_write_csv, atomic_write_json
from nas_lightning.utils.distributed import step_generator

__all__ = ["read_results", "split_archs", "train_predictor", "train_predictor_main"]


def read_results(path: str, space: SearchSpace, metric: str = "accuracy") -> GroundTruth:
    """The ground truth of ``path`` for ``space``; a file of another space (or that covers none of its archs)
    is an error naming the file and the space."""
    try:
        gt = load_ground_truth(path, space, metric=metric)
    except ValueError as error:
        if "does not belong to" in str(error) or "has no archs" in str(error):
            raise ValueError(f"results file {path} covers no arch of {type(space).__name__} as configured: "
                             f"{error}. Give the results of this space (`nas-lightning acquire-gt` or "
                             "`ground-truth` with the same space), or the space the file was made for") from None
        raise
    return gt


def split_archs(gt: GroundTruth, train_size: int, val_size: int, seed: int, path: str) -> tuple[list, list]:
    """A seeded split of the archs of ``gt`` into ``train_size`` training and ``val_size`` held-out archs."""
    if train_size < 2 or val_size < 2:
        raise ValueError(f"train_size and val_size must be >= 2, got {train_size}, {val_size}")
    n = len(gt)
    if train_size + val_size > n:
        val = max(2, round(n * val_size / (train_size + val_size)))
        raise ValueError(f"results file {path} has {n} archs, fewer than train_size + val_size = "
                         f"{train_size} + {val_size}; lower them (e.g. --train_size {n - val} --val_size {val})")
    order = torch.randperm(n, generator=step_generator(seed, "predictor-split", 0)).tolist()
    archs = gt.archs
    return [archs[i] for i in order[:train_size]], [archs[i] for i in order[train_size:train_size + val_size]]


def train_predictor(
    space: SearchSpace,
    results: str,
    output: str = "runs/predictor/predictor.pt",
    kind: Literal["few_shot", "supervised"] = "few_shot",
    encoder: str = "mlp",
    hidden: int = 64,
    num_layers: int = 2,
    heads: int = 4,
    support_size: int = 30,
    train_size: int = 170,
    val_size: int = 30,
    split_seed: int = 0,
    seed: int = 0,
    epochs: int = 100,
    batch_size: int = 32,
    optimizer: OptimizerCallable = torch.optim.Adam,
    rank_weight: float = 1.0,
    mse_weight: float = 0.0,
    margin: float = 0.1,
    metric: str = "accuracy",
) -> dict[str, Any]:
    """Train a predictor on a results file, report its held-out Kendall tau, Pearson and MSE, and save it.

    Args:
        space: the search space of the results (``--space nas_lightning.spaces.NB201Space``).
        results: the ground-truth / results file (CSV or JSON).
        output: the predictor file to write; the metrics go beside it.
        kind: ``few_shot`` (section 3.2, Fig. 2) or ``supervised`` (Table 2's baselines).
        encoder: name in ``nas_lightning.predictors.ENCODERS``: ``mlp``, ``lstm`` or ``transformer``.
        hidden, num_layers, heads: encoder width and depth, Transformer heads.
        support_size: few-shot support set (section 4: 30); must be below ``train_size``.
        train_size, val_size: the split (section 4: 170 / 30).
        split_seed: seed of the split; seed: of the weights, the batch order and the support draws.
        epochs, batch_size, optimizer: training (section 4: 100 epochs).
        rank_weight, mse_weight, margin: the loss (``nas_lightning.predictors.training``).
        metric: the results column to predict.
    """
    gt = read_results(results, space, metric)
    if kind == "few_shot" and support_size >= train_size:
        raise ValueError(f"support_size={support_size} must be smaller than train_size={train_size}: the support set "
                         "is drawn from the training archs, and at least one more arch is needed as a query")
    train, val = split_archs(gt, train_size, val_size, split_seed, results)
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, rank_weight=rank_weight, mse_weight=mse_weight,
                             margin=margin, seed=seed)
    extra = {"support_size": support_size} if kind == "few_shot" else {}
    model = build_predictor(kind, space, seed, encoder=encoder, hidden=hidden, num_layers=num_layers, heads=heads,
                            **extra)
    history = fit_predictor(model, arch_indices(space, train), gt.values(train).float(), optimizer, settings)
    predicted = model.predict(val)
    metrics = predictor_metrics(predicted, gt.values(val))
    record = {"results": str(results), "kind": kind, **model.settings, "train_size": train_size,
              "val_size": val_size, "split_seed": split_seed, "seed": seed, "epochs": epochs,
              "batch_size": batch_size, "rank_weight": rank_weight, "mse_weight": mse_weight, "margin": margin,
              **metrics}
    out = Path(output)
    save_predictor(out, model, kind, training={**record, "train_archs": [str(a) for a in train],
                                                  "val_archs": [str(a) for a in val]})
    atomic_write_json(out.with_name(out.name + ".metrics.json"),
                      {**record, "loss_per_epoch": history, "train_archs": [str(a) for a in train],
                       "val_archs": [str(a) for a in val]})
    atomic_write_csv(out.with_name(out.name + ".metrics.csv"), [record])
    atomic_write_csv(out.with_name(out.name + ".val.csv"),
                     [{"arch": str(a), "accuracy": float(t), "predicted": float(p)}
                      for a, t, p in zip(val, gt.values(val).tolist(), predicted.tolist())])
    print(f"{kind} {encoder} predictor, {train_size} train / {val_size} held-out archs of {results}: "
          f"Kendall tau {metrics['kendall_tau']:.3f}, Pearson {metrics['pearson']:.3f}, MSE {metrics['mse']:.3f}")
    print(f"wrote {out}")
    return record


def train_predictor_main(argv: list[str]) -> None:
    auto_cli(train_predictor, args=argv, as_positional=False)
