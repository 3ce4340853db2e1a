"""The last step of ``make quickstart``: how well the supernet ranked, and how good the arch it found is.

Reads only what the run wrote (the ranking callback's ``ranking_validate_epoch0.{csv,json}`` and rank scatter, the
search's ``top_archs.json``) and the ground-truth CSV, and prints the ranking table: Kendall tau and Spearman of the
supernet's inherited-weight ranking of every GT arch, beside the params proxy and the GT's own seed-to-seed tau (the
ceiling), the tau over pairs of equal params, and the GT rank of the arch the search found.

    python scripts/quickstart_report.py --run_dir runs/quickstart \
        --ground_truth configs/ground_truth/results/chain_fashion_mnist_all.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from nas_lightning.metrics import ranking_metrics
from nas_lightning.metrics.search_exports import gt_rank
from nas_lightning.utils.atomic import atomic_write_text


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV, past the '#' lines a ground-truth file starts with (the command that made it)."""
    with path.open(newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def report(run_dir: Path, ground_truth: Path) -> str:
    ranking = run_dir / "ranking"
    summary_path, rows_path = ranking / "ranking_validate_epoch0.json", ranking / "ranking_validate_epoch0.csv"
    top_path = run_dir / "search" / "top_archs.json"
    for path in (summary_path, rows_path, top_path, ground_truth):
        if not path.is_file():
            raise SystemExit(f"quickstart_report: {path} is missing; run scripts/quickstart.sh (it writes the run's "
                             "files) or pass --run_dir/--ground_truth")
    summary: dict[str, Any] = json.loads(summary_path.read_text())
    rows = read_rows(rows_path)
    top = json.loads(top_path.read_text())
    gt_rows = read_rows(ground_truth)
    accuracy = {r["arch"]: float(r["accuracy"]) for r in gt_rows}
    n_gt = len(accuracy)

    s, params, ceiling = summary["supernet"], summary["proxies"]["params"], summary["gt_seed_to_seed_tau"]
    # The equal-cost tau of the summary groups archs by FLOPs; the quickstart reports it over equal params.
    equal = ranking_metrics([float(r["inherited_accuracy"]) for r in rows], [float(r["gt_accuracy"]) for r in rows],
                            costs=[float(r["params"]) for r in rows])
    found = top[0]["arch"]
    if found not in accuracy:
        raise SystemExit(f"quickstart_report: the found arch {found} is not in {ground_truth}")
    best = max(accuracy, key=accuracy.get)
    by_gt = sorted(accuracy.values(), reverse=True)
    seeds = next(r for r in gt_rows if r["arch"] == found)
    seed_text = ", ".join(f"{float(v):.2f}" for k, v in seeds.items() if k.startswith("accuracy_seed") and v)
    scatter = ranking / "rank_scatter_validate_epoch0.png"
    lines = [
        f"ranking of {summary['num_archs']} archs against the stand-alone GT ({ground_truth})",
        "                                      Kendall tau  Spearman",
        f"  supernet (inherited weights)           {s['kendall_tau']:>7.3f}   {s['spearman']:>7.3f}",
        f"  params proxy                           {params['kendall_tau']:>7.3f}   {params['spearman']:>7.3f}",
        f"  GT seed-to-seed (the ceiling)          {ceiling:>7.3f}",
        f"  supernet over equal-params pairs       {equal['kendall_tau_equal_cost']:>7.3f}"
        f"   ({equal['equal_cost_pairs']:.0f} pairs)",
        f"found arch (evolution, {top_path}):",
        f"  {found}  {top[0]['params']:,} params",
        f"  GT accuracy {accuracy[found]:.2f}% (seeds {seed_text}): GT rank {gt_rank(found, accuracy):.0f} of {n_gt}"
        f"  (GT best {accuracy[best]:.2f}%, median {by_gt[n_gt // 2]:.2f}%, worst {by_gt[-1]:.2f}%)",
        f"  the supernet's top arch of all {summary['num_archs']}: GT rank {s['top1_gt_rank']:.0f}; "
        f"the params proxy's: GT rank {params['top1_gt_rank']:.0f}",
        f"rank scatter: {scatter}" + ("" if scatter.is_file() else " (not written: the ranking callback draws it)"),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run_dir", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--ground_truth", type=Path,
                        default=Path("configs/ground_truth/results/chain_fashion_mnist_all.csv"))
    args = parser.parse_args(argv)
    text = report(args.run_dir, args.ground_truth)
    print(text)
    atomic_write_text(args.run_dir / "report.txt", text + "\n")


if __name__ == "__main__":
    sys.exit(main())
