"""DC-NAS's alternation of weights and local sharing states ("Distribution Consistent Neural Architecture Search",
sections 1-2) in a Lightning run: a thin trigger around ``DCNAS.update_sharing_state``
(``nas_lightning.search.sharing_update`` holds the algorithm, ``nas_lightning.supernet.sharing_state`` the state).

At the end of epoch ``warmup_epochs`` (1-based) and every ``every_n_epochs`` after it, the method re-clusters the
archs of every layer, scores the clusters' consistency and splits the copies of the clusters below
``threshold``. Rank 0 writes the round's diagnostics (``nas_lightning.metrics.sharing_diagnostics``:
``consistency_scores.csv``, ``sharing_state.csv``, ``params.csv``, ``sharing_state_layer<d>.png``) to
``output_dir`` and logs their scalars. The sharing state is the method's (checkpointed with it); the schedule is a
function of the epoch, so a resumed run continues it.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from typing_extensions import override

from callbacks._paths import output_dir
from nas_lightning.methods.dcnas import DCNAS
from nas_lightning.metrics.sharing_diagnostics import write_sharing_diagnostics
from nas_lightning.search.sharing_update import InferenceResult, sharing_update_due


def _dcnas(pl_module: pl.LightningModule) -> DCNAS:
    if not isinstance(pl_module, DCNAS):
        raise TypeError(f"SharingStateUpdate needs a DCNAS method, got {type(pl_module).__name__}")
    return pl_module


class SharingStateUpdate(pl.Callback):
    """When DC-NAS re-infers its sharing states.

    Args:
        warmup_epochs: epochs of training before the first inference (at least 1).
        every_n_epochs: epochs between inferences (the DC-NAS default of this project: 5).
        num_archs: R, archs sampled per layer and op for its K-means.
        threshold: tau; clusters whose consistency score is below it get separate copies.
        output_dir: where the diagnostics go (default ``<trainer.log_dir or default_root_dir>/dcnas``).
    """

    def __init__(self, warmup_epochs: int = 5, every_n_epochs: int = 5, num_archs: int = 256,
                 threshold: float = 0.0, output_dir: str | None = None) -> None:
        for name, value, low in (("warmup_epochs", warmup_epochs, 0), ("every_n_epochs", every_n_epochs, 1),
                                 ("num_archs", num_archs, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"SharingStateUpdate {name} must be an int >= {low}, got {value!r}")
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"SharingStateUpdate threshold is a cosine similarity in [-1, 1], got {threshold!r}")
        self.warmup_epochs, self.every_n_epochs = warmup_epochs, every_n_epochs
        self.num_archs, self.threshold, self.output_dir = num_archs, threshold, output_dir

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        _dcnas(pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        method = _dcnas(pl_module)
        if sharing_update_due(trainer.current_epoch + 1, self.warmup_epochs, self.every_n_epochs):
            self._report(trainer, method, method.update_sharing_state(self.num_archs, self.threshold))

    def _report(self, trainer: pl.Trainer, method: DCNAS, result: InferenceResult | None) -> None:
        out = Path(output_dir(trainer, self.output_dir, "dcnas"))  # broadcasts under DDP: every rank asks
        if result is None or not trainer.is_global_zero:
            return
        metrics = write_sharing_diagnostics(out, method.sharing, result, method.copy_count,
                                            method.copies_in_use_params(), trainer.current_epoch + 1)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
