"""How well a supernet ranks archs: inherited-weight accuracy against ground truth, as a report.

``RankingEvaluator`` loads a GT table once, picks the archs to rank (those of an arch file, or a
seeded subset of the GT's archs, always ones the GT covers) and turns their inherited-weight accuracy
into a report: Kendall tau, Spearman, Pearson, precision@k and the GT rank of the supernet's top arch
(``ranking_metrics``), each beside its ceiling (the GT's own seed-to-seed tau) and what the params and
FLOPs proxies achieve on the same archs, with tau over the pairs of equal FLOPs too. Sciuto et al.
(arXiv:1902.08142) argue for this comparison; the choices are in (docs/design_choices.md, "Ranking").
Everything here needs no Trainer; the ``RankingEvaluation`` callback only says when and on which
accuracies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.loggers import Logger

from nas_lightning.metrics.ground_truth import GroundTruth, check_coverage, load_ground_truth
from nas_lightning.metrics.ranking import cost_proxy_metrics, ranking_metrics
from nas_lightning.metrics.ranking_plots import ranked_rows, write_rank_scatter
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.arch_file import read_arch_file
from nas_lightning.utils.atomic import atomic_write_csv, atomic_write_json
from nas_lightning.utils.distributed import step_generator
from nas_lightning.utils.wandb_logging import log_table_and_image

__all__ = ["RankingEvaluator", "evaluation_due", "format_report", "logged_metrics", "publish_ranking", "ranking_report",
           "select_archs"]


def ranking_report(space: SearchSpace, gt: GroundTruth, archs: list[Arch], inherited: list[float],
                   k: tuple[int, ...] = (1, 5, 10)) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics of ``inherited`` against the GT of ``archs``, with the ceiling and cost proxies, and the
    per-arch rows (best inherited accuracy first)."""
    target = [gt.accuracy[a] for a in archs]
    params = [float(space.params(a)) for a in archs]
    flops = [float(space.flops(a)) for a in archs]
    summary: dict[str, Any] = {
        "num_archs": len(archs),
        "supernet": ranking_metrics(inherited, target, k=k, costs=flops),
        "proxies": cost_proxy_metrics(target, {"params": params, "flops": flops}),
        "gt_seed_to_seed_tau": gt.restrict(archs).seed_to_seed_tau(),  # the ceiling on these archs
    }
    order = sorted(range(len(archs)), key=lambda i: -inherited[i])
    rows = [{"arch": str(archs[i]), "gt_accuracy": target[i], "inherited_accuracy": inherited[i],
             "params": int(params[i]), "flops": int(flops[i])} for i in order]
    return summary, rows


def format_report(summary: dict[str, Any]) -> str:
    """The summary of ``ranking_report`` as a small table: supernet, proxies, ceiling."""
    s, p = summary["supernet"], summary["proxies"]
    ceiling = summary["gt_seed_to_seed_tau"]
    lines = [
        f"ranking over {summary['num_archs']} archs      Kendall tau  Spearman  Pearson",
        f"  supernet (inherited)      {s['kendall_tau']:>10.3f}  {s['spearman']:>8.3f}  {s['pearson']:>7.3f}",
    ]
    for name, m in p.items():
        lines.append(f"  {name + ' proxy':<24}  {m['kendall_tau']:>10.3f}  {m['spearman']:>8.3f}  {m['pearson']:>7.3f}")
    lines.append(f"  GT seed-to-seed (ceiling)  {ceiling:>9.3f}" if not math.isnan(ceiling)
                 else "  GT seed-to-seed (ceiling)        n/a (one seed)")
    lines.append(f"  tau over equal-FLOPs pairs: {s.get('kendall_tau_equal_cost', float('nan')):.3f} "
                 f"({s.get('equal_cost_pairs', 0)} pairs); GT rank of the supernet's top arch: {s['top1_gt_rank']}")
    return "\n".join(lines)


def logged_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The scalars to log under ``rank/``: the supernet's figures (NaN ones left out), each proxy's
    Kendall tau, and the ceiling when the GT has seeds."""
    logged = {f"rank/{name}": v for name, v in summary["supernet"].items() if not math.isnan(v)}
    logged.update({f"rank/{p}_kendall_tau": m["kendall_tau"] for p, m in summary["proxies"].items()})
    if not math.isnan(summary["gt_seed_to_seed_tau"]):
        logged["rank/gt_seed_to_seed_tau"] = summary["gt_seed_to_seed_tau"]
    return {k: float(v) for k, v in logged.items()}


def publish_ranking(out: str | Path, tag: str, summary: dict[str, Any], rows: list[dict[str, Any]],
                    loggers: Sequence[Logger], step: int) -> dict[str, Path]:
    """Write one evaluation's files to ``out``: ``ranking_<tag>.csv`` (per arch), ``ranking_<tag>.json`` (the
    summary) and ``rank_scatter_<tag>.png`` (``write_rank_scatter``); and, to each ``WandbLogger`` among
    ``loggers``, the per-arch rows with their GT, inherited and params ranks as a ``wandb.Table``
    (``rank/archs``) and the scatter as a ``wandb.Image`` (``rank/scatter``) at ``step``. Global rank 0 only."""
    csv_path, json_path = RankingEvaluator.write(out, tag, summary, rows)
    png = write_rank_scatter(Path(out) / f"rank_scatter_{tag}.png", rows, summary)
    caption = f"{tag}: Kendall tau {summary['supernet']['kendall_tau']:.3f} over {summary['num_archs']} archs"
    log_table_and_image(loggers, ranked_rows(rows), "rank/archs", png, "rank/scatter", step, caption)
    return {"csv": csv_path, "json": json_path, "scatter": png}


def evaluation_due(fitting: bool, epoch: int, max_epochs: int | None, every_n_epochs: int) -> bool:
    """Whether a validation epoch ranks: always outside ``fit``; during it after every n-th epoch
    (``every_n_epochs`` 0: never) and after the last one."""
    if not fitting:
        return True
    last = max_epochs not in (None, -1) and epoch + 1 >= max_epochs
    return last or (every_n_epochs > 0 and (epoch + 1) % every_n_epochs == 0)


def select_archs(gt: GroundTruth, wanted: Sequence[Arch], max_archs: int | None, seed: int,
                 source: str | Path) -> list[Arch]:
    """The archs of ``wanted`` that ``gt`` covers (an error naming ``source`` if none), cut to a seeded
    subset of ``max_archs`` in their order; the same on every rank and every run with this seed."""
    covered = check_coverage(gt, wanted, source)
    if max_archs is not None and len(covered) > max_archs:
        perm = torch.randperm(len(covered), generator=step_generator(seed, "ranking", 0))
        covered = [covered[i] for i in sorted(perm[:max_archs].tolist())]
    return covered


class RankingEvaluator:
    """One GT table and the archs ranked against it; reports and writes each evaluation.

    Args:
        ground_truth: GT file: CSV ``arch,accuracy``, JSON, or a NATS-Bench API file.
        archs_file: rank only these archs (a file as ``read_arch_file`` reads it); the GT must cover them.
        max_archs: a seeded subset of at most this many archs (None: all).
        seed: seed of that subset.
        k: precision@k values.
        metric, nats_dataset: forwarded to ``load_ground_truth``.
    """

    def __init__(self, ground_truth: str, archs_file: str | None = None, max_archs: int | None = 100, seed: int = 0,
                 k: Sequence[int] = (1, 5, 10), metric: str = "accuracy", nats_dataset: str = "cifar10") -> None:
        if max_archs is not None and max_archs < 2:
            raise ValueError(f"max_archs must be >= 2 (a ranking needs two archs) or None, got {max_archs}")
        self.ground_truth, self.archs_file, self.max_archs, self.seed = ground_truth, archs_file, max_archs, seed
        self.k, self.metric, self.nats_dataset = tuple(k), metric, nats_dataset
        self.gt: GroundTruth | None = None
        self.archs: list[Arch] = []
        self.last_summary: dict[str, Any] | None = None

    def prepare(self, space: SearchSpace) -> list[Arch]:
        """Load the GT and choose the archs, once; later calls return the same archs."""
        if self.gt is None:
            self.gt = load_ground_truth(self.ground_truth, space, metric=self.metric, nats_dataset=self.nats_dataset)
            wanted = read_arch_file(self.archs_file, space) if self.archs_file else self.gt.archs
            self.archs = select_archs(self.gt, wanted, self.max_archs, self.seed, self.ground_truth)
        return self.archs

    def report(self, space: SearchSpace, inherited: Sequence[float],
               **context: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """``ranking_report`` of the archs' ``inherited`` accuracies (in ``self.archs`` order); ``context``
        (epoch, stage, ...) is added to the summary, which is kept as ``last_summary``."""
        if self.gt is None:
            raise RuntimeError("RankingEvaluator.prepare(space) must run before report")
        if len(inherited) != len(self.archs):
            raise ValueError(f"need one accuracy per arch ({len(self.archs)}), got {len(inherited)}")
        summary, rows = ranking_report(space, self.gt, self.archs, list(inherited), self.k)
        summary.update(context)
        self.last_summary = summary
        return summary, rows

    @staticmethod
    def write(out: str | Path, tag: str, summary: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[Path, Path]:
        """``ranking_<tag>.csv`` (per arch) and ``ranking_<tag>.json`` (the summary) in ``out``, atomically."""
        out = Path(out)
        csv_path = atomic_write_csv(out / f"ranking_{tag}.csv", rows)
        return csv_path, atomic_write_json(out / f"ranking_{tag}.json", summary)
