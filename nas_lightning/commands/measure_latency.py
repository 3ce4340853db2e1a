"""``nas-lightning measure-latency``: measure a PC-NAS latency lookup table on this machine's device.

Measure once, on the device the search targets (PC-NAS: a GPU at batch 16), then give the file to
``PCNAS(latency_table=...)``: every DDP rank of the search reads the same numbers, and the training
machines never time anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from jsonargparse import auto_cli

from nas_lightning.latency.table import LatencyTable
from nas_lightning.spaces.base import SearchSpace


def latency_range(table: LatencyTable) -> tuple[float, float]:
    """(fastest, slowest) arch latency the table predicts: the fixed parts plus each layer's min / max op."""
    layers = table.table["layers"]
    return (table.fixed_ms + sum(min(entries.values()) for entries in layers),
            table.fixed_ms + sum(max(entries.values()) for entries in layers))


def measure_latency_table(space: SearchSpace, output: str, batch_size: int = 16, device: str = "cpu",
                          repeats: int = 20, warmup: int = 5, timer: Literal["wall", "thread"] = "wall",
                          overwrite: bool = False) -> dict[str, Any]:
    """Measure every (layer, op) of ``space`` and its fixed parts, and write the table to ``output`` (JSON).

    Args:
        space: a space with per-layer ops, e.g. ``--space nas_lightning.spaces.MobileNetSpace``.
        output: the table file (written atomically).
        batch_size: images per timed batch (PC-NAS: 16).
        device: ``cpu``, ``cuda``, ``cuda:1``.
        repeats, warmup: timed and untimed runs per entry (an entry is the median of the timed runs).
        timer: ``wall`` clock, or ``thread`` CPU time (steadier on a shared CPU).
        overwrite: measure again over an existing file.
    """
    if Path(output).exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite true to measure it again")
    table = LatencyTable(space, path=None, batch_size=batch_size, device=device, repeats=repeats, warmup=warmup,
                         timer=timer)
    table.save(output)
    fastest, slowest = latency_range(table)
    meta = table.metadata
    print(f"{meta['device']}, batch {batch_size}: fixed parts {table.fixed_ms:.3f} ms; archs from {fastest:.3f} to "
          f"{slowest:.3f} ms\nwrote {output}")
    return table.table


def measure_latency_main(argv: list[str]) -> None:
    auto_cli(measure_latency_table, args=argv, as_positional=False)
