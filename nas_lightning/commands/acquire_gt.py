"""``nas-lightning acquire-gt``: ground truth for the predictor by short fine-tuning of inherited weights
(Lin et al., WPNAS, arXiv:2203.02086, section 4, step 2).

Archs are sampled uniformly (seeded); each starts from the weights it inherits from a trained supernet
(``Supernet.export``) and is fine-tuned for a few epochs as a ``StandaloneModule``, then scored on the
data's ``split``. As ``nas-lightning ground-truth`` does, each (arch, seed) run appends one line to
``<output>.runs.jsonl`` as soon as it finishes, so a killed job resumes at the next missing run; the table is
then written to ``output`` in the format every reader of ground truth takes (``load_ground_truth``: the
ranking callback, the predictor, the landmark loss). A ``.json`` output (the default) carries the command
that made it in its ``source`` field; a ``.csv`` has no place for it that every reader accepts.

Every run line records the space's class and the supernet's weights hash: resuming with another space,
another checkpoint or another number of epochs is refused, naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from tqdm.auto import tqdm

from nas_lightning.cli import load_checkpoint, run_with_space_and_data, saved_settings
from nas_lightning.commands.ground_truth import (
    COMMAND_LINE,
    append_run,
    command_line,
    ground_truth_report,
    quiet_lightning,
    select_archs,
)
from nas_lightning.data.base import SplitDataModule
from nas_lightning.methods.standalone import StandaloneModule
from nas_lightning.metrics.ground_truth import GroundTruth, save_ground_truth
from nas_lightning.search.evolution_run import weights_sha256
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import ArchFormatError, SearchSpace
from nas_lightning.utils.distributed import step_generator

__all__ = ["acquire_gt", "acquire_gt_main", "load_supernet", "sample_unique"]

def load_supernet(checkpoint: str, space: SearchSpace) -> torch.nn.Module:
    """The supernet of a method checkpoint (``SupernetModule`` and its subclasses keep it as ``supernet``),
    loaded strictly into ``space.build_supernet()``; a checkpoint of another space is an error naming it."""
    ckpt = load_checkpoint(checkpoint, None)
    settings, _ = saved_settings(ckpt)
    saved_class = ((settings.get("model") or {}).get("init_args") or {}).get("space", {})
    saved_class = saved_class.get("class_path") if isinstance(saved_class, dict) else None
    ours = type(space).__name__
    if isinstance(saved_class, str) and saved_class.rpartition(".")[2] != ours:
        raise ValueError(f"checkpoint {checkpoint} was trained on {saved_class}, not on {ours}: give the space it "
                         "was trained on, or a supernet checkpoint of this space")
    state = {k.removeprefix("supernet."): v for k, v in ckpt["state_dict"].items() if k.startswith("supernet.")}
    if not state:
        raise ValueError(f"checkpoint {checkpoint} holds no supernet weights (no 'supernet.' keys): give the "
                         "checkpoint of a supernet method (SPOS, ...), as `nas-lightning fit` writes it")
    supernet = space.build_supernet()
    try:
        supernet.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ValueError(f"checkpoint {checkpoint} does not fit {ours} as configured ({first}): it was trained on "
                         "another configuration of the space (C, N, layers, ops); configure the space as its "
                         "run did") from None
    return supernet.eval()


def sample_unique(space: SearchSpace, n: int, seed: int) -> list[Arch]:
    """``n`` distinct archs drawn uniformly (without replacement) with a seeded generator: one independent
    uniform choice per decision, duplicates redrawn, so it works on spaces too large to enumerate."""
    if n > space.num_archs:
        raise ValueError(f"num_archs={n} exceeds the {space.num_archs} archs of {type(space).__name__}")
    gen = step_generator(seed, "acquire-gt-sample", 0)
    chosen: dict[Arch, None] = {}
    while len(chosen) < n:
        for arch in space.sample_many(n - len(chosen), gen):
            chosen.setdefault(arch, None)
    return list(chosen)


def _load_runs(path: Path, space: SearchSpace, provenance: dict[str, Any]) -> dict[tuple[Arch, int], float]:
    """Finished runs of ``path``; a run of another space, checkpoint or fine-tuning is an error naming the file."""
    done: dict[tuple[Arch, int], float] = {}
    if not path.exists():
        return done
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill: that run is simply redone
        for key, value in provenance.items():
            if rec.get(key) != value:
                raise ValueError(
                    f"{path} line {number} was made with {key}={rec.get(key)!r}, this run has {value!r}: it belongs "
                    "to another acquisition. Give another --output, or delete the file to start afresh")
        try:
            arch = space.decode(rec["arch"])
        except ArchFormatError as error:
            raise ValueError(f"{path} line {number}: arch {rec['arch']!r} is not an arch of "
                             f"{type(space).__name__} ({error}); the file was made for another space") from None
        done[(arch, int(rec["seed"]))] = float(rec["accuracy"])
    return done


def _fine_tune(space: SearchSpace, supernet: torch.nn.Module, data: SplitDataModule, arch: Arch, seed: int,
               max_epochs: int, limit_train_batches: float | int, optimizer: OptimizerCallable,
               lr_scheduler: LRSchedulerCallable | None, split: str, accelerator: str, precision: str) -> float:
    """Accuracy (percent) on ``split`` of ``arch`` fine-tuned from its inherited weights."""
    pl.seed_everything(seed, verbose=False)
    model = StandaloneModule(space, str(arch), optimizer=optimizer, lr_scheduler=lr_scheduler)
    model.network.load_state_dict(supernet.export(arch).state_dict())  # inherited weights (section 4, step 2)
    trainer = pl.Trainer(max_epochs=max_epochs, limit_train_batches=limit_train_batches, accelerator=accelerator,
                         devices=1, precision=precision, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    trainer.limit_val_batches = 1.0  # validation was off for the fit only: GT on "val" uses the whole split
    run = trainer.validate if split == "val" else trainer.test
    return float(run(model, datamodule=data, verbose=False)[0][f"{split}/acc"]) * 100.0


def acquire_gt(
    space: SearchSpace,
    data: SplitDataModule,
    checkpoint: str,
    output: str = "runs/acquire_gt/gt.json",
    num_archs: int | None = 200,
    sample_seed: int = 0,
    archs: list[str] | None = None,
    archs_file: str | None = None,
    seeds: list[int] = [0],  # noqa: B006 - jsonargparse reads the default from the signature
    max_epochs: int = 3,
    limit_train_batches: float | int = 1.0,
    optimizer: OptimizerCallable = torch.optim.SGD,
    lr_scheduler: LRSchedulerCallable | None = None,
    split: Literal["val", "test"] = "test",
    accelerator: str = "auto",
    precision: str = "32-true",
    progress: bool = True,
) -> GroundTruth:
    """Fine-tune a uniform sample of archs from a supernet's inherited weights; write the GT file.

    Args:
        space: the search space the supernet was trained on.
        data: the data module; accuracy is measured on its ``split``.
        checkpoint: the supernet's checkpoint (``nas-lightning fit`` of SPOS or another supernet method).
        output: the GT file (.json, with the command in ``source``, or .csv); runs are logged beside it in
            ``<output>.runs.jsonl``.
        num_archs, sample_seed: a uniform sample of ``num_archs`` distinct archs (section 4: 200), seeded.
        archs, archs_file: archs given as strings or in a file, fine-tuned as well.
        seeds: fine-tuning seeds (section 4 fine-tunes each arch once).
        max_epochs: fine-tuning epochs (section 4: 30, after 200 supernet epochs).
        limit_train_batches: of each fine-tuning epoch (a fraction or a number of batches).
        optimizer, lr_scheduler: of the fine-tuning, as in the method configs.
        split: ``test`` (the official test set) or ``val`` (the supernet-val split).
        accelerator, precision: passed to each run's Trainer.
        progress: show a progress bar over runs.
    """
    if max_epochs < 1 or not seeds:
        raise ValueError(f"acquire-gt needs max_epochs >= 1 and at least one seed, got {max_epochs}, {seeds}")
    chosen = select_archs(space, archs, archs_file, None, False, sample_seed) if archs or archs_file else []
    chosen = list(dict.fromkeys(chosen + (sample_unique(space, num_archs, sample_seed) if num_archs else [])))
    if not chosen:
        raise ValueError("no archs to fine-tune: give num_archs, archs or archs_file")
    supernet = load_supernet(checkpoint, space)
    provenance = {"space": f"{type(space).__module__}.{type(space).__qualname__}",
                  "supernet_sha256": weights_sha256(supernet), "epochs": max_epochs,
                  "limit_train_batches": limit_train_batches, "split": split}
    out = Path(output)
    runs_path = out.with_name(out.name + ".runs.jsonl")
    runs_path.parent.mkdir(parents=True, exist_ok=True)
    done = _load_runs(runs_path, space, provenance)
    todo = [(a, s) for a in chosen for s in seeds if (a, s) not in done]
    print(f"acquire-gt: {len(chosen)} archs x {len(seeds)} seeds from {checkpoint}; {len(done)} runs done, "
          f"{len(todo)} to go")
    with quiet_lightning():
        for arch, seed in tqdm(todo, desc="fine-tuning runs", disable=not progress):
            acc = _fine_tune(space, supernet, data, arch, seed, max_epochs, limit_train_batches, optimizer,
                             lr_scheduler, split, accelerator, precision)
            done[(arch, seed)] = acc
            append_run(runs_path, {"arch": str(arch), "seed": seed, "accuracy": acc, **provenance})

    per_seed = {a: [done[(a, s)] for s in seeds] for a in chosen}
    command = COMMAND_LINE.get()
    source = (f"{command + '; ' if command else ''}nas-lightning acquire-gt: {len(chosen)} archs of "
              f"{type(space).__name__} (sample_seed {sample_seed}) fine-tuned {max_epochs} epochs "
              f"(limit_train_batches {limit_train_batches}) from the inherited weights of {checkpoint} (supernet "
              f"sha256 {provenance['supernet_sha256'][:16]}), seeds {list(seeds)}, accuracy on the {split} split")
    gt = GroundTruth(accuracy={a: sum(v) / len(v) for a, v in per_seed.items()}, per_seed=per_seed, source=source)
    save_ground_truth(out, gt, space)
    print(ground_truth_report(gt, space))
    print(f"wrote {out}")
    return gt


def acquire_gt_main(argv: list[str]) -> None:
    """``nas-lightning acquire-gt``: the arguments of ``acquire_gt``, the space's classes and image shape linked
    from the data module as in ``fit``."""
    with command_line("acquire-gt", argv):
        run_with_space_and_data(acquire_gt, "nas-lightning acquire-gt", argv)
