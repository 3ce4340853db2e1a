"""Running a study: each (method, seed) as clean ``nas-lightning fit`` and ``validate`` subprocesses in a folder of
its own, resumable, and never reusing a folder made with other settings.

A run's folder holds ``settings.json`` (written before anything runs: what the run is, with a hash of every file
it reads), ``fit.json`` once ``fit`` has finished and ``result.json`` once ``validate`` has. The children run with
the run folder as their working directory, so every relative path of a method config (``runs/...``, checkpoint
folders, logs) lands inside it. ``python -m nas_lightning.utils.study <subcommand> ...`` is the child: the
``nas-lightning`` command, which then records the process's peak GPU memory (``peak_gpu.json``), something only
the child can measure. The files a config or an override reads (a GT table, a predictor, a latency table, a
checkpoint: every string that names an existing file relative to the study's working directory) are made
absolute first (``absolute_inputs``, ``resolved_config``), so they still resolve from the run folder and their
hashes join the settings. docs/design_choices.md, "Comparing methods", gives the choices.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nas_lightning.utils.atomic import atomic_write_json, atomic_write_text

SETTINGS_FILE = "settings.json"
FIT_FILE = "fit.json"
RESULT_FILE = "result.json"
PEAK_GPU_FILE = "peak_gpu.json"


class StaleRunError(RuntimeError):
    """A run folder that was made with other settings than the study's now."""


@dataclass
class StudyEntry:
    """One method of a study.

    Args:
        name: the label of its rows, plots and output folder (letters, digits, ``.-_+=`` only).
        config: its ``-c`` files, in order.
        args: CLI overrides after them, e.g. ``["--model.init_args.groups", "4"]``.
    """

    name: str
    config: list[str]
    args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_+=")
        if not self.name or not set(self.name) <= allowed:
            raise ValueError(f"entry name {self.name!r}: use letters, digits and .-_+= only (it names a folder)")
        if not self.config:
            raise ValueError(f"entry {self.name!r} has no config files: give `config: [path.yaml, ...]`")


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes (of every file below it, by relative path, for a directory)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else "").encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()


def is_input_file(value: Any) -> bool:
    """A relative path, as a string, to a file that exists from the working directory."""
    return isinstance(value, str) and bool(value) and not os.path.isabs(value) and os.path.isfile(value)


def absolute_inputs(value: Any) -> Any:
    """``value`` (a parsed YAML tree or an argument list) with every input file (``is_input_file``) made
    absolute; folders and other strings (output paths, class paths) stay as written."""
    if isinstance(value, dict):
        return {k: absolute_inputs(v) for k, v in value.items()}
    if isinstance(value, list):
        return [absolute_inputs(v) for v in value]
    return os.path.abspath(value) if is_input_file(value) else value


def input_files(value: Any) -> list[str]:
    """The input files (``is_input_file``) that ``value`` names, as written, in order."""
    if isinstance(value, dict):
        return [f for v in value.values() for f in input_files(v)]
    if isinstance(value, list):
        return [f for v in value for f in input_files(v)]
    return [value] if is_input_file(value) else []


def resolved_config(config: str, out_dir: Path, index: int) -> Path:
    """A copy of the YAML ``config`` in ``out_dir`` (``<index>_<name>``: two configs may share a name) with its
    input files made absolute (``absolute_inputs``)."""
    tree = yaml.safe_load(Path(config).read_text())
    out = out_dir / f"{index}_{Path(config).name}"
    atomic_write_text(out, yaml.safe_dump(absolute_inputs(tree), sort_keys=False))
    return out


def config_inputs(config: str) -> list[str]:
    """The input files a YAML config names (``input_files``)."""
    return input_files(yaml.safe_load(Path(config).read_text()))


def settings_differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf where two settings trees differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for key in sorted(set(old) | set(new), key=str)
                for d in settings_differences(old.get(key), new.get(key), f"{prefix}{key}.")]
    if old != new:
        return [f"{prefix.rstrip('.')}: {json.dumps(old)} -> {json.dumps(new)}"]
    return []


def check_run_folder(folder: Path, settings: dict[str, Any]) -> None:
    """Claim ``folder`` for a run with ``settings``: write them there if the folder is new (or empty); refuse it,
    naming every difference, if it holds a run with other settings or files of something else."""
    recorded = folder / SETTINGS_FILE
    if recorded.is_file():
        old = json.loads(recorded.read_text())
        differences = settings_differences(old, json.loads(json.dumps(settings)))
        if differences:
            raise StaleRunError(
                f"{folder} holds a run made with other settings ({'; '.join(differences)}). It is never reused: "
                "give the study another output_dir, or delete that folder to run it anew")
        return
    if folder.is_dir() and any(folder.iterdir()):
        raise StaleRunError(f"{folder} is not empty but has no {SETTINGS_FILE}: it was not made by this study "
                            "command (or its settings were lost); delete it or choose another output_dir")
    atomic_write_json(recorded, settings)


def last_checkpoint(folder: Path) -> Path | None:
    """The newest ``last.ckpt`` below ``folder`` (a resumed run's logger may open a new version folder)."""
    found = [p for p in folder.rglob("last.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


@dataclass
class ChildResult:
    """What one child process cost: wall seconds, peak resident memory (MiB) and peak GPU memory (MiB, or None)."""

    returncode: int
    wall_s: float
    peak_rss_mib: float
    peak_gpu_mib: float | None


def run_child(argv: Sequence[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> ChildResult:
    """Run ``nas-lightning <argv>`` as a clean process in ``cwd``, its output appended to ``log``. Its own peak
    resident memory comes from ``os.wait4`` (``getrusage(RUSAGE_CHILDREN)`` would give the maximum over every
    child so far, not this one's)."""
    gpu_file = cwd / PEAK_GPU_FILE
    gpu_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "nas_lightning.utils.study", *argv]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"\n$ cd {cwd} && {' '.join(command)}\n")
        out.flush()
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen, which would wait again
    rss_kib = usage.ru_maxrss / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, KiB on Linux
    gpu = json.loads(gpu_file.read_text())["peak_gpu_mib"] if gpu_file.is_file() else None
    return ChildResult(process.returncode, wall, rss_kib / 1024, gpu)


def _child_main(argv: list[str]) -> None:
    """``nas-lightning <argv>``, then the peak GPU memory of this process into ``peak_gpu.json`` (when CUDA ran)."""
    from nas_lightning.cli import main

    try:
        main(argv)
    finally:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            peak = max(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count())) / 2**20
            atomic_write_json(PEAK_GPU_FILE, {"peak_gpu_mib": peak})


if __name__ == "__main__":
    _child_main(sys.argv[1:])
