"""``nas-lightning interference``: the interference experiment of arXiv:2001.01431 (finding (3)) on any space.

Trains two archs (or two groups, ``arch_a`` / ``arch_b``) in alternation, one step each, once as paths of one
supernet (``shared``) and once as two copies (``separate``), from the same initial weights (a seeded fresh
supernet, or a trained one from ``ckpt_path``) and on the same batches, and records the validation loss of each
side before and after every step of the other (``nas_lightning.metrics.interference``). Writes
``<output>.csv``, ``<output>.png`` and ``<output>.json`` (the per-mode summary), and prints the summary.

    nas-lightning interference --space nas_lightning.spaces.DeeperInsightsSpace \\
        --data nas_lightning.data.FashionMNISTDataModule --data.train_subset 2000 --data.image_size 14 \\
        --arch_a '["|sep_conv_3x3~0|+|sep_conv_3x3~0|sep_conv_3x3~1|"]' \\
        --arch_b '["|sep_conv_5x5~0|+|sep_conv_3x3~0|dil_conv_5x5~1|"]' --steps 20 --output runs/interference/di
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
from pytorch_lightning.cli import OptimizerCallable

from nas_lightning.cli import run_with_space_and_data
from nas_lightning.data.base import SplitDataModule
from nas_lightning.metrics.interference import MODES, interference, interference_summary, save_interference
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.atomic import atomic_write_json

SUPERNET_PREFIX = "supernet."  # the supernet's keys in a method checkpoint's state_dict


def interference_command(space: SearchSpace, data: SplitDataModule, arch_a: list[str], arch_b: list[str],
                         steps: int = 20, optimizer: OptimizerCallable = torch.optim.SGD, seed: int = 0,
                         ckpt_path: str | None = None, val_batches: int = 4, calibration_batches: int = 0,
                         modes: list[str] = list(MODES),  # noqa: B006 - jsonargparse reads the default
                         output: str = "runs/interference/interference") -> dict[str, dict[str, float]]:
    """Interference between two archs (or groups) with and without weight sharing.

    Args:
        space: the search space.
        data: the data module; training batches from its train split, losses on its val split.
        arch_a, arch_b: the archs of each side (one arch, or a group that takes turns).
        steps: rounds; each trains A once, then B once.
        optimizer: the optimiser of the steps (one for the shared supernet, one per copy when separate).
        seed: seeds the fresh supernet's weights (ignored with ``ckpt_path``).
        ckpt_path: start from the supernet of this method checkpoint (``nas-lightning fit``'s).
        val_batches: validation batches the losses are measured on.
        calibration_batches: recalibrate BN on this many training batches per evaluation (0: batch statistics).
        modes: ``shared`` and/or ``separate``.
        output: path stem of the CSV, PNG and JSON.
    """
    group_a, group_b = [space.decode(a) for a in arch_a], [space.decode(a) for a in arch_b]
    torch.manual_seed(seed)
    supernet = space.build_supernet()
    if ckpt_path:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)["state_dict"]
        supernet.load_state_dict({k[len(SUPERNET_PREFIX):]: v for k, v in state.items()
                                  if k.startswith(SUPERNET_PREFIX)})
    data.setup("fit")
    train = list(itertools.islice(data.train_dataloader(), 2 * steps + calibration_batches))
    val = list(itertools.islice(data.val_dataloader(), val_batches))
    if not train or not val:
        raise ValueError(f"the data gave {len(train)} training and {len(val)} validation batches; need both")
    calibration, train = train[:calibration_batches], train[calibration_batches:] or train
    rows = interference(supernet, group_a, group_b, train, val, optimizer, steps, modes,  # type: ignore[arg-type]
                        calibration)
    csv_path, png_path = save_interference(rows, output)
    summary = interference_summary(rows)
    atomic_write_json(Path(output).with_name(Path(output).name + ".json"),
                      {"arch_a": arch_a, "arch_b": arch_b, "steps": steps, **summary})
    for mode, s in summary.items():
        print(f"{mode:>8}: other side's val loss moves {s['other_loss_abs_change']:.4f} per step (mean |change|; "
              f"mean {s['other_loss_change']:+.4f}, raised in {s['other_loss_raised_fraction']:.0%} of steps); "
              f"own loss {s['own_loss_change']:+.4f} per step")
    print(f"wrote {csv_path} and {png_path}")
    return summary


def interference_main(argv: list[str]) -> None:
    """``nas-lightning interference``: the arguments of ``interference_command``, the space's classes and image
    shape linked from the data module as in ``fit``."""
    run_with_space_and_data(interference_command, "nas-lightning interference", argv)
