"""The arch a method's own search settles on, read from the file its run writes, and that arch's GT rank.

A supernet's top arch among the GT's archs judges every method on the same footing; this is the other half of
"the found arch": what the method itself would hand over. Each export file is written by one method or search:

- ``wpnas_arch.json`` (WPNAS, ``PolicyStep``): the argmax of p(A | alpha);
- ``controller_archs.json`` (DI-NAS, ``ControllerStep``): the controller's argmax;
- ``final_pool.json`` (PC-NAS, ``PoolShrinking``): the best completed member of the final pool;
- ``top_archs.json`` (``EvolutionSearch``): the best arch of the evolution.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SEARCH_EXPORTS", "SearchResult", "gt_rank", "search_result"]

#: export file name -> how to read its arch string from the parsed JSON.
SEARCH_EXPORTS: dict[str, Callable[[Any], str]] = {
    "wpnas_arch.json": lambda d: d[0]["arch"],
    "controller_archs.json": lambda d: d["argmax"]["arch"],
    "final_pool.json": lambda d: d[0]["arch"],
    "top_archs.json": lambda d: d[0]["arch"],
}


@dataclass(frozen=True)
class SearchResult:
    """The arch of a run's newest search export, and the file it came from."""

    arch: str
    file: Path


def search_result(folder: str | Path) -> SearchResult | None:
    """The newest export (``SEARCH_EXPORTS``) below ``folder``; None when the run wrote none. An export that
    cannot be read is an error naming the file."""
    found = [p for name in SEARCH_EXPORTS for p in Path(folder).rglob(name) if p.is_file()]
    if not found:
        return None
    newest = max(found, key=lambda p: p.stat().st_mtime_ns)
    try:
        arch = SEARCH_EXPORTS[newest.name](json.loads(newest.read_text()))
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f"{newest} is not a {newest.name} export (no arch where one is written): {e!r}") from None
    return SearchResult(str(arch), newest)


def gt_rank(arch: str, accuracy: Mapping[str, float]) -> float:
    """The GT rank of ``arch`` among the archs of ``accuracy`` (arch -> GT accuracy): 1 + the number of archs
    strictly better, so archs tied in GT share the best rank among them, as ``ranking_metrics``' ``top1_gt_rank``;
    NaN when the GT does not hold it."""
    if arch not in accuracy:
        return math.nan
    return 1.0 + sum(a > accuracy[arch] for a in accuracy.values())
