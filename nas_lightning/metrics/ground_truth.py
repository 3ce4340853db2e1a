"""Ground-truth tables: the stand-alone accuracy of each arch, loaded from CSV, JSON or NATS-Bench.

CSV, wide format (one row per arch)::

    arch,accuracy,accuracy_seed0,accuracy_seed1,params,flops
    |nor_conv_3x3|skip_connect|...|,91.2,91.0,91.4,1234,5678

``accuracy`` (or the column named by ``metric``) is the mean; the ``<metric>_seed<k>`` columns are
optional and may be left empty for archs with fewer seeds; other columns are ignored. Without a
``<metric>`` column the mean of the seed columns is used.

CSV, long format (a ``seed`` column, one row per arch and seed; the accuracy is averaged per arch)::

    arch,seed,accuracy
    |...|,0,91.0
    |...|,1,91.4

JSON: ``{arch: accuracy}``, ``{arch: [acc_seed0, acc_seed1, ...]}`` or
``{"archs": [{"arch": ..., "accuracy": ..., "per_seed": [...]}, ...]}``.

Anything else (a ``.pickle.pbz2`` file or a directory) is opened with the optional ``nats_bench`` API.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nas_lightning.metrics.ranking import seed_to_seed_tau as _seed_to_seed_tau
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import ArchFormatError, SearchSpace
from nas_lightning.utils import atomic_write_text

__all__ = ["GroundTruth", "check_coverage", "load_ground_truth", "save_ground_truth"]


@dataclass
class GroundTruth:
    """Stand-alone accuracy per arch.

    ``accuracy`` holds the mean over seeds; ``per_seed`` the individual seeds (an empty list when the
    source has one number per arch). ``source`` says where the table came from (a path, usually).
    """

    accuracy: dict[Arch, float]
    per_seed: dict[Arch, list[float]] = field(default_factory=dict)
    source: str = ""

    @property
    def archs(self) -> list[Arch]:
        return list(self.accuracy)

    def __len__(self) -> int:
        return len(self.accuracy)

    def __contains__(self, arch: object) -> bool:
        return arch in self.accuracy

    def __getitem__(self, arch: Arch) -> float:
        return self.accuracy[arch]

    def values(self, archs: Sequence[Arch]) -> torch.Tensor:
        """Float64 tensor of the accuracy of ``archs``, in order (``KeyError`` for a missing arch)."""
        return torch.tensor([self.accuracy[a] for a in archs], dtype=torch.float64)

    def restrict(self, archs: Iterable[Arch]) -> GroundTruth:
        """The table limited to ``archs`` (in their order); archs the table lacks are skipped."""
        keep = [a for a in dict.fromkeys(archs) if a in self.accuracy]
        return GroundTruth({a: self.accuracy[a] for a in keep},
                           {a: list(self.per_seed.get(a, [])) for a in keep}, self.source)

    def seed_to_seed_tau(self) -> float:
        """Mean Kendall tau-b between pairs of seeds over the archs with the most seeds; NaN below 2 seeds."""
        counts = {a: len(self.per_seed.get(a, [])) for a in self.accuracy}
        most = max(counts.values(), default=0)
        if most < 2:
            return math.nan
        rows = [self.per_seed[a] for a, c in counts.items() if c == most]
        if len(rows) < 2:
            return math.nan
        return _seed_to_seed_tau(torch.tensor(rows, dtype=torch.float64))


# --- loading ----------------------------------------------------------------------------------------


def _decode(space: SearchSpace, text: Any, path: Path, where: str) -> Arch:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"ground truth {path}, {where}: arch must be a non-empty string, got {text!r}")
    try:
        return space.decode(text)
    except ArchFormatError as e:
        raise ValueError(
            f"ground truth {path}, {where}: arch {text!r} does not belong to {type(space).__name__}: {e}"
        ) from e


def _number(value: Any, path: Path, where: str, what: str) -> float:
    if isinstance(value, bool) or value is None:
        ok = False
    elif isinstance(value, (int, float)):
        ok, x = True, float(value)
    else:
        try:
            x, ok = float(str(value).strip()), True
        except ValueError:
            ok = False
    if not ok or not math.isfinite(x):
        raise ValueError(f"ground truth {path}, {where}: {what} must be a finite number, got {value!r}")
    return x


def _add(acc: dict[Arch, float], seeds: dict[Arch, list[float]], arch: Arch, mean: float | None,
         per_seed: list[float], path: Path, where: str) -> None:
    if arch in acc:
        raise ValueError(f"ground truth {path}, {where}: arch {arch} appears twice")
    if mean is None:
        if not per_seed:
            raise ValueError(f"ground truth {path}, {where}: arch {arch} has no accuracy")
        mean = sum(per_seed) / len(per_seed)
    acc[arch], seeds[arch] = mean, per_seed


def _load_csv(path: Path, space: SearchSpace, metric: str) -> GroundTruth:
    lines = path.read_text(encoding="utf-8-sig").splitlines(keepends=True)
    comments = 0
    while comments < len(lines) and lines[comments].startswith("#"):  # a header saying how the file was made
        comments += 1
    reader = csv.DictReader(io.StringIO("".join(lines[comments:]), newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    seed_re = re.compile(rf"^{re.escape(metric)}_seed(\d+)$")
    seed_cols = sorted(((int(m.group(1)), h) for h in header if (m := seed_re.match(h))), key=lambda x: x[0])
    if "arch" not in header or (metric not in header and not seed_cols):
        raise ValueError(
            f"ground truth {path}: CSV header must include 'arch' and {metric!r} "
            f"(or {metric}_seed<k> columns), got {header}"
        )
    acc: dict[Arch, float] = {}
    seeds: dict[Arch, list[float]] = {}
    if "seed" in header:  # long format: one row per (arch, seed)
        if metric not in header:
            raise ValueError(f"ground truth {path}: long-format CSV (with a 'seed' column) needs a {metric!r} column")
        rows: dict[Arch, dict[float, float]] = {}
        for row in reader:
            where = f"line {reader.line_num}"
            arch = _decode(space, row.get("arch"), path, where)
            seed = _number(row.get("seed"), path, where, "seed")
            value = _number(row.get(metric), path, where, metric)
            per_arch = rows.setdefault(arch, {})
            if seed in per_arch:
                raise ValueError(f"ground truth {path}, {where}: arch {arch} has seed {row.get('seed')!r} twice")
            per_arch[seed] = value
        for arch, by_seed in rows.items():
            values = [by_seed[s] for s in sorted(by_seed)]
            _add(acc, seeds, arch, None, values, path, "long format")
    else:
        for row in reader:
            where = f"line {reader.line_num}"
            arch = _decode(space, row.get("arch"), path, where)
            per_seed = [_number(row[h], path, where, h) for _, h in seed_cols if (row.get(h) or "").strip()]
            cell = (row.get(metric) or "").strip() if metric in header else ""
            mean = _number(cell, path, where, metric) if cell else None
            _add(acc, seeds, arch, mean, per_seed, path, where)
    return GroundTruth(acc, seeds, str(path))


def _load_json(path: Path, space: SearchSpace, metric: str) -> GroundTruth:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"ground truth {path} is not valid JSON: {e}") from e
    acc: dict[Arch, float] = {}
    seeds: dict[Arch, list[float]] = {}
    entries = data.get("archs") if isinstance(data, dict) and isinstance(data.get("archs"), list) else data
    if isinstance(entries, list):
        for i, entry in enumerate(entries):
            where = f"entry {i}"
            if not isinstance(entry, dict):
                raise ValueError(f"ground truth {path}, {where}: expected an object with 'arch' and {metric!r}")
            arch = _decode(space, entry.get("arch"), path, where)
            raw_seeds = entry.get("per_seed") or []
            if not isinstance(raw_seeds, list):
                raise ValueError(f"ground truth {path}, {where}: 'per_seed' must be a list, got {raw_seeds!r}")
            per_seed = [_number(v, path, where, "per_seed value") for v in raw_seeds]
            mean = _number(entry[metric], path, where, metric) if entry.get(metric) is not None else None
            _add(acc, seeds, arch, mean, per_seed, path, where)
    elif isinstance(data, dict):
        for key, value in data.items():
            where = f"key {key!r}"
            arch = _decode(space, key, path, where)
            if isinstance(value, list):
                _add(acc, seeds, arch, None, [_number(v, path, where, "accuracy") for v in value], path, where)
            else:
                _add(acc, seeds, arch, _number(value, path, where, "accuracy"), [], path, where)
    else:
        raise ValueError(f"ground truth {path}: expected a JSON object or list, got {type(data).__name__}")
    return GroundTruth(acc, seeds, str(path))


def _load_nats(path: Path, space: SearchSpace, metric: str, dataset: str, hp: str) -> GroundTruth:
    try:
        from nats_bench import create
    except ImportError as e:
        raise ImportError(
            f"reading the NATS-Bench file {path} needs the NATS-Bench API: pip install nats_bench "
            "(or convert the table to CSV/JSON with `nas-lightning ground-truth`)"
        ) from e
    api = create(str(path), "tss", fast_mode=True, verbose=False)
    key = "test-accuracy" if metric == "accuracy" else metric
    acc: dict[Arch, float] = {}
    for i in range(len(api)):
        info = api.get_more_info(i, dataset, hp=hp, is_random=False)
        if key not in info:
            raise ValueError(f"NATS-Bench {path}: no {key!r} for arch {i} on {dataset!r}; available: {sorted(info)}")
        arch = _decode(space, api.arch(i), path, f"arch index {i}")
        acc[arch] = _number(info[key], path, f"arch index {i}", key)
    return GroundTruth(acc, {a: [] for a in acc}, f"{path} (NATS-Bench tss, {dataset}, hp={hp})")


def load_ground_truth(path: str | Path, space: SearchSpace, metric: str = "accuracy",
                      nats_dataset: str = "cifar10", nats_hp: str = "200") -> GroundTruth:
    """Read a ground-truth table (format by extension: ``.csv``, ``.json``, else NATS-Bench).

    Arch strings are decoded with ``space.decode``. Raises ``FileNotFoundError`` for a missing path,
    ``ValueError`` naming the file and row/key for a bad arch, a non-numeric value, a duplicate arch
    or an empty table, and ``ImportError`` when a NATS-Bench file is given without ``nats_bench``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ground truth file {path} does not exist")
    suffix = path.suffix.lower() if path.is_file() else ""
    if suffix == ".csv":
        gt = _load_csv(path, space, metric)
    elif suffix == ".json":
        gt = _load_json(path, space, metric)
    else:
        gt = _load_nats(path, space, metric, nats_dataset, str(nats_hp))
    if len(gt) == 0:
        raise ValueError(f"ground truth {path} has no archs")
    return gt


def check_coverage(gt: GroundTruth, archs: Sequence[Arch], path_for_message: str | Path) -> list[Arch]:
    """The archs of ``archs`` that ``gt`` covers (in order); ``ValueError`` if it covers none."""
    covered = [a for a in archs if a in gt.accuracy]
    if archs and not covered:
        first = ", ".join(str(a) for a in list(archs)[:3])
        theirs = ", ".join(str(a) for a in gt.archs[:2])
        raise ValueError(
            f"ground truth {path_for_message} covers none of the {len(archs)} archs to rank "
            f"(first few: {first}; the table has e.g. {theirs}); check that the search space config matches "
            "the one the table was made for (C and N do not change arch strings, but a different space or "
            "op list does), or generate ground truth for these archs with the `nas-lightning ground-truth` command"
        )
    return covered


def save_ground_truth(path: str | Path, gt: GroundTruth, space: SearchSpace | None = None) -> Path:
    """Write ``gt`` as CSV (``arch,accuracy,accuracy_seed0..k[,params,flops]``) or JSON, by extension.

    ``params``/``flops`` come from ``space.cost(arch)`` when ``space`` is given. A CSV starts with ``gt.source``
    (how the table was made, e.g. the command line) as ``#`` lines, a JSON holds it as ``source``. Written
    atomically; ``load_ground_truth`` reads the result back unchanged.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ValueError(f"save_ground_truth writes .csv or .json, got {path}")
    n_seeds = max((len(gt.per_seed.get(a, [])) for a in gt.accuracy), default=0)
    costs = {a: space.cost(a) for a in gt.accuracy} if space is not None else {}
    if suffix == ".json":
        entries = []
        for a, value in gt.accuracy.items():
            entry: dict[str, Any] = {"arch": str(a), "accuracy": value, "per_seed": list(gt.per_seed.get(a, []))}
            if a in costs:
                entry["params"], entry["flops"] = costs[a]
            entries.append(entry)
        return atomic_write_text(path, json.dumps({"source": gt.source, "archs": entries}, indent=2) + "\n")
    buf = io.StringIO()
    if gt.source and gt.source != str(path):  # how the file was made, as '#' lines above the table
        buf.writelines(f"# {line}\n" for line in gt.source.splitlines())
    writer = csv.writer(buf, lineterminator="\n")
    header = ["arch", "accuracy", *(f"accuracy_seed{i}" for i in range(n_seeds))]
    writer.writerow([*header, *(["params", "flops"] if space is not None else [])])
    for a, value in gt.accuracy.items():
        seeds = list(gt.per_seed.get(a, []))
        row = [str(a), repr(float(value)), *(repr(float(s)) for s in seeds), *([""] * (n_seeds - len(seeds)))]
        writer.writerow(row + (list(costs[a]) if a in costs else []))
    return atomic_write_text(path, buf.getvalue())
