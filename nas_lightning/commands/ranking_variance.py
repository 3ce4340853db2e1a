"""``nas-lightning ranking-variance``: how much the supernet's ranking of a fixed set of archs varies between
runs (seeds) and between consecutive epochs of one run (Zhang et al., arXiv:2001.01431, finding (1)).

Reads what the callbacks write (``disturbance_history.csv`` of ``DisturbanceMetrics``, or the
``ranking_<stage>_epoch<n>.csv`` files of ``RankingEvaluation``), calls
``nas_lightning.metrics.ranking_variance`` and writes, in ``output_dir``:

* ``ranking_variance.json``: the summary (Kendall tau between runs, mean ± std over pairs; the tau between
  consecutive epochs; how often the top-1 and the top-k change; the mean rank std; GT-Tau per run with GT);
* ``ranking_variance_archs.csv``: per arch, its mean, best and worst rank and rank std over runs, and its rank std
  over epochs (mean over runs);
* ``ranking_variance_epochs.csv``: per run and epoch, the top-1 arch, the tau and performance change against the
  previous epoch, whether the top-1 changed (1/0) and how many archs entered the top-k;
* ``ranking_variance_tau.csv``: the tau matrix between runs;
* ``rank_spread.png``, ``tau_matrix.png``, ``topk_changes.png``;

and logs the summary and the plots to Weights & Biases when ``wandb_project`` is given (``WANDB_MODE=offline``
or ``wandb_mode: offline`` works without an account).
"""

from __future__ import annotations

import glob
import math
from pathlib import Path
from typing import Any

from jsonargparse import auto_cli

from nas_lightning.metrics.ranking_variance import AccuracyRun, RankingVariance, load_run, ranking_variance, save_plots
from nas_lightning.utils.atomic import atomic_write_csv, atomic_write_json


def _runs(items: list[str], stage: str) -> list[AccuracyRun]:
    runs: list[AccuracyRun] = []
    for item in items:
        label, sep, pattern = item.partition("=")
        if not sep:
            label, pattern = "", item
        # a glob's other matches (a run's log beside its directory) are ignored; no match: load_run says so
        matches = [m for m in sorted(glob.glob(pattern)) if Path(m).is_dir() or m.endswith(".csv")] or [pattern]
        for match in matches:
            name = label if label and len(matches) == 1 else f"{label}:{match}" if label else match
            runs.append(load_run(match, name, stage))
    return runs


def _log_wandb(result: RankingVariance, plots: list[Path], project: str, name: str | None, mode: str | None,
               out: Path) -> None:
    import wandb

    flat: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            flat[f"ranking_variance/{prefix}"] = float(value)

    walk("", result.summary)
    run = wandb.init(project=project, name=name, mode=mode, dir=str(out), job_type="ranking-variance",
                     config={"runs": result.run_labels})
    try:
        run.log({**flat, **{f"ranking_variance/{p.stem}": wandb.Image(str(p)) for p in plots}})
        run.summary.update(flat)
    finally:
        run.finish()


def ranking_variance_command(runs: list[str], output_dir: str = "runs/ranking_variance", top_k: int = 5,
                             epoch: int | None = None, from_epoch: int = 0, stage: str = "fit",
                             wandb_project: str | None = None, wandb_name: str | None = None,
                             wandb_mode: str | None = None) -> RankingVariance:
    """Ranking variance across runs and epochs of a fixed set of archs.

    Args:
        runs: one item per run (or a glob matching several): a run directory, its ``disturbance_history.csv``
            or a ``ranking_*.csv``; ``LABEL=PATH`` names it. Every run must rank the same archs (at least two
            in common). One run with several epochs gives only the across-epochs figures.
        output_dir: where the CSVs, the JSON summary and the PNGs go.
        top_k: size of the top set whose changes are counted.
        epoch: the epoch at which runs are compared (None: each run's last).
        from_epoch: the across-epochs figures use the epochs from this one on.
        stage: which ranking CSVs of a run directory count (``fit``: those written during training).
        wandb_project: also log the summary and the plots to this W&B project.
        wandb_name: the W&B run name.
        wandb_mode: ``online``, ``offline`` or ``disabled`` (None: W&B's default, e.g. ``WANDB_MODE``).
    """
    loaded = _runs(runs, stage)
    result = ranking_variance(loaded, top_k, epoch, from_epoch)
    out = Path(output_dir)
    atomic_write_json(out / "ranking_variance.json", result.summary)
    atomic_write_csv(out / "ranking_variance_archs.csv", result.arch_rows)
    atomic_write_csv(out / "ranking_variance_epochs.csv", result.epoch_rows)
    atomic_write_csv(out / "ranking_variance_tau.csv",
                     [{"run": a, **{b: float(result.run_taus[i, j]) for j, b in enumerate(result.run_labels)}}
                      for i, a in enumerate(result.run_labels)])
    plots = save_plots(result, out)
    s = result.summary
    print(f"ranking variance of {s['num_archs']} archs, {s['num_runs']} run(s):")
    if "across_runs" in s:
        r = s["across_runs"]
        print(f"  across runs: Kendall tau {r['kendall_tau_mean']:.3f} ± {r['kendall_tau_std']:.3f} "
              f"(min {r['kendall_tau_min']:.3f}); {r['distinct_top1']} distinct top-1 archs; top-1 differs in "
              f"{r['top1_differs_fraction']:.0%} of run pairs, top-{s['top_k']} in {r['topk_differs_fraction']:.0%}; "
              f"mean rank std {r['rank_std_mean']:.2f}")
    if "across_epochs" in s:
        e = s["across_epochs"]
        print(f"  across epochs: consecutive tau {e['consecutive_tau_mean_mean']:.3f}; top-1 changes at "
              f"{e['top1_change_rate_mean']:.0%} of epochs; {e['topk_change_mean_mean']:.0%} of the top-{s['top_k']} "
              f"replaced per epoch; mean rank std {e['rank_std_mean_mean']:.2f}")
    print(f"wrote {out}/ranking_variance.json, ranking_variance_*.csv and {len(plots)} plot(s)")
    if wandb_project:
        _log_wandb(result, plots, wandb_project, wandb_name, wandb_mode, out)
    return result


def ranking_variance_main(argv: list[str]) -> None:
    auto_cli(ranking_variance_command, args=argv, as_positional=False)
