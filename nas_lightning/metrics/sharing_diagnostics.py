"""What DC-NAS's sharing-state inferences did ("Distribution Consistent Neural Architecture Search", sections 1-2;
docs/design_choices.md, "DC-NAS"): per inference round, the cluster sizes and consistency scores of every
(layer, site, op) (``consistency_scores.csv``), the sharing-state matrix of every layer as a table
(``sharing_state.csv``: the copy of every clustered (layer, site, op, cluster)) and as a heatmap
(``sharing_state_layer<d>.png``: rows the ops, columns (site, cluster), the colour the copy), and the parameter
count as copies split (``params.csv``). Files are written atomically; each CSV keeps the rows of earlier rounds
and replaces those of this round and later ones, so a resumed run rewrites what it redoes.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nas_lightning.search.sharing_update import InferenceResult
from nas_lightning.supernet.copies import CopyCount
from nas_lightning.supernet.sharing_state import SharingState
from nas_lightning.utils.atomic import atomic_write_bytes, atomic_write_csv


def score_rows(state: SharingState, result: InferenceResult, epoch: int) -> list[dict[str, Any]]:
    """One row per (layer, site, op, cluster pair i <= j): sizes, score and copies after the inference."""
    rows = []
    for r in result.records:
        k = len(r.sizes)
        for i in range(k):
            for j in range(i, k):
                rows.append({"round": state.rounds, "epoch": epoch, "layer": r.layer,
                             "decision": state.space.decisions[r.layer].name, "site": r.site,
                             "op": state.choices[r.layer][r.op], "part": r.part, "cluster_i": i, "cluster_j": j,
                             "size_i": r.sizes[i], "size_j": r.sizes[j], "score": float(r.scores[i, j]),
                             "copy_i": r.copies[i], "copy_j": r.copies[j]})
    return rows


def state_rows(state: SharingState, epoch: int) -> list[dict[str, Any]]:
    """The sharing-state table after the inference: one row per (layer, site, clustered op, cluster)."""
    rows = []
    for layer, reach in enumerate(state.layout.reach):
        for op, name in enumerate(state.choices[layer]):
            if not bool(state.clustered[layer, op]):
                continue
            for site in range(len(reach)):
                rows.extend({"round": state.rounds, "epoch": epoch, "layer": layer,
                             "decision": state.space.decisions[layer].name, "site": site, "op": name,
                             "cluster": k, "copy": int(state.table[layer, site, op, k])} for k in range(state.M))
    return rows


def params_row(state: SharingState, result: InferenceResult, count: CopyCount, in_use: int, epoch: int
               ) -> dict[str, Any]:
    return {"round": state.rounds, "epoch": epoch, "params_in_use": in_use, "params_supernet": count.supernet,
            "params_allocated": count.total, "splits": len(result.splits),
            "parts_split": sum(1 for c in state.copies_in_use().values() if c > 1)}


def summary_metrics(state: SharingState, result: InferenceResult, count: CopyCount, in_use: int
                    ) -> dict[str, float]:
    """Scalars for the logger."""
    off = [float(r.scores[i, j]) for r in result.records for i in range(len(r.sizes)) for j in range(i + 1,
                                                                                                      len(r.sizes))]
    fractions = [min(r.sizes) / max(sum(r.sizes), 1) for r in result.records]
    return {"dcnas/params_in_use": float(in_use), "dcnas/params_ratio": in_use / max(count.supernet, 1),
            "dcnas/splits": float(len(result.splits)), "dcnas/rounds": float(state.rounds),
            "dcnas/score_mean": sum(off) / len(off) if off else 1.0, "dcnas/score_min": min(off, default=1.0),
            "dcnas/smallest_cluster_fraction": min(fractions, default=1.0)}


def merge_rows(path: Path, rows: Sequence[Mapping[str, Any]], round_: int) -> list[dict[str, Any]]:
    """The rows of ``path`` from rounds before ``round_``, then ``rows``."""
    kept: list[dict[str, Any]] = []
    if path.exists():
        with path.open(newline="") as f:
            kept = [dict(r) for r in csv.DictReader(f) if int(r["round"]) < round_]
    return kept + [dict(r) for r in rows]


def layer_matrix(state: SharingState, layer: int) -> tuple[list[str], list[str], list[list[float]]]:
    """The sharing-state matrix of ``layer``: (row labels = ops, column labels = site/cluster, copies; NaN where
    the op has no weights or is not clustered)."""
    ops = state.choices[layer]
    sites = range(len(state.layout.reach[layer]))
    cols = [f"s{j}/k{k}" for j in sites for k in range(state.M)]
    matrix = [[float(state.table[layer, j, o, k]) if bool(state.clustered[layer, o]) else float("nan")
               for j in sites for k in range(state.M)] for o in range(len(ops))]
    return list(ops), cols, matrix


def plot_layer(state: SharingState, layer: int, path: Path) -> Path:
    # Figure + the Agg canvas directly: no pyplot, so no global backend switch and no GUI.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, cols, matrix = layer_matrix(state, layer)
    fig = Figure(figsize=(max(4.0, 0.35 * len(cols) + 2.5), 0.4 * len(rows) + 1.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(matrix, vmin=0, vmax=max(state.M - 1, 1), cmap="viridis", aspect="auto")
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xticks(range(len(cols)), cols, fontsize=6, rotation=90)
    ax.set_title(f"sharing state, layer {layer} ({state.space.decisions[layer].name}), round {state.rounds}",
                 fontsize=8)
    fig.colorbar(image, ax=ax, label="copy", ticks=list(range(state.M)))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(path, buf.getvalue())


def write_sharing_diagnostics(out_dir: str | Path, state: SharingState, result: InferenceResult, count: CopyCount,
                              in_use: int, epoch: int) -> dict[str, float]:
    """Write the round's files (module docstring) under ``out_dir`` and return the logger's scalars."""
    out = Path(out_dir)
    rnd = state.rounds
    atomic_write_csv(out / "consistency_scores.csv", merge_rows(out / "consistency_scores.csv",
                                                                score_rows(state, result, epoch), rnd))
    atomic_write_csv(out / "sharing_state.csv", merge_rows(out / "sharing_state.csv", state_rows(state, epoch), rnd))
    atomic_write_csv(out / "params.csv", merge_rows(out / "params.csv",
                                                    [params_row(state, result, count, in_use, epoch)], rnd))
    for layer, row in enumerate(state.layout.reach):
        if row:
            plot_layer(state, layer, out / f"sharing_state_layer{layer}.png")
    return summary_metrics(state, result, count, in_use)
