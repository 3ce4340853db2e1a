"""The side-by-side table of a study: every method's ranking against ground truth, its cost, and what it has to beat.

One run's figures come from the per-arch CSV its ranking evaluation wrote (``arch, gt_accuracy,
inherited_accuracy, params, flops``): Kendall tau-b, Spearman, tau over the pairs of equal params, precision@5
and the GT rank of the supernet's top arch (``ranking_metrics``, checked against scipy); and, for a method whose
run exports the arch its own search settles on, that arch's GT rank (``search_exports``). A method's row is the mean
and sample std of each figure over its seeds. Beside them: the GT's seed-to-seed tau (the ceiling) and the params
and FLOPs proxies on the same archs (Sciuto et al., arXiv:1902.08142, argue for this comparison;
docs/design_choices.md, "Comparing methods").
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nas_lightning.metrics.ranking import cost_proxy_metrics, ranking_metrics
from nas_lightning.metrics.ranking_plots import descending_ranks
from nas_lightning.utils.atomic import atomic_write_bytes, atomic_write_csv, atomic_write_text

__all__ = ["FIGURES", "method_row", "proxy_rows", "read_ranking_csv", "run_figures", "save_plots", "write_table"]

#: (key, heading, digits) of each figure of a run, in table order.
FIGURES: tuple[tuple[str, str, int], ...] = (
    ("kendall_tau", "GT Kendall tau", 3),
    ("spearman", "Spearman", 3),
    ("kendall_tau_equal_params", "tau, equal-params pairs", 3),
    ("precision@5", "P@5", 2),
    ("top1_gt_rank", "GT rank of top arch", 1),
    ("search_gt_rank", "GT rank of search's arch", 1),
    ("wall_s", "wall time (s)", 0),
    ("peak_mib", "peak memory (MiB)", 0),
)
#: Figures of the ranking variance across seeds and epochs (``nas_lightning.metrics.ranking_variance``).
VARIANCE_FIGURES: tuple[tuple[str, str, int], ...] = (
    ("seed_tau", "tau between seeds", 3),
    ("top1_differs", "top-1 differs (seed pairs)", 2),
    ("topk_differs", "top-k replaced (seed pairs)", 2),
    ("epoch_tau", "tau between epochs", 3),
    ("top1_change_rate", "top-1 changes per epoch", 2),
    ("topk_change", "top-k replaced per epoch", 2),
)


def read_ranking_csv(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a per-arch ranking CSV, numbers as floats (``params``/``flops`` as ints)."""
    path = Path(path)
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    needed = {"arch", "gt_accuracy", "inherited_accuracy", "params", "flops"}
    if not rows or not needed <= set(rows[0]):
        raise ValueError(f"{path} is not a per-arch ranking CSV (needs the columns {sorted(needed)})")
    return [{"arch": r["arch"], "gt_accuracy": float(r["gt_accuracy"]),
             "inherited_accuracy": float(r["inherited_accuracy"]), "params": int(float(r["params"])),
             "flops": int(float(r["flops"]))} for r in rows]


def run_figures(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The ranking figures of one run from its per-arch rows: tau, Spearman, tau over the pairs of equal params
    (NaN when no two archs have equal params), precision@5 (NaN under 5 archs) and the GT rank of the arch the
    supernet ranks first."""
    inherited = [float(r["inherited_accuracy"]) for r in rows]
    target = [float(r["gt_accuracy"]) for r in rows]
    m = ranking_metrics(inherited, target, k=(5,), costs=[float(r["params"]) for r in rows])
    return {"kendall_tau": m["kendall_tau"], "spearman": m["spearman"],
            "kendall_tau_equal_params": m["kendall_tau_equal_cost"], "equal_params_pairs": m["equal_cost_pairs"],
            "precision@5": m.get("precision@5", math.nan), "top1_gt_rank": m["top1_gt_rank"],
            "top1_arch": max(rows, key=lambda r: float(r["inherited_accuracy"]))["arch"], "num_archs": len(rows)}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def method_row(name: str, runs: Sequence[Mapping[str, Any]], variance: Mapping[str, Any] | None = None,
               ) -> dict[str, Any]:
    """One method over its seeds: per figure, the mean and the sample std (0 with one seed), plus the ranking
    variance figures when ``variance`` (a ``ranking_variance`` summary) is given."""
    row: dict[str, Any] = {"method": name, "seeds": len(runs)}
    for key, _, _ in FIGURES:
        row[key], row[f"{key}_std"] = _mean_std([float(r.get(key, math.nan)) for r in runs])
    v = variance or {}
    runs_v, epochs_v = v.get("across_runs", {}), v.get("across_epochs", {})
    row["seed_tau"], row["seed_tau_std"] = runs_v.get("kendall_tau_mean", math.nan), runs_v.get("kendall_tau_std",
                                                                                               math.nan)
    # one figure over all seed pairs or all runs' epochs: no spread over seeds to show
    for key, source, name in (("top1_differs", runs_v, "top1_differs_fraction"),
                              ("topk_differs", runs_v, "topk_differs_fraction"),
                              ("epoch_tau", epochs_v, "consecutive_tau_mean_mean"),
                              ("top1_change_rate", epochs_v, "top1_change_rate_mean"),
                              ("topk_change", epochs_v, "topk_change_mean_mean")):
        row[key], row[f"{key}_std"] = source.get(name, math.nan), math.nan
    row["top1_archs"] = " ".join(sorted({str(r.get("top1_arch", "")) for r in runs}))
    row["search_archs"] = " ".join(sorted({str(r["search_arch"]) for r in runs if r.get("search_arch")}))
    return row


def proxy_rows(rows: Sequence[Mapping[str, Any]], ceiling: float) -> list[dict[str, Any]]:
    """The rows a method has to beat, on the archs of ``rows``: the GT's seed-to-seed tau (the ceiling; only its
    tau column) and the params and FLOPs proxies (a larger net ranked higher)."""
    target = [float(r["gt_accuracy"]) for r in rows]
    params = [float(r["params"]) for r in rows]
    proxies = cost_proxy_metrics(target, {"params": params, "flops": [float(r["flops"]) for r in rows]}, k=(5,))
    out: list[dict[str, Any]] = [{"method": "GT seed-to-seed (ceiling)", "kendall_tau": ceiling}]
    for name, m in proxies.items():
        equal = ranking_metrics([float(r[name]) for r in rows], target, k=(5,), costs=params)
        out.append({"method": f"{name} proxy", "kendall_tau": m["kendall_tau"], "spearman": m["spearman"],
                    "kendall_tau_equal_params": equal["kendall_tau_equal_cost"],
                    "precision@5": m.get("precision@5", math.nan), "top1_gt_rank": m["top1_gt_rank"]})
    return out


def _cell(row: Mapping[str, Any], key: str, digits: int) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    std = row.get(f"{key}_std")
    text = f"{value:.{digits}f}"
    return f"{text} ± {std:.{digits}f}" if std is not None and not math.isnan(std) and row.get("seeds", 0) > 1 \
        else text


def markdown_table(rows: Sequence[Mapping[str, Any]], cost: str, with_variance: bool,
                   notes: Sequence[str] = ()) -> str:
    """The table as Markdown: mean ± sample std over seeds; ``-`` where a figure does not apply; ``notes`` below."""
    figures = FIGURES + (VARIANCE_FIGURES if with_variance else ())
    lines = [f"Cost per run: {cost}. Mean ± sample std over seeds.", "",
             "| method | seeds | " + " | ".join(h for _, h, _ in figures) + " |",
             "|---|---|" + "---|" * len(figures)]
    for row in rows:
        cells = [_cell(row, key, digits) for key, _, digits in figures]
        lines.append(f"| {row['method']} | {row.get('seeds', '-')} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, *(["", *notes] if notes else [])]) + "\n"


def write_table(out: str | Path, rows: Sequence[Mapping[str, Any]], cost: str, with_variance: bool,
                notes: Sequence[str] = ()) -> tuple[Path, Path]:
    """``study_table.csv`` (every column, NaN as empty) and ``study_table.md`` in ``out``, atomically."""
    out = Path(out)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    flat = [{k: "" if (v := row.get(k)) is None or (isinstance(v, float) and math.isnan(v)) else v for k in keys}
            for row in rows]
    return (atomic_write_csv(out / "study_table.csv", flat),
            atomic_write_text(out / "study_table.md", markdown_table(rows, cost, with_variance, notes)))


def save_plots(out: str | Path, per_method: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
               rows: Sequence[Mapping[str, Any]], cost: str) -> list[Path]:
    """``rank_scatter.png`` (per method: GT rank against inherited rank, every seed) and ``tau_bars.png`` (each
    method's GT Kendall tau, mean ± std over seeds, with the ceiling and the proxies as lines) in ``out``."""
    # Figure + the Agg canvas directly: no pyplot, so no global backend switch and no GUI.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out, written = Path(out), []
    names = list(per_method)
    cols = min(len(names), 4)
    fig = Figure(figsize=(3.2 * cols, 3.2 * math.ceil(len(names) / cols)))
    FigureCanvasAgg(fig)
    for n, name in enumerate(names):
        ax = fig.add_subplot(math.ceil(len(names) / cols), cols, n + 1)
        for s, run in enumerate(per_method[name]):
            gt = descending_ranks([float(r["gt_accuracy"]) for r in run])
            inherited = descending_ranks([float(r["inherited_accuracy"]) for r in run])
            ax.scatter(gt, inherited, s=10, alpha=0.7, label=f"seed {s}")
        ax.set_title(name, fontsize=9)
        if len(per_method[name]) > 1:
            ax.legend(fontsize=6)
        ax.set_xlabel("GT rank")
        ax.set_ylabel("inherited rank")
    fig.suptitle(f"rank scatter ({cost})", fontsize=9)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    written.append(atomic_write_bytes(out / "rank_scatter.png", buf.getvalue()))

    methods = [r for r in rows if r["method"] in per_method]
    fig = Figure(figsize=(max(5.0, 0.9 * len(methods) + 3), 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(range(len(methods)), [r["kendall_tau"] for r in methods],
           yerr=[0.0 if math.isnan(r.get("kendall_tau_std", math.nan)) else r["kendall_tau_std"] for r in methods],
           capsize=3, color="C0")
    ax.set_xticks(range(len(methods)), [r["method"] for r in methods], rotation=30, ha="right")
    for n, row in enumerate(r for r in rows if r["method"] not in per_method):
        if not math.isnan(row.get("kendall_tau", math.nan)):
            ax.axhline(row["kendall_tau"], color=f"C{n + 1}", linestyle="--", label=row["method"])
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_ylabel("GT Kendall tau")
    ax.set_title(f"GT Kendall tau per method ({cost})", fontsize=9)
    ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    written.append(atomic_write_bytes(out / "tau_bars.png", buf.getvalue()))
    return written
