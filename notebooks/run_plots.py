"""What the notebooks share: reading the CSV and JSON files that runs write (never checkpoints or private state)
and the plots every method's notebook draws (rank scatter, Kendall tau over epochs, the disturbance matrix).

The notebooks import it from their own folder (``notebooks/``, their working directory).
"""

import csv
import json
import math
import re
from pathlib import Path

import matplotlib.pyplot as plt

from nas_lightning.metrics.ranking_plots import descending_ranks


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def num(x):
    """A CSV cell as a float (an empty cell is NaN)."""
    return float(x) if x not in ("", None) else math.nan


def newest_folder(run_dir, pattern):
    """The newest folder under run_dir holding files that match pattern (a rerun writes a new logs/version_<n>)."""
    folders = {p.parent for p in Path(run_dir).rglob(pattern)}
    return max(folders, key=lambda p: p.stat().st_mtime) if folders else None


def newest_rows_with(run_dir, name, column):
    """The rows of the newest file called name under run_dir whose header has column (fit and validate log to
    separate version folders, so the newest metrics.csv may be validate's); [] when none has it."""
    for path in sorted(Path(run_dir).rglob(name), key=lambda p: p.stat().st_mtime, reverse=True):
        rows = read_csv(path)
        if rows and column in rows[0]:
            return rows
    return []


def rankings(run_dir):
    """Every RankingEvaluation result in run_dir: (stage, epoch, summary, per-arch rows), fit epochs first. Each
    stage comes from the newest folder holding its files (fit and validate log to separate version folders)."""
    out = []
    for stage in ("fit", "validate"):
        folder = newest_folder(run_dir, f"ranking_{stage}_epoch*.json")
        for p in folder.glob(f"ranking_{stage}_epoch*.json") if folder else []:
            epoch = re.fullmatch(rf"ranking_{stage}_epoch(\d+)\.json", p.name)
            if epoch and p.with_suffix(".csv").exists():
                out.append((stage, int(epoch[1]), json.loads(p.read_text()), read_csv(p.with_suffix(".csv"))))
    return sorted(out, key=lambda r: (r[0] != "fit", r[1]))


def rank_scatter(ax, rows, column, label, tau, mark=None):
    """One rank against GT rank, best at the top right; mark: an arch to circle (e.g. the search's pick)."""
    gt = descending_ranks([num(r["gt_accuracy"]) for r in rows])
    other = descending_ranks([num(r[column]) for r in rows])
    n = len(rows)
    ax.plot([1, n], [1, n], color="0.8", lw=1, zorder=0)
    ax.scatter(gt, other, s=16)
    for g, o, r in zip(gt, other, rows):
        if r["arch"] == mark:
            ax.scatter([g], [o], s=120, facecolors="none", edgecolors="red", label="found arch")
            ax.legend(loc="lower right")
    ax.set(
        xlabel="ground-truth rank (1 = best)",
        ylabel=f"{label} rank",
        title=f"{label}: Kendall tau {tau:.3f}",
        xlim=(n + 1, 0),
        ylim=(n + 1, 0),
    )


def plot_ranking(rows, summary, mark=None):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    rank_scatter(axes[0], rows, "inherited_accuracy", "supernet (inherited)", summary["supernet"]["kendall_tau"], mark)
    rank_scatter(axes[1], rows, "params", "params proxy", summary["proxies"]["params"]["kendall_tau"], mark)
    fig.suptitle(
        f"{summary['num_archs']} archs; GT seed-to-seed tau (the ceiling) {summary['gt_seed_to_seed_tau']:.3f}"
    )
    fig.tight_layout()
    plt.show()


def plot_tau_over_epochs(evaluations, title="Kendall tau against the GT over training"):
    fit = [(e, s) for stage, e, s, _ in evaluations if stage == "fit"]
    if not fit:
        print("no evaluations during fit (RankingEvaluation every_n_epochs > 0 writes them)")
        return
    epochs = [e + 1 for e, _ in fit]
    _fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(epochs, [s["supernet"]["kendall_tau"] for _, s in fit], "o-", label="supernet")
    ax.plot(
        epochs,
        [s["supernet"].get("kendall_tau_equal_cost", math.nan) for _, s in fit],
        "s--",
        label="supernet, equal-FLOPs pairs",
    )
    ax.plot(epochs, [s["proxies"]["params"]["kendall_tau"] for _, s in fit], ":", color="0.4", label="params proxy")
    ax.plot(
        epochs,
        [s["gt_seed_to_seed_tau"] for _, s in fit],
        "-",
        color="green",
        alpha=0.5,
        label="GT seed-to-seed (ceiling)",
    )
    ax.axhline(0, color="0.85", lw=1)
    ax.set(xlabel="epoch", ylabel="Kendall tau", title=title)
    ax.legend(fontsize=8)
    plt.show()


def plot_disturbance(run_dir):
    """DisturbanceMetrics' files: the section 5.3 metrics per epoch, and the newest Fig. 1b matrix as a heatmap."""
    folder = newest_folder(run_dir, "disturbance_metrics.csv")
    if folder is None:
        print(f"no disturbance files under {run_dir}: add -c configs/disturbance/disturbance.yaml to the fit")
        return
    metrics = read_csv(folder / "disturbance_metrics.csv")
    epochs = [int(r["epoch"]) + 1 for r in metrics]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label in (("ktau", "KTau vs the previous epoch"), ("gt_tau", "GT-Tau"), ("params_tau", "params proxy")):
        if key in metrics[0]:
            axes[0].plot(epochs, [num(r[key]) for r in metrics], "o-", label=label)
    axes[0].set(xlabel="epoch", ylabel="Kendall tau", title="ranking stability (DI-NAS section 5.3)")
    axes[0].legend(fontsize=8)
    axes[1].plot(epochs, [num(r["performance_change"]) for r in metrics], "o-")
    axes[1].set(xlabel="epoch", ylabel="mean |change| of accuracy (%)", title="performance change")
    fig.tight_layout()
    plt.show()
    matrices = sorted(folder.glob("disturbance_matrix_*.csv"), key=lambda p: p.stat().st_mtime)
    if not matrices:
        print("no disturbance matrix (DisturbanceMetrics matrix_archs > 0 writes one)")
        return
    rows = read_csv(matrices[-1])
    table = [[num(r["before"])] + [num(r[f"after_{j}"]) for j in range(len(rows))] for r in rows]
    # entry (i, j): how much training arch j changed the accuracy of arch i (DI-NAS Fig. 1b)
    change = [[t[j + 1] - t[j] for j in range(len(rows))] for t in table]
    lim = max(1e-9, max(abs(v) for row in change for v in row))
    fig, ax = plt.subplots(figsize=(5, 4.2))
    im = ax.imshow(change, cmap="RdBu", vmin=-lim, vmax=lim)
    fig.colorbar(im, label="accuracy change (%)")
    ax.set(xlabel="arch trained (one step)", ylabel="arch evaluated", title=f"disturbance: {matrices[-1].stem}")
    plt.show()
