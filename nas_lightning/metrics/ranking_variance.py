"""Ranking variance across runs and across epochs (Zhang et al., "Deeper Insights into Weight Sharing in NAS",
arXiv:2001.01431, finding (1) of its abstract: the best archs of different runs, and even of consecutive epochs of
one run, differ widely).

The input is what the ranking and disturbance callbacks already write for a fixed set of archs: per run, the
inherited-weight accuracy of each arch at one or more epochs (``AccuracyRun``, read from a
``disturbance_history.csv`` or from ``ranking_*.csv`` files). The measurements:

* across runs (each run at one epoch, by default its last): Kendall tau-b between every pair of runs (the tau
  matrix; mean and sample std over the pairs), how often the top-1 arch differs between two runs and which share
  of the top-k does, and the spread of each arch's rank (sample std over runs);
* across epochs of one run: Kendall tau-b between consecutive epochs and the performance change, computed by the
  same ``epoch_metrics`` as the ``DisturbanceMetrics`` callback (DI-NAS section 5.3), how often the top-1 arch
  and the top-k set change from one epoch to the next, and each arch's rank spread over the epochs;
* with GT in the files: GT-Tau of every run (``gt_tau``).

Ranks are 1 for the best arch; tied accuracies share their average rank (scipy's ``rankdata``). The top-k of an
epoch breaks ties by the order of the common archs (the first run's order), so it is deterministic. Every
Kendall tau here is tau-b (torchmetrics through ``nas_lightning.metrics.ranking``), as ``scipy.stats.kendalltau``
computes it.
"""

from __future__ import annotations

import csv
import io
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nas_lightning.metrics.disturbance import epoch_ktau, epoch_metrics, gt_tau
from nas_lightning.utils.atomic import atomic_write_bytes

__all__ = [
    "AccuracyRun",
    "RankingVariance",
    "common_archs",
    "epoch_changes",
    "load_run",
    "rank_spread",
    "rank_table",
    "ranking_variance",
    "read_disturbance_history",
    "read_ranking_csvs",
    "save_plots",
    "tau_matrix",
    "top_k_changes",
]

HISTORY_FILE = "disturbance_history.csv"
_EPOCH_COLUMN = re.compile(r"epoch_(\d+)$")
_RANKING_NAME = re.compile(r"ranking_(?P<stage>[a-z_]+?)_epoch(?P<epoch>\d+)\.csv$")


@dataclass
class AccuracyRun:
    """One run: the accuracy (%) of each arch at each recorded epoch.

    ``accuracy[i, j]`` is the accuracy of ``archs[i]`` at ``epochs[j]``; ``gt`` maps archs to GT accuracy where
    the files carry it; ``source`` names the file(s) it was read from, for error messages."""

    label: str
    source: str
    archs: list[str]
    epochs: list[int]
    accuracy: Tensor  # (n_archs, n_epochs), float64
    gt: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if self.accuracy.shape != (len(self.archs), len(self.epochs)):
            raise ValueError(f"{self.source}: accuracy has shape {tuple(self.accuracy.shape)}, expected "
                             f"({len(self.archs)}, {len(self.epochs)})")
        if len(set(self.archs)) != len(self.archs):
            raise ValueError(f"{self.source}: an arch appears twice")
        if not torch.isfinite(self.accuracy).all():
            raise ValueError(f"{self.source}: an accuracy is missing, NaN or infinite")

    def at(self, epoch: int | None, archs: Sequence[str]) -> Tensor:
        """Accuracies of ``archs`` (in that order) at ``epoch`` (None: the last recorded one)."""
        if epoch is None:
            j = len(self.epochs) - 1
        elif epoch in self.epochs:
            j = self.epochs.index(epoch)
        else:
            raise ValueError(f"{self.source} has no epoch {epoch} (it has epochs {self.epochs})")
        row = {a: i for i, a in enumerate(self.archs)}
        return self.accuracy[[row[a] for a in archs], j]

    def restrict(self, archs: Sequence[str]) -> Tensor:
        """The (len(archs), n_epochs) table of ``archs``, in that order."""
        row = {a: i for i, a in enumerate(self.archs)}
        return self.accuracy[[row[a] for a in archs]]


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    if not rows or "arch" not in rows[0]:
        raise ValueError(f"{path} has no rows with an 'arch' column")
    return rows


def _float(value: str | None, path: Path, what: str) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {what} is not a number: {value!r}") from None


def _gt_of(rows: list[dict[str, str]], path: Path) -> dict[str, float] | None:
    if "gt_accuracy" not in rows[0] or any(r["gt_accuracy"] in ("", None) for r in rows):
        return None
    return {r["arch"]: _float(r["gt_accuracy"], path, f"gt_accuracy of {r['arch']}") for r in rows}


def read_disturbance_history(path: str | Path, label: str | None = None) -> AccuracyRun:
    """A ``disturbance_history.csv`` (columns ``arch, [gt_accuracy,] epoch_0, epoch_1, ...``) as one run."""
    path = Path(path)
    rows = _rows(path)
    columns = sorted(((int(m.group(1)), c) for c in rows[0] if (m := _EPOCH_COLUMN.match(c))), key=lambda t: t[0])
    if not columns:
        raise ValueError(f"{path} has no 'epoch_<n>' columns: not a {HISTORY_FILE}")
    acc = torch.tensor([[_float(r[c], path, f"{c} of {r['arch']}") for _, c in columns] for r in rows],
                       dtype=torch.float64)
    return AccuracyRun(label or str(path), str(path), [r["arch"] for r in rows], [e for e, _ in columns], acc,
                       _gt_of(rows, path))


def read_ranking_csvs(paths: Sequence[str | Path], label: str | None = None) -> AccuracyRun:
    """``ranking_<stage>_epoch<n>.csv`` files of one run (columns ``arch, gt_accuracy, inherited_accuracy, ...``)
    as one run with one epoch per file; a file whose name carries no epoch counts as epoch 0. The files must
    cover the same archs."""
    if not paths:
        raise ValueError("no ranking CSV files given")
    by_epoch: dict[int, Path] = {}
    for p in map(Path, paths):
        m = _RANKING_NAME.search(p.name)
        epoch = int(m.group("epoch")) if m else 0
        if epoch in by_epoch:
            raise ValueError(f"{p} and {by_epoch[epoch]} are both epoch {epoch} of one run")
        by_epoch[epoch] = p
    epochs = sorted(by_epoch)
    tables: list[dict[str, float]] = []
    archs: list[str] = []
    gt: dict[str, float] | None = None
    for e in epochs:
        p = by_epoch[e]
        rows = _rows(p)
        if "inherited_accuracy" not in rows[0]:
            raise ValueError(f"{p} has no 'inherited_accuracy' column: not a ranking CSV")
        tables.append({r["arch"]: _float(r["inherited_accuracy"], p, f"inherited_accuracy of {r['arch']}")
                       for r in rows})
        archs = archs or [r["arch"] for r in rows]
        gt = gt or _gt_of(rows, p)
        if set(tables[-1]) != set(archs):
            raise ValueError(f"{p} covers other archs than {by_epoch[epochs[0]]}: the epochs of a run must rank "
                             "the same archs")
    acc = torch.tensor([[t[a] for t in tables] for a in archs], dtype=torch.float64)
    source = str(by_epoch[epochs[0]]) if len(epochs) == 1 else f"{by_epoch[epochs[0]].parent}/ranking_*.csv"
    return AccuracyRun(label or source, source, archs, epochs, acc, gt)


def load_run(path: str | Path, label: str | None = None, stage: str = "fit") -> AccuracyRun:
    """One run from a ``disturbance_history.csv``, a ``ranking_*.csv``, or a directory holding either (the
    history is preferred; of the ranking CSVs, those of ``stage`` when there are any, all otherwise)."""
    path = Path(path)
    if path.is_file():
        return read_disturbance_history(path, label) if path.name == HISTORY_FILE or _history_like(path) \
            else read_ranking_csvs([path], label)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    histories = sorted(path.rglob(HISTORY_FILE))
    if len(histories) > 1:
        raise ValueError(f"{path} holds {len(histories)} {HISTORY_FILE} files ({histories[0]}, {histories[1]}, "
                         "...): name each run's directory or file")
    if histories:
        return read_disturbance_history(histories[0], label or str(path))
    rankings = sorted(p for p in path.rglob("ranking_*.csv") if _RANKING_NAME.search(p.name))
    if not rankings:
        raise FileNotFoundError(f"{path} holds neither a {HISTORY_FILE} nor ranking_<stage>_epoch<n>.csv files "
                                "(add -c configs/disturbance/disturbance.yaml or -c configs/ranking/ranking.yaml)")
    own = [p for p in rankings if _RANKING_NAME.search(p.name).group("stage") == stage]  # type: ignore[union-attr]
    return read_ranking_csvs(own or rankings, label or str(path))


def _history_like(path: Path) -> bool:
    header = path.read_text().split("\n", 1)[0].split(",")
    return any(_EPOCH_COLUMN.match(c) for c in header)


def common_archs(runs: Sequence[AccuracyRun]) -> list[str]:
    """The archs every run covers, in the first run's order; a ``ValueError`` names the first run that leaves
    fewer than two (a ranking needs two archs)."""
    if not runs:
        raise ValueError("no runs given")
    common = list(runs[0].archs)
    for run in runs[1:]:
        own = set(run.archs)
        kept = [a for a in common if a in own]
        if len(kept) < 2:
            raise ValueError(f"{run.source} shares {len(kept)} arch(s) with {runs[0].source}"
                             + ("" if run is runs[1] else " and the runs before it")
                             + "; the runs must rank the same fixed set of archs (at least 2 in common)")
        common = kept
    if len(common) < 2:
        raise ValueError(f"{runs[0].source} ranks {len(common)} arch; a ranking needs at least 2")
    return common


# --- the metrics -------------------------------------------------------------------------------------------------
def _table(acc: Tensor | Sequence[Sequence[float]]) -> Tensor:
    t = acc.detach().to("cpu", torch.float64) if isinstance(acc, Tensor) else torch.as_tensor(acc, dtype=torch.float64)
    if t.dim() != 2 or t.shape[0] < 2:
        raise ValueError(f"need an (n_archs >= 2, n_columns) table of accuracies, got shape {tuple(t.shape)}")
    return t


def rank_table(acc: Tensor | Sequence[Sequence[float]]) -> Tensor:
    """(n_archs, n_columns) ranks of each column's archs, 1 = highest accuracy; ties share their average rank."""
    t = _table(acc)
    higher = (t[None, :, :] > t[:, None, :]).sum(dim=1)  # [i, c]: archs strictly better than i in column c
    equal = (t[None, :, :] == t[:, None, :]).sum(dim=1)  # including i itself
    return 1.0 + higher.double() + (equal.double() - 1.0) / 2.0


def rank_spread(acc: Tensor | Sequence[Sequence[float]]) -> Tensor:
    """Sample standard deviation (ddof 1) of each arch's rank over the columns (runs or epochs)."""
    ranks = rank_table(acc)
    if ranks.shape[1] < 2:
        raise ValueError("the rank spread needs at least two runs or epochs")
    return ranks.std(dim=1, correction=1)


def tau_matrix(acc: Tensor | Sequence[Sequence[float]]) -> Tensor:
    """(n_columns, n_columns) Kendall tau-b between the rankings of every two columns (1 on the diagonal; NaN
    where a column ranks every arch equal)."""
    t = _table(acc)
    n = t.shape[1]
    out = torch.eye(n, dtype=torch.float64)
    for a, b in combinations(range(n), 2):
        out[a, b] = out[b, a] = epoch_ktau(t[:, a], t[:, b])
    return out


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def _top(column: Tensor, k: int) -> list[int]:
    return torch.sort(column, descending=True, stable=True).indices[:k].tolist()  # ties: the lower index first


def top_k_changes(before: Tensor, after: Tensor, k: int) -> tuple[bool, int]:
    """Whether the top-1 arch differs between two rankings of the same archs, and how many of the top-k of
    ``after`` were not in the top-k of ``before``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    top_b, top_a = _top(before, k), _top(after, k)
    return top_b[0] != top_a[0], len(set(top_a) - set(top_b))


def epoch_changes(run: AccuracyRun, archs: Sequence[str], k: int, from_epoch: int = 0) -> list[dict[str, Any]]:
    """One row per recorded epoch >= ``from_epoch`` of ``run`` (on ``archs``): its top-1 arch, the section 5.3
    metrics against the previous recorded epoch (``ktau``, ``performance_change``: ``epoch_metrics``, as the
    ``DisturbanceMetrics`` callback computes them) and whether the top-1 / how much of the top-k changed."""
    table = run.restrict(archs)
    kept = [j for j, e in enumerate(run.epochs) if e >= from_epoch]
    history = {i: table[:, j].tolist() for i, j in enumerate(kept)}  # consecutive recorded epochs: interval 1
    rows: list[dict[str, Any]] = []
    for i, j in enumerate(kept):
        metrics = epoch_metrics(history, i, 1)
        row: dict[str, Any] = {"run": run.label, "epoch": run.epochs[j], "top1_arch": archs[_top(table[:, j], 1)[0]],
                               "ktau_vs_previous": metrics["ktau"],
                               "performance_change": metrics["performance_change"]}
        if i == 0:
            row.update(top1_changed=math.nan, topk_changed=math.nan)
        else:
            changed, entered = top_k_changes(table[:, kept[i - 1]], table[:, j], min(k, len(archs)))
            row.update(top1_changed=float(changed), topk_changed=float(entered))
        rows.append(row)
    return rows


@dataclass
class RankingVariance:
    """The result of ``ranking_variance``: ``summary`` (JSON-ready), per-arch rows, per-epoch rows, and the tau
    matrix between runs (labels ``run_labels``)."""

    summary: dict[str, Any]
    arch_rows: list[dict[str, Any]]
    epoch_rows: list[dict[str, Any]]
    run_labels: list[str]
    run_taus: Tensor


def ranking_variance(runs: Sequence[AccuracyRun], k: int = 5, epoch: int | None = None,
                     from_epoch: int = 0) -> RankingVariance:
    """Ranking variance of several runs (each at ``epoch``, None: its last) and of the epochs of each run
    (those >= ``from_epoch``), over the archs all runs cover.

    Needs at least two runs, or one run with at least two epochs; raises ``ValueError`` naming the file
    otherwise, and when a run shares fewer than two archs with the others.
    """
    if not runs:
        raise ValueError("no runs given")
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    if len(runs) == 1 and len([e for e in runs[0].epochs if e >= from_epoch]) < 2:
        raise ValueError(f"{runs[0].source} is a single run with a single epoch (>= {from_epoch}): ranking "
                         "variance needs at least two runs, or a run with at least two epochs")
    archs = common_archs(runs)
    kk = min(k, len(archs))
    summary: dict[str, Any] = {"num_runs": len(runs), "num_archs": len(archs), "top_k": kk,
                               "epoch": "last" if epoch is None else epoch, "from_epoch": from_epoch}
    arch_rows: list[dict[str, Any]] = [{"arch": a} for a in archs]
    gts = [r.gt for r in runs if r.gt is not None]
    if gts and all(a in gts[0] for a in archs):
        for row in arch_rows:
            row["gt_accuracy"] = gts[0][row["arch"]]

    # across runs
    labels = [r.label for r in runs]
    across = torch.stack([r.at(epoch, archs) for r in runs], dim=1) if len(runs) > 1 else None
    taus = tau_matrix(across) if across is not None else torch.ones(1, 1, dtype=torch.float64)
    if across is not None:
        pairs = list(combinations(range(len(runs)), 2))
        pair_taus = [float(taus[a, b]) for a, b in pairs]
        top1_diff, topk_new = zip(*(top_k_changes(across[:, a], across[:, b], kk) for a, b in pairs))
        tops = [archs[_top(across[:, j], 1)[0]] for j in range(len(runs))]
        mean, std = _mean_std(pair_taus)
        summary["across_runs"] = {
            "kendall_tau_mean": mean, "kendall_tau_std": std, "kendall_tau_min": min(pair_taus),
            "top1_archs": tops, "distinct_top1": len(set(tops)),
            "top1_differs_fraction": statistics.fmean(float(d) for d in top1_diff),
            "topk_differs_fraction": statistics.fmean(n / kk for n in topk_new),
            "rank_std_mean": float(rank_spread(across).mean()),
        }
        ranks, spread = rank_table(across), rank_spread(across)
        for i, row in enumerate(arch_rows):
            row.update(mean_rank_runs=float(ranks[i].mean()), rank_std_runs=float(spread[i]),
                       best_rank_runs=float(ranks[i].min()), worst_rank_runs=float(ranks[i].max()))
        if len(gts) == len(runs):
            gt_acc = [gts[0][a] for a in archs]
            summary["across_runs"]["gt_tau"] = dict(zip(labels, (gt_tau(across[:, j], gt_acc)
                                                                 for j in range(len(runs))), strict=True))

    # across epochs, per run
    epoch_rows: list[dict[str, Any]] = []
    per_run: dict[str, dict[str, float]] = {}
    epoch_spreads: list[Tensor] = []
    for run in runs:
        rows = epoch_changes(run, archs, kk, from_epoch)
        epoch_rows += rows
        if len(rows) < 2:
            continue
        later = rows[1:]
        mean, std = _mean_std([r["ktau_vs_previous"] for r in later])
        cols = [j for j, e in enumerate(run.epochs) if e >= from_epoch]
        spread = rank_spread(run.restrict(archs)[:, cols])
        epoch_spreads.append(spread)
        per_run[run.label] = {
            "epochs": len(rows), "consecutive_tau_mean": mean, "consecutive_tau_std": std,
            "top1_change_rate": statistics.fmean(r["top1_changed"] for r in later),
            "topk_change_mean": statistics.fmean(r["topk_changed"] for r in later) / kk,
            "distinct_top1": len({r["top1_arch"] for r in rows}), "rank_std_mean": float(spread.mean()),
            "performance_change_mean": statistics.fmean(r["performance_change"] for r in later),
        }
    if per_run:
        summary["across_epochs"] = {
            "per_run": per_run,
            **{f"{key}_mean": statistics.fmean(v[key] for v in per_run.values())
               for key in ("consecutive_tau_mean", "top1_change_rate", "topk_change_mean", "rank_std_mean")},
        }
        mean_spread = torch.stack(epoch_spreads).mean(dim=0)
        for i, row in enumerate(arch_rows):
            row["rank_std_epochs"] = float(mean_spread[i])
    return RankingVariance(summary, arch_rows, epoch_rows, labels, taus)


# --- plots -------------------------------------------------------------------------------------------------------
def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def save_plots(result: RankingVariance, out: str | Path) -> list[Path]:
    """``rank_spread.png`` (each arch's mean rank, with its best and worst, over runs or epochs), ``tau_matrix.png``
    (with two runs or more) and ``topk_changes.png`` (with a run of two epochs or more) in ``out``, atomically."""
    # Figure + the Agg canvas directly: no pyplot, so no global backend switch and no GUI.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out)
    written: list[Path] = []
    key = "runs" if "rank_std_runs" in result.arch_rows[0] else "epochs"
    if key == "runs" or "rank_std_epochs" in result.arch_rows[0]:
        rows = result.arch_rows
        fig = Figure(figsize=(max(6.0, min(0.18 * len(rows) + 2, 20.0)), 4.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        if key == "runs":
            order = sorted(range(len(rows)), key=lambda i: rows[i]["mean_rank_runs"])
            mean = [rows[i]["mean_rank_runs"] for i in order]
            low = [mean[n] - rows[i]["best_rank_runs"] for n, i in enumerate(order)]
            high = [rows[i]["worst_rank_runs"] - mean[n] for n, i in enumerate(order)]
            ax.errorbar(range(len(order)), mean, yerr=[low, high], fmt="o", ms=3, capsize=2, label="best-worst")
            ax.bar(range(len(order)), [rows[i]["rank_std_runs"] for i in order], alpha=0.3, color="C1",
                   label="rank std")
            ax.set_title(f"rank of each arch over {result.summary['num_runs']} runs")
        else:
            order = sorted(range(len(rows)), key=lambda i: rows[i]["rank_std_epochs"])
            ax.bar(range(len(order)), [rows[i]["rank_std_epochs"] for i in order], color="C1", label="rank std")
            ax.set_title("rank std of each arch over epochs (mean over runs)")
        ax.set_xlabel("arch (sorted)")
        ax.set_ylabel("rank (1 = best)")
        ax.legend()
        written.append(atomic_write_bytes(out / "rank_spread.png", _png(fig)))
    n = len(result.run_labels)
    if n > 1:
        fig = Figure(figsize=(min(3.0 + 0.6 * n, 14.0) + 1.5, min(3.0 + 0.6 * n, 14.0)))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        image = ax.imshow(result.run_taus.numpy(), cmap="viridis", vmin=-1, vmax=1)
        fig.colorbar(image, ax=ax, label="Kendall tau")
        names = [Path(label).name or label for label in result.run_labels]
        ax.set_xticks(range(n), names, rotation=90)
        ax.set_yticks(range(n), names)
        if n <= 12:
            for a in range(n):
                for b in range(n):
                    ax.text(b, a, f"{float(result.run_taus[a, b]):.2f}", ha="center", va="center", fontsize=7)
        ax.set_title("Kendall tau between runs")
        written.append(atomic_write_bytes(out / "tau_matrix.png", _png(fig)))
    series: dict[str, list[dict[str, Any]]] = {}
    for row in result.epoch_rows:
        series.setdefault(row["run"], []).append(row)
    series = {label: rows for label, rows in series.items() if len(rows) > 1}
    if series:
        fig = Figure(figsize=(8, 6))
        FigureCanvasAgg(fig)
        ax_k, ax_t = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2, sharex=None)
        for n_run, (label, rows) in enumerate(series.items()):
            epochs = [r["epoch"] for r in rows[1:]]
            name = Path(label).name or label
            (line,) = ax_k.plot(epochs, [r["topk_changed"] for r in rows[1:]], marker="o", ms=3, label=name)
            changed = [e for e, r in zip(epochs, rows[1:]) if r["top1_changed"] == 1.0]
            # top-1 changes as crosses below the axis, one row per run
            ax_k.scatter(changed, [-0.3 * (n_run + 1)] * len(changed), marker="x", color=line.get_color())
            ax_t.plot(epochs, [r["ktau_vs_previous"] for r in rows[1:]], marker="o", ms=3, label=name)
        ax_k.set_ylabel(f"new archs in top-{result.summary['top_k']}")
        ax_k.set_title("top-k changes between consecutive epochs (x: top-1 changed)")
        ax_t.set_ylabel("Kendall tau vs previous epoch")
        ax_t.set_xlabel("epoch")
        if len(series) <= 10:
            ax_k.legend(fontsize=7)
        written.append(atomic_write_bytes(out / "topk_changes.png", _png(fig)))
    return written
