"""``nas-lightning ground-truth``: stand-alone accuracy of a sample of archs, over several seeds.

Each (arch, seed) run trains ``StandaloneModule`` from scratch and appends one line to
``<output>.runs.jsonl`` as soon as it finishes, so a killed job resumes at the next missing run.
The GT table (mean and per-seed accuracy, params, FLOPs) is then written to ``output``, and the
report states the GT's own seed-to-seed Kendall tau, the ceiling no supernet ranking can be
expected to beat, beside what the params and FLOPs proxies achieve against the GT.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from tqdm.auto import tqdm

from nas_lightning.cli import run_with_space_and_data
from nas_lightning.data.base import SplitDataModule
from nas_lightning.methods.standalone import StandaloneModule
from nas_lightning.metrics.ground_truth import GroundTruth, save_ground_truth
from nas_lightning.metrics.ranking import cost_proxy_metrics
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.arch_file import read_arch_file
from nas_lightning.utils.distributed import step_generator

#: The command line that runs a GT-writing command (``ground-truth``, ``acquire-gt``), when run from the CLI: the
#: file it writes names it (a CSV's ``#`` header line, a JSON's ``source``), so a shipped file says how to remake it.
COMMAND_LINE: ContextVar[str | None] = ContextVar("gt_command_line", default=None)


@contextmanager
def command_line(command: str, argv: list[str]) -> Iterator[None]:
    """``COMMAND_LINE`` is ``nas-lightning <command> <argv>`` inside the block."""
    token = COMMAND_LINE.set(shlex.join(["nas-lightning", command, *argv]))
    try:
        yield
    finally:
        COMMAND_LINE.reset(token)


def select_archs(space: SearchSpace, archs: list[str] | None, archs_file: str | None, num_archs: int | None,
                 all_archs: bool, sample_seed: int) -> list[Arch]:
    """The archs to train: given strings, a file, every arch of the space, or a seeded sample."""
    chosen = [space.decode(a) for a in archs or []]
    if archs_file:
        chosen += read_arch_file(archs_file, space)
    if all_archs:
        chosen += list(space.enumerate())
    if num_archs:
        if num_archs > space.num_archs:
            raise ValueError(f"num_archs={num_archs} exceeds the {space.num_archs} archs of the space; use all_archs")
        perm = torch.randperm(space.num_archs, generator=step_generator(sample_seed, "gt-sample", 0))
        chosen += [space.arch_at(i) for i in perm[:num_archs].tolist()]
    unique = list(dict.fromkeys(chosen))
    if not unique:
        raise ValueError("no archs to train: give archs, archs_file, num_archs or all_archs=true")
    return unique


def _load_runs(path: Path) -> dict[tuple[str, int], float]:
    done: dict[tuple[str, int], float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: that run is simply redone
            done[(rec["arch"], int(rec["seed"]))] = float(rec["accuracy"])
    return done


def append_run(path: Path, record: dict[str, object]) -> None:
    """Append one finished run to the JSON-lines log, synced to disk: a kill loses at most the run in progress."""
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """One Trainer per run: Lightning's per-Trainer banners would bury the progress bar."""
    loggers = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning_fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _train_runs(space: SearchSpace, data: SplitDataModule, todo: list[tuple[Arch, int]],
                done: dict[tuple[str, int], float], runs_path: Path, max_epochs: int, optimizer: OptimizerCallable,
                lr_scheduler: LRSchedulerCallable | None, split: str, accelerator: str, precision: str,
                progress: bool) -> None:
    for arch, seed in tqdm(todo, desc="stand-alone runs", disable=not progress):
        pl.seed_everything(seed, verbose=False)
        model = StandaloneModule(space, str(arch), optimizer=optimizer, lr_scheduler=lr_scheduler)
        trainer = pl.Trainer(max_epochs=max_epochs, accelerator=accelerator, devices=1, precision=precision,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
        trainer.fit(model, datamodule=data)
        trainer.limit_val_batches = 1.0  # validation was off for the fit only: GT on "val" uses the whole split
        run = trainer.validate if split == "val" else trainer.test
        acc = float(run(model, datamodule=data, verbose=False)[0][f"{split}/acc"]) * 100.0
        done[(str(arch), seed)] = acc
        append_run(runs_path, {"arch": str(arch), "seed": seed, "accuracy": acc, "epochs": max_epochs})


def ground_truth(
    space: SearchSpace,
    data: SplitDataModule,
    output: str = "runs/ground_truth/gt.csv",
    archs: list[str] | None = None,
    archs_file: str | None = None,
    num_archs: int | None = None,
    all_archs: bool = False,
    sample_seed: int = 0,
    seeds: list[int] = [0, 1],  # noqa: B006 - jsonargparse reads the default from the signature
    max_epochs: int = 5,
    optimizer: OptimizerCallable = torch.optim.SGD,
    lr_scheduler: LRSchedulerCallable | None = None,
    split: Literal["val", "test"] = "test",
    accelerator: str = "auto",
    precision: str = "32-true",
    progress: bool = True,
) -> GroundTruth:
    """Train archs stand-alone with several seeds and write the GT file the ranking callback reads.

    Args:
        space: the search space.
        data: the data module; GT accuracy is measured on its ``split``.
        output: the GT file (.csv or .json); runs are logged beside it in ``<output>.runs.jsonl``.
        archs, archs_file, num_archs, all_archs: which archs (given, from a file, a seeded sample of
            ``num_archs``, or every arch of a small space).
        sample_seed: seed of that sample.
        seeds: training seeds; two or more give the seed-to-seed ceiling.
        max_epochs: epochs per run.
        optimizer, lr_scheduler: as in the method configs.
        split: ``test`` (the official test set) or ``val`` (the supernet-val split).
        accelerator, precision: passed to each run's Trainer.
        progress: show a progress bar over runs.
    """
    chosen = select_archs(space, archs, archs_file, num_archs, all_archs, sample_seed)
    out = Path(output)
    runs_path = out.with_name(out.name + ".runs.jsonl")
    runs_path.parent.mkdir(parents=True, exist_ok=True)
    done = _load_runs(runs_path)
    todo = [(a, s) for a in chosen for s in seeds if (str(a), s) not in done]
    print(f"ground truth: {len(chosen)} archs x {len(seeds)} seeds; {len(done)} runs done, {len(todo)} to go")
    with quiet_lightning():
        _train_runs(space, data, todo, done, runs_path, max_epochs, optimizer, lr_scheduler, split, accelerator,
                    precision, progress)

    per_seed = {a: [done[(str(a), s)] for s in seeds] for a in chosen}

    gt = GroundTruth(accuracy={a: sum(v) / len(v) for a, v in per_seed.items()}, per_seed=per_seed,
                     source=f"made by: {COMMAND_LINE.get() or 'nas-lightning ground-truth'}")
    save_ground_truth(out, gt, space)
    print(ground_truth_report(gt, space))
    print(f"wrote {out}")
    return gt


def ground_truth_report(gt: GroundTruth, space: SearchSpace) -> str:
    archs = gt.archs
    target = [gt.accuracy[a] for a in archs]
    lines = [f"GT over {len(archs)} archs: seed-to-seed Kendall tau (the ceiling) = {gt.seed_to_seed_tau():.3f}"]
    if len(archs) >= 2:
        proxies = {"params": [float(space.params(a)) for a in archs], "flops": [float(space.flops(a)) for a in archs]}
        for name, m in cost_proxy_metrics(target, proxies).items():
            lines.append(
                f"  {name:>6} as a proxy: Kendall tau = {m['kendall_tau']:.3f}, Spearman = {m['spearman']:.3f}"
            )
    return "\n".join(lines)


def ground_truth_main(argv: list[str]) -> None:
    """``nas-lightning ground-truth``: the arguments of ``ground_truth``, the space's classes and image
    shape linked from the data module as in ``fit``."""
    with command_line("ground-truth", argv):
        run_with_space_and_data(ground_truth, "nas-lightning ground-truth", argv)
