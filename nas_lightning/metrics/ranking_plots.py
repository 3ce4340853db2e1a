"""The rank scatter of a ranking report: where each arch's inherited-weight rank and its params rank fall against
its ground-truth rank. A supernet that ranks well puts its points on the diagonal; the params panel beside it
shows what the cheapest proxy achieves on the same archs (Sciuto et al., arXiv:1902.08142, compare a supernet's
ranking with such baselines; docs/design_choices.md, "Ranking").

Ranks count from 1 (the highest accuracy, or the most parameters: the params proxy guesses that bigger is better)
and tied values share the mean of their ranks, as ``scipy.stats.rankdata(-x, method="average")`` gives them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from nas_lightning.utils.atomic import atomic_write_bytes

__all__ = ["RANK_COLUMNS", "descending_ranks", "ranked_rows", "write_rank_scatter"]

#: Column of a report row -> the column of its rank that ``ranked_rows`` adds.
RANK_COLUMNS = {"gt_accuracy": "gt_rank", "inherited_accuracy": "inherited_rank", "params": "params_rank"}


def descending_ranks(values: Sequence[float]) -> list[float]:
    """Rank 1 for the largest value; equal values share the mean of the ranks they span."""
    x = torch.as_tensor(list(values), dtype=torch.float64)
    if x.numel() and not torch.isfinite(x).all():
        raise ValueError(f"cannot rank non-finite values: {[v for v in values if not math.isfinite(float(v))]}")
    # Rank of each value = (number of larger values) + (1 + number of equal values) / 2, vectorised over pairs.
    larger = (x.unsqueeze(0) > x.unsqueeze(1)).sum(1).double()
    equal = (x.unsqueeze(0) == x.unsqueeze(1)).sum(1).double()
    return (larger + (1 + equal) / 2).tolist()


def ranked_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The per-arch rows of ``ranking_report`` with ``gt_rank``, ``inherited_rank`` and ``params_rank`` added."""
    ranks = {rank: descending_ranks([float(row[column]) for row in rows]) for column, rank in RANK_COLUMNS.items()}
    return [{**row, **{rank: ranks[rank][i] for rank in ranks}} for i, row in enumerate(rows)]


def write_rank_scatter(path: str | Path, rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> Path:
    """A PNG (matplotlib Agg) of inherited rank against GT rank, and params rank against GT rank beside it, each
    titled with its Kendall tau from ``summary`` (a ``ranking_report`` summary); written atomically."""
    # Figure + the Agg canvas directly: no pyplot, so no global backend switch and no GUI.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if len(rows) < 2:
        raise ValueError(f"a rank scatter needs at least 2 archs, got {len(rows)}")
    table = ranked_rows(rows)
    n = len(table)
    panels = (("inherited_rank", "supernet (inherited weights)", summary["supernet"]["kendall_tau"]),
              ("params_rank", "params proxy", summary["proxies"]["params"]["kendall_tau"]))
    fig = Figure(figsize=(9.0, 4.2))
    FigureCanvasAgg(fig)
    for i, (column, name, tau) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        ax.plot([1, n], [1, n], color="0.75", linewidth=1, zorder=0)
        ax.scatter([r["gt_rank"] for r in table], [r[column] for r in table], s=18)
        ax.set(xlabel="ground-truth rank (1 = best)", ylabel=f"{name} rank", title=f"{name}: Kendall tau {tau:.3f}",
               xlim=(0, n + 1), ylim=(0, n + 1))
        ax.invert_xaxis()
        ax.invert_yaxis()
    ceiling = summary.get("gt_seed_to_seed_tau", float("nan"))
    fig.suptitle(f"{n} archs; GT seed-to-seed tau {ceiling:.3f}" if not math.isnan(ceiling) else f"{n} archs")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(path, buf.getvalue())
