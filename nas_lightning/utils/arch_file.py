"""Lists of archs in files: one arch string per line, a CSV with an ``arch`` column, or JSON.

Read by ``nas-lightning cost`` and ``ground-truth``, and by ``RankingEvaluation`` to restrict a ranking
to chosen archs (e.g. a search's ``top_archs.json``).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace

__all__ = ["read_arch_file"]


def read_arch_file(path: str | Path, space: SearchSpace) -> list[Arch]:
    """Arch strings from a text file (one per line), a CSV with an ``arch`` column, or a JSON list
    (of strings, or of objects with an ``arch`` key, such as the search's top-arch export)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"arch file {path} does not exist")
    text = path.read_text()
    if path.suffix == ".json":
        items = json.loads(text)
        items = items.get("archs", items) if isinstance(items, dict) else items
        strings = [item["arch"] if isinstance(item, dict) else item for item in items]
    elif path.suffix == ".csv":
        strings = [row["arch"] for row in csv.DictReader(io.StringIO(text))]
    else:
        strings = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    archs = []
    for i, s in enumerate(strings):
        try:
            archs.append(space.decode(s))
        except ValueError as e:
            raise ValueError(f"{path}, entry {i}: {e}") from None
    return archs
