"""Self-critical policy-gradient updates of WPNAS's architecture parameters between supernet steps (Lin et al.,
"WPNAS: Neural Architecture Search by jointly using Weight Sharing and Predictor", arXiv:2203.02086, section 3.4,
eqs. 4-7).

From ``start_epoch`` on (the warm-up before it trains uniform archs and leaves alpha alone), after every
``every_n_steps``-th optimiser step ``WPNAS.update_policy`` takes one update on ``archs_per_step`` archs. Each
epoch end keeps the alphas and rewrites ``alphas.csv``; the end of fit writes the argmax arch to
``wpnas_arch.json``. The alphas, their Adam state and the counters live in the method's
``ProbabilisticSampler`` (checkpointed there); this callback only keeps the schedule.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from typing_extensions import override

from callbacks._paths import output_dir
from nas_lightning.methods.wpnas import WPNAS, policy_update_due


def _wpnas(pl_module: pl.LightningModule) -> WPNAS:
    if not isinstance(pl_module, WPNAS):
        raise TypeError(f"PolicyStep needs a WPNAS method, got {type(pl_module).__name__}")
    return pl_module


class PolicyStep(pl.Callback):
    """Train the ``WPNAS`` method's alphas by the self-critical policy gradient between supernet steps.

    Args:
        start_epoch: epochs before it are warm-up: uniform archs, no updates (the paper: 200).
        every_n_steps: one update after every n-th optimiser step.
        archs_per_step: archs drawn and rewarded per update (their gradients are averaged).
        output_dir: where ``alphas.csv`` and ``wpnas_arch.json`` go (default:
            ``<trainer.log_dir or default_root_dir>/wpnas``).
    """

    def __init__(self, start_epoch: int = 200, every_n_steps: int = 1, archs_per_step: int = 1,
                 output_dir: str | None = None) -> None:
        if start_epoch < 0 or every_n_steps < 1 or archs_per_step < 1:
            raise ValueError("PolicyStep needs start_epoch >= 0, every_n_steps >= 1 and archs_per_step >= 1, got "
                             f"{start_epoch}, {every_n_steps}, {archs_per_step}")
        self.start_epoch, self.every_n_steps, self.archs_per_step = start_epoch, every_n_steps, archs_per_step
        self.output_dir = output_dir

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        _wpnas(pl_module)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        method, step = _wpnas(pl_module), trainer.global_step - 1  # the optimiser step that just ran
        # Each step's update runs once, even where a resumed run replays a step's end.
        if policy_update_due(trainer.current_epoch, step, self.start_epoch, self.every_n_steps, method.policy):
            stats = method.update_policy(step, self.archs_per_step)
            method.log_dict({f"policy/{k}": float(v) for k, v in stats.items()}, rank_zero_only=True)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        out = output_dir(trainer, self.output_dir, "wpnas")  # broadcasts under DDP: every rank asks
        _wpnas(pl_module).finish_epoch(trainer.current_epoch, out, write=trainer.is_global_zero)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        out = output_dir(trainer, self.output_dir, "wpnas")
        _wpnas(pl_module).export(out, write=trainer.is_global_zero)
