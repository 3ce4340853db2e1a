"""``nas-lightning compare-disturbance``: the DI-NAS section 5.3 table over several runs and seeds.

Each run's ``DisturbanceMetrics`` callback writes ``disturbance_metrics.csv`` (one row per epoch:
``acc_mean, performance_change, ktau[, gt_tau]``). Runs are grouped by a label (e.g. one method or one
alpha, several seeds); per run, performance change and KTau are averaged over the epochs from
``from_epoch`` on, and accuracy and GT-Tau are taken at the last epoch; the table gives each group's mean
and (sample) standard deviation over its runs.
"""

from __future__ import annotations

import csv
import glob
import io
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from jsonargparse import auto_cli

from nas_lightning.utils.atomic import atomic_write_csv

METRICS_FILE = "disturbance_metrics.csv"
#: Summary columns: the section 5.3 metrics, then what GT-Tau has to beat (the GT ceiling, the cost proxies).
COLUMNS = ("acc_mean", "performance_change", "ktau", "gt_tau", "gt_tau_equal_cost", "gt_ceiling", "params_tau",
           "flops_tau")
HEADINGS = ("mean acc", "performance change", "epoch KTau", "GT-Tau", "GT-Tau, equal-FLOPs pairs",
            "GT ceiling", "params tau", "FLOPs tau")


def _float(value: str | None) -> float:
    return math.nan if value in (None, "", "nan") else float(value)


def read_run(path: str | Path) -> list[dict[str, float]]:
    """The per-epoch rows of one run's ``disturbance_metrics.csv``, in epoch order."""
    rows = list(csv.DictReader(io.StringIO(Path(path).read_text())))
    if not rows or "epoch" not in rows[0]:
        raise ValueError(f"{path} is not a {METRICS_FILE} (no 'epoch' rows)")
    return sorted(({k: _float(v) for k, v in row.items()} for row in rows), key=lambda r: r["epoch"])


def summarise_run(rows: Sequence[dict[str, float]], from_epoch: int) -> dict[str, float]:
    """One run as one number per column: performance change and KTau averaged over epochs >= ``from_epoch``
    (NaN epochs, those without an earlier epoch to compare with, skipped); the others at the last epoch."""
    window = [r for r in rows if r["epoch"] >= from_epoch]
    if not window:
        raise ValueError(f"no epoch >= from_epoch={from_epoch} (last epoch: {int(rows[-1]['epoch'])})")

    def mean(key: str) -> float:
        values = [r[key] for r in window if not math.isnan(r.get(key, math.nan))]
        return statistics.fmean(values) if values else math.nan

    last = rows[-1]
    out = {key: last.get(key, math.nan) for key in COLUMNS}
    out.update(performance_change=mean("performance_change"), ktau=mean("ktau"))
    return out


def find_metrics(pattern: str) -> list[Path]:
    """``disturbance_metrics.csv`` files matched by a glob of CSV files or run directories (searched below);
    other files the glob matches (a run's log beside its directory) are ignored."""
    found: list[Path] = []
    for match in sorted(glob.glob(pattern)):
        path = Path(match)
        found += sorted(path.rglob(METRICS_FILE)) if path.is_dir() else [path] if path.suffix == ".csv" else []
    return found


def compare_disturbance(runs: list[str], from_epoch: int = 0, output: str | None = None) -> list[dict[str, object]]:
    """Print (and optionally write as CSV) the disturbance metrics of groups of runs, mean +- std over runs.

    Args:
        runs: ``LABEL=GLOB`` items; GLOB matches run directories or ``disturbance_metrics.csv`` files,
            e.g. ``'SPOS=runs/spos_s*'``. Items with the same label form one group.
        from_epoch: performance change and KTau are averaged over the epochs from this one on.
        output: a CSV of the table (one row per group, the mean and std of each metric).
    """
    groups: dict[str, list[Path]] = {}
    for item in runs:
        label, sep, pattern = item.partition("=")
        if not sep or not label or not pattern:
            raise ValueError(f"runs items are LABEL=GLOB, got {item!r}")
        files = find_metrics(pattern)
        if not files:
            raise FileNotFoundError(f"{item!r}: no {METRICS_FILE} matches {pattern!r} (add -c "
                                    "configs/disturbance/disturbance.yaml to the runs to produce it)")
        groups.setdefault(label, []).extend(files)
    table: list[dict[str, object]] = []
    for label, files in groups.items():
        per_run = [summarise_run(read_run(f), from_epoch) for f in files]
        row: dict[str, object] = {"label": label, "runs": len(per_run)}
        for key in COLUMNS:
            values = [r[key] for r in per_run]
            if any(math.isnan(v) for v in values):  # a run without that column (no GT): no figure
                row[key] = row[f"{key}_std"] = math.nan
                continue
            row[key] = statistics.fmean(values)
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        table.append(row)
    print(f"change and KTau: mean over epochs >= {from_epoch}; the rest: last epoch; mean ± std over runs\n"
          f"| run | runs | {' | '.join(HEADINGS)} |\n|{'---|' * (len(HEADINGS) + 2)}")
    for row in table:
        cells = ["-" if math.isnan(row[k]) else f"{row[k]:.3f} ± {row[k + '_std']:.3f}" for k in COLUMNS]
        print(f"| {row['label']} | {row['runs']} | " + " | ".join(cells) + " |")
    if output:
        atomic_write_csv(output, table)
        print(f"wrote {output}")
    return table


def compare_disturbance_main(argv: list[str]) -> None:
    auto_cli(compare_disturbance, args=argv, as_positional=False)
