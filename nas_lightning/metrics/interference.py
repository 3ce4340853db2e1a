"""The interference experiment of "Deeper Insights into Weight Sharing in NAS" (Zhang et al., arXiv:2001.01431,
finding (3) of its abstract: interference between child models is a main cause of the ranking variance).

Two archs A and B (or two groups of archs) are trained in alternation, one optimiser step each: A, B, A, B, ...
Around every step, the validation loss of the arch just trained ("own") and of the other side ("other": the
mean over its group) is measured before and after the step. This runs twice from the same initial weights and
on the same batches:

* ``shared``: A and B are paths of one supernet (one optimiser): a step of A moves every weight A shares with B;
* ``separate``: A and B each train their own copy of the supernet (their own optimiser): no weight is shared,
  so a step of A leaves B's loss exactly where it was.

The change of the other side's loss over a step of the shared run is the interference; the separate run is its
control (zero up to nothing: the other copy is not touched). Losses are mean cross-entropy on fixed validation
batches, evaluated by the one inherited-weight evaluator (``evaluate_archs``: BN on batch statistics, or
recalibrated on ``calibration`` batches), which leaves the networks' state as it found it. Within a group the
archs take turns (round robin), and in ``separate`` mode a group shares weights within itself only.
"""

from __future__ import annotations

import copy
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from nas_lightning.evaluation.inherited import Batch, evaluate_archs
from nas_lightning.metrics.disturbance import OptimizerFactory, _train_step
from nas_lightning.spaces.arch import Arch
from nas_lightning.supernet.base import Supernet
from nas_lightning.utils.atomic import atomic_write_bytes, atomic_write_csv

__all__ = ["MODES", "interference", "interference_summary", "save_interference"]

Mode = Literal["shared", "separate"]
MODES: tuple[Mode, ...] = ("shared", "separate")
SIDES = ("A", "B")


def _mean_loss(net: Supernet, archs: Sequence[Arch], val_batches: Sequence[Batch],
               calibration: Sequence[Batch]) -> float:
    return float(evaluate_archs(net, list(archs), val_batches, calibration).mean_loss.double().mean())


def interference(supernet: Supernet, group_a: Sequence[Arch], group_b: Sequence[Arch],
                 train_batches: Sequence[Batch], val_batches: Sequence[Batch], optimizer_factory: OptimizerFactory,
                 steps: int, modes: Sequence[Mode] = MODES, calibration: Sequence[Batch] = (),
                 label_smoothing: float = 0.0) -> list[dict[str, Any]]:
    """Train ``group_a`` and ``group_b`` in alternation for ``steps`` rounds (one step of A, then one of B, per
    round) in each of ``modes``, on deep copies of ``supernet`` (which is left untouched), and return one row
    per optimiser step:

    ``mode, step, round, trained, trained_arch, own_loss_before, own_loss_after, other_loss_before,
    other_loss_after, other_loss_change`` (``trained``: ``A`` or ``B``; own loss: the arch just trained; other
    loss: the mean over the other group).

    Step s (counting A's and B's steps together) trains on ``train_batches[s % len(train_batches)]`` in every
    mode, so the modes differ only in what is shared.
    """
    groups = {"A": list(group_a), "B": list(group_b)}
    if not groups["A"] or not groups["B"]:
        raise ValueError(f"both groups need an arch, got {len(groups['A'])} and {len(groups['B'])}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not train_batches or not val_batches:
        raise ValueError(f"need train and val batches, got {len(train_batches)} and {len(val_batches)}")
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"modes must be among {MODES}, got {list(modes)}")
    rows: list[dict[str, Any]] = []
    # Training needs autograd, also when called from a validation hook (inference mode).
    with torch.inference_mode(False), torch.enable_grad():
        for mode in modes:
            shared = copy.deepcopy(supernet)
            nets = {"A": shared, "B": shared if mode == "shared" else copy.deepcopy(supernet)}
            for net in {id(n): n for n in nets.values()}.values():
                for p in net.parameters():
                    p.grad = None
            opts = {side: optimizer_factory(nets[side].parameters()) for side in SIDES} if mode == "separate" \
                else dict.fromkeys(SIDES, optimizer_factory(shared.parameters()))
            step = 0
            for rnd in range(steps):
                for side, other in (("A", "B"), ("B", "A")):
                    arch = groups[side][rnd % len(groups[side])]
                    own_before = _mean_loss(nets[side], [arch], val_batches, calibration)
                    other_before = _mean_loss(nets[other], groups[other], val_batches, calibration)
                    nets[side].train()
                    _train_step(nets[side], arch, train_batches[step % len(train_batches)], opts[side],
                                label_smoothing, None, 1, None)
                    own_after = _mean_loss(nets[side], [arch], val_batches, calibration)
                    other_after = _mean_loss(nets[other], groups[other], val_batches, calibration)
                    rows.append({"mode": mode, "step": step, "round": rnd, "trained": side, "trained_arch": str(arch),
                                 "own_loss_before": own_before, "own_loss_after": own_after,
                                 "other_loss_before": other_before, "other_loss_after": other_after,
                                 "other_loss_change": other_after - other_before})
                    step += 1
    return rows


def interference_summary(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per mode: the mean |change| of the other side's loss per step (the interference), its mean signed
    change, the mean change of the trained arch's own loss, and the fraction of steps that raised the other
    side's loss."""
    out: dict[str, dict[str, float]] = {}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        own = [r for r in rows if r["mode"] == mode]
        n = len(own)
        out[mode] = {
            "steps": float(n),
            "other_loss_abs_change": sum(abs(r["other_loss_change"]) for r in own) / n,
            "other_loss_change": sum(r["other_loss_change"] for r in own) / n,
            "own_loss_change": sum(r["own_loss_after"] - r["own_loss_before"] for r in own) / n,
            "other_loss_raised_fraction": sum(r["other_loss_change"] > 0 for r in own) / n,
        }
    return out


def _plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    # Figure + the Agg canvas directly: no pyplot, so no global backend switch and no GUI.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig = Figure(figsize=(9, 3.2 * len(modes) + 0.5))
    FigureCanvasAgg(fig)
    for i, mode in enumerate(modes):
        ax = fig.add_subplot(len(modes), 1, i + 1)
        own = [r for r in rows if r["mode"] == mode]
        color = {"A": "C0", "B": "C1"}  # one colour per evaluated side
        for side, other in (("A", "B"), ("B", "A")):
            # the other side's loss across each step of ``side``: a segment from before to after (flat: no
            # interference)
            xs, ys = [], []
            for r in own:
                if r["trained"] == side:
                    xs += [r["step"], r["step"] + 1, float("nan")]
                    ys += [r["other_loss_before"], r["other_loss_after"], float("nan")]
            ax.plot(xs, ys, color=color[other], label=f"val loss of {other} across steps of {side}")
            own_x = [r["step"] + 1 for r in own if r["trained"] == side]
            own_y = [r["own_loss_after"] for r in own if r["trained"] == side]
            ax.plot(own_x, own_y, "o", ms=3, color=color[side], label=f"val loss of {side} after its own step")
        ax.set_title(f"{mode}: {title}")
        ax.set_ylabel("val loss")
        ax.legend(fontsize=7)
    ax.set_xlabel("optimiser step (A and B alternating)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())


def save_interference(rows: Sequence[dict[str, Any]], stem: str | os.PathLike[str],
                      title: str = "interference between two archs (arXiv:2001.01431)") -> tuple[Path, Path]:
    """Write ``<stem>.csv`` (the rows of ``interference``) and a plot ``<stem>.png``, atomically."""
    stem = Path(stem)
    csv_path = atomic_write_csv(stem.with_name(stem.name + ".csv"), list(rows))
    png_path = stem.with_name(stem.name + ".png")
    _plot(rows, png_path, title)
    return csv_path, png_path
