"""The disturbance matrix (DI-NAS Fig. 1b) of a trained supernet checkpoint, at a chosen learning rate.

    python scripts/disturbance_matrix.py -c configs/dinas/chain_fashion_mnist.yaml [-c overlay.yaml ...] \
        --ckpt_path runs/.../last.ckpt [--lr 0.05] [--archs 8] [--output matrix]

Builds the run's method and data from its configs (as ``nas-lightning fit`` would), loads the checkpoint's
weights, and trains ``--archs`` archs one step each, in sequence, on a copy of the supernet, recording every
arch's validation accuracy after each step. The copy trains with the method's own step: with a projection
callback among the configs' trainer callbacks (DI-NAS's ``ProjectionMatrixUpdate``, whose state is an
``OrthogonalProjector``'s), each applied update is projected with the checkpoint's P at the callback's alpha
(arXiv:2003.13089, eqs. 6-8).
Prints the mean absolute change that training one arch causes in the *other* archs' accuracy (the
disturbance) and the mean change of the trained arch itself, and writes the matrix as CSV and PNG.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial

import torch

from nas_lightning.cli import NASLightningCLI
from nas_lightning.metrics.disturbance import disturbance_matrix, draw_archs, save_disturbance_matrix
from nas_lightning.projection import OrthogonalProjector, ProjectedSteps
from nas_lightning.utils.distributed import step_generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", action="append", required=True, help="the run's config files, in order")
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate of the matrix's steps")
    parser.add_argument("--archs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="seed of the arch draw (DisturbanceMetrics's)")
    parser.add_argument("--output", help="write <output>.csv and <output>.png")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # the configs go to LightningCLI as args, not through sys.argv

    cli_args = [a for c in args.config for a in ("-c", c)] + ["--trainer.logger=false"]
    cli = NASLightningCLI(cli_args, run=False)
    model, data = cli.model, cli.datamodule
    ckpt = torch.load(args.ckpt_path, map_location="cpu", weights_only=False)
    model.load_state_dict(ckpt["state_dict"])
    data.setup("fit")
    train = [batch for _, batch in zip(range(args.archs), data.train_dataloader())]
    val = list(data.val_dataloader())
    archs = draw_archs(model.space, args.archs, step_generator(args.seed, "disturbance_matrix", 0))

    # The run's projection callback (DI-NAS's ProjectionMatrixUpdate, from the configs' trainer callbacks), with the
    # checkpoint's P; none for a method that turns it off (DINAS(projection=False)) or has none.
    rule: Callable[[torch.nn.Module], ProjectedSteps] | None = None
    projection = [cb for cb in cli.trainer.callbacks if isinstance(getattr(cb, "projector", None), OrthogonalProjector)]
    if projection and getattr(model, "projection", True):
        cb = projection[0]
        cb.load_state_dict(ckpt["callbacks"][cb.state_key])
        rule = partial(cb.projector.projected_steps, progress=1.0)  # alpha as at the end of training (decay included)

    def optimizer(params):
        opt = model.optimizer_factory(params)
        for group in opt.param_groups:
            group["lr"] = args.lr
        return opt

    matrix = disturbance_matrix(model.supernet, archs, train, val, optimizer, step_rule=rule)
    others, own = matrix.disturbance(), matrix.own_change()
    step = "projected with the checkpoint's P" if rule is not None else "plain optimiser step"
    print(f"{args.ckpt_path} ({step}, lr {args.lr}): training one arch changes the other archs by {others:.3f} "
          f"points on average; the trained arch changes by {own:+.3f}")
    if args.output:
        csv_path, png_path = save_disturbance_matrix(matrix, args.output)
        print(f"wrote {csv_path} and {png_path}")


if __name__ == "__main__":
    main()
