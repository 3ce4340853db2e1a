"""A measured latency lookup table (PC-NAS, arXiv:1910.02543, sec. 4.1: hard latency limit, batch 16 on a GPU).

The latency of an arch is predicted as the sum over searchable layers of the measured latency of the
chosen op in isolation (on an input of that layer's shape), plus the measured latency of the fixed
parts (stem, head), as in ProxylessNAS's and FBNet's lookup tables. Each entry is the median of
``repeats`` timings after ``warmup`` runs, under ``torch.inference_mode``, with ``torch.cuda.synchronize``
around the timings on CUDA. All entries are timed in interleaved rounds (one run of every entry per
round), so a burst of load on a shared machine spreads over all entries instead of inflating a few.

The space must provide ``config()``, ``layer_input_shape(decision)``, ``build_layer_op(decision, op)`` and
``build_fixed_parts()`` (``MobileNetSpace`` does). Layers of equal shape share their measurements, and the
table is indexed by choice index for batched lookups (``LatencyTable.batch``).

File format (JSON): ``{"metadata": {...}, "fixed": {"stem": ms, "head": ms}, "layers": [{op: ms}, ...]}``;
metadata holds the device, torch version, batch size, input shape, timing settings and the space config.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from nas_lightning.latency.base import LatencyModel
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.atomic import atomic_write_json


class LatencyTableMismatch(ValueError):
    """A stored table that was measured for another space config, batch size or device type."""


#: what a space must provide, beyond ``SearchSpace``, to be measured
MEASURABLE_METHODS: tuple[str, ...] = ("config", "layer_input_shape", "build_layer_op", "build_fixed_parts")


#: clocks a table can be timed with. ``thread`` is the CPU time of the calling thread: on a shared CPU it
#: leaves out the time the process waits while preempted, and it is exact only with one intra-op thread.
TIMERS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "thread": time.thread_time}


def _clock(timer: str, device: torch.device) -> Callable[[], float]:
    if timer not in TIMERS:
        raise ValueError(f"unknown timer {timer!r}; choose one of {list(TIMERS)}")
    if timer == "thread" and (device.type != "cpu" or torch.get_num_threads() != 1):
        raise ValueError(f"timer='thread' measures CPU time of one thread: it needs device 'cpu' and "
                         f"torch.set_num_threads(1), got device {device}, {torch.get_num_threads()} threads")
    return TIMERS[timer]


def _require_measurable(space: SearchSpace) -> None:
    missing = [m for m in MEASURABLE_METHODS if not hasattr(space, m)]
    if missing:
        raise TypeError(f"{type(space).__name__} cannot be measured: it lacks {missing} (see latency/table.py)")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_rounds(runs: Sequence[Callable[[], object]], device: torch.device, repeats: int, warmup: int,
                 timer: str = "wall") -> list[float]:
    """Median milliseconds of each of ``runs``, timed in ``repeats`` interleaved rounds."""
    clock = _clock(timer, device)
    times: list[list[float]] = [[] for _ in runs]
    with torch.inference_mode():
        for _ in range(warmup):
            for run in runs:
                run()
        _sync(device)
        for _ in range(repeats):
            for i, run in enumerate(runs):
                start = clock()
                run()
                _sync(device)
                times[i].append((clock() - start) * 1e3)
    return [statistics.median(t) for t in times]


def _runner(module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    module = module.to(x.device).eval()
    return lambda: module(x)


def measure_latency(net: nn.Module, input_shape: Sequence[int], batch_size: int, repeats: int = 20,
                    warmup: int = 5, device: str | torch.device = "cpu", timer: str = "wall") -> float:
    """End-to-end latency of ``net`` on one batch of ``batch_size`` images of ``input_shape``: median ms.

    Moves ``net`` to ``device`` and puts it in eval mode.
    """
    device = torch.device(device)
    x = torch.randn(batch_size, *input_shape, device=device)
    return _time_rounds([_runner(net, x)], device, repeats, warmup, timer)[0]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def measure_table(space: SearchSpace, batch_size: int, device: str | torch.device = "cpu", repeats: int = 20,
                  warmup: int = 5, timer: str = "wall") -> dict[str, Any]:
    """Measure every (layer, op) and the fixed parts; returns the table in its file format."""
    _require_measurable(space)
    device = torch.device(device)
    inputs: dict[tuple[int, ...], torch.Tensor] = {}

    def batch_of(shape: Sequence[int]) -> torch.Tensor:  # one input per shape keeps device memory small
        shape = tuple(shape)
        if shape not in inputs:
            inputs[shape] = torch.randn(batch_size, *shape, device=device)
        return inputs[shape]

    # an (op, input shape, module structure) is measured once: later layers of a stage repeat it
    keys: dict[tuple[Any, ...], int] = {}
    runs: list[Callable[[], object]] = []
    layer_keys: list[dict[str, int]] = []
    for d, decision in enumerate(space.decisions):
        shape = tuple(space.layer_input_shape(d))  # type: ignore[attr-defined]
        layer_keys.append({})
        for op in decision.choices:
            module = space.build_layer_op(d, op)  # type: ignore[attr-defined]
            key = (op, shape, repr(module))
            if key not in keys:
                keys[key] = len(runs)
                runs.append(_runner(module, batch_of(shape)))
            layer_keys[-1][op] = keys[key]
    fixed_index = {}
    for name, (module, shape) in space.build_fixed_parts().items():  # type: ignore[attr-defined]
        fixed_index[name] = len(runs)
        runs.append(_runner(module, batch_of(shape)))
    ms = _time_rounds(runs, device, repeats, warmup, timer)
    metadata = {
        "device": device_name(device), "device_type": device.type, "torch": torch.__version__,
        "batch_size": batch_size, "input_shape": list(space.input_shape),
        "repeats": repeats, "warmup": warmup, "timer": timer, "unit": "ms", "space": space.config(),  # type: ignore[attr-defined]
    }
    return {
        "metadata": metadata,
        "fixed": {name: ms[i] for name, i in fixed_index.items()},
        "layers": [{op: ms[i] for op, i in layer.items()} for layer in layer_keys],
    }


class LatencyTable(LatencyModel):
    """Lookup-table latency of an arch in ms: sum over layers of the chosen op's entry, plus the fixed parts.

    Args:
        space: the space whose archs it predicts (provides the parts to measure, see the module docstring).
        path: JSON file. If it exists, the table is loaded from it and must match the space config,
            ``batch_size``, the device type and ``timer``; otherwise the table is measured and saved there.
            ``None``: measure and keep in memory.
        batch_size: images per timed batch (PC-NAS: 16 on a GPU).
        device: where to measure (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        repeats, warmup: timed and untimed runs per entry; an entry is the median of the timed ones.
        timer: ``"wall"`` (wall clock; what a deployment sees) or ``"thread"`` (CPU time of the one
            intra-op thread; steadier on a loaded, shared CPU). See ``TIMERS``.
    """

    unit = "ms"

    def __init__(self, space: SearchSpace, path: str | None = None, batch_size: int = 16, device: str = "cpu",
                 repeats: int = 20, warmup: int = 5, timer: Literal["wall", "thread"] = "wall") -> None:
        if batch_size < 1 or repeats < 1 or warmup < 0:
            raise ValueError(f"LatencyTable needs batch_size >= 1, repeats >= 1, warmup >= 0, got "
                             f"{batch_size}, {repeats}, {warmup}")
        _require_measurable(space)
        self.space, self.path = space, path
        if path is not None and Path(path).exists():
            table = json.loads(Path(path).read_text(encoding="utf-8"))
            asked = {"batch_size": batch_size, "device_type": torch.device(device).type, "timer": timer}
            check_table(table, space, asked, source=path)
        else:
            table = measure_table(space, batch_size, device, repeats, warmup, timer)
            if path is not None:
                atomic_write_json(path, table)
        self._set_table(table)

    @classmethod
    def load(cls, space: SearchSpace, path: str | os.PathLike[str]) -> LatencyTable:
        """A table measured before (``nas-lightning measure-latency``), as it is: every DDP rank reads the same
        numbers, and nothing is measured on the training machine. It must match ``space``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"latency table {path} does not exist; measure it on the target device first, e.g. "
                f"nas-lightning measure-latency --space {type(space).__module__}.{type(space).__name__} "
                f"--output {path} --batch_size 16 --device cuda")
        obj = cls.from_dict(space, json.loads(path.read_text(encoding="utf-8")), source=str(path))
        obj.path = str(path)
        return obj

    @classmethod
    def from_dict(cls, space: SearchSpace, table: dict[str, Any], source: str = "(dict)") -> LatencyTable:
        """A table from its file format as it is, e.g. one that rank 0 measured and broadcast to all DDP ranks."""
        _require_measurable(space)
        check_table(table, space, {}, source=source)
        obj = cls.__new__(cls)  # skips measuring and loading; the table is given
        obj.space, obj.path = space, None
        obj._set_table(table)
        return obj

    def _set_table(self, table: dict[str, Any]) -> None:
        space = self.space
        self.table = table
        self.metadata: dict[str, Any] = table["metadata"]
        self.fixed_ms = float(sum(table["fixed"].values()))
        # (decisions, max choices) matrix for batched lookups; padded entries are never indexed
        width = max(len(d.choices) for d in space.decisions)
        self._matrix = torch.zeros(space.num_decisions, width, dtype=torch.float64)
        for d, (decision, entries) in enumerate(zip(space.decisions, table["layers"])):
            self._matrix[d, : len(decision.choices)] = torch.tensor([entries[op] for op in decision.choices],
                                                                    dtype=torch.float64)

    def __call__(self, arch: Arch) -> float:
        return float(self.batch(self.space.to_tensor([arch]))[0])

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """Latencies (ms, float64) of archs given as an (N, num_decisions) choice-index tensor."""
        rows = torch.arange(self.space.num_decisions).expand_as(indices)
        return self._matrix[rows, indices.long()].sum(dim=1) + self.fixed_ms

    def save(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_json(path, self.table)


def check_table(table: dict[str, Any], space: SearchSpace, asked: dict[str, Any], source: str) -> None:
    """Raise ``LatencyTableMismatch`` naming every difference between a stored table and what is asked."""
    meta = table.get("metadata", {})
    config = json.loads(json.dumps(space.config()))  # type: ignore[attr-defined]  # tuples as lists, as stored
    stored = meta.get("space", {})
    problems = [f"{k}={stored.get(k)!r} (space has {config.get(k)!r})"
                for k in sorted(set(config) | set(stored)) if stored.get(k) != config.get(k)]
    problems += [f"{k}={meta.get(k)!r} (asked for {v!r})" for k, v in asked.items() if meta.get(k) != v]
    layers = table.get("layers", [])
    if not problems and (len(layers) != space.num_decisions or any(
            set(entries) != set(d.choices) for entries, d in zip(layers, space.decisions))):
        problems.append("the layers' ops differ from the space's decisions")
    if problems:
        raise LatencyTableMismatch(
            f"latency table {source} does not match: {'; '.join(problems)}. Delete the file or give another "
            f"path to measure a new table."
        )
