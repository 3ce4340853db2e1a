"""Lightning's fit loops, made to resume from any step's checkpoint exactly as the uninterrupted run goes on.

A resumed run must do next what the uninterrupted run did after the checkpoint was written. Lightning 2.5/2.6
gets that wrong for checkpoints written at three points, and every one of them changes a search's result:

1. **At ``on_train_batch_end``** (``ModelCheckpoint(every_n_train_steps=...)``; it runs last among that
   hook's callbacks). The batch ran and stepped, but the rest of that loop iteration had not run:
   ``_TrainingEpochLoop.on_advance_end``, with the validation due after the batch (every epoch's validation
   after its last batch), then, after an epoch's last batch, the epoch's end (``_FitLoop.on_advance_end``:
   the ``on_train_epoch_end`` hooks, where PC-NAS shrinks its pool and DI-NAS updates its controller).
   Lightning skips it all on restore: ``_TrainingEpochLoop.advance`` counts a due validation as done
   (``increment_progress_to_evaluation_end``), and after the last batch ``_FitLoop.reset`` counts the epoch
   processed and completed, so the next epoch also runs without its ``on_train_epoch_start`` hooks. The
   end of an epoch is its slowest part (validation, potentials, controller updates), so it is where a
   crash is likeliest. ``ResumableTrainingEpochLoop`` names this restart stage
   ``RESTARTED_BEFORE_ADVANCE_END`` (``update_restart_stage``), which ``_FitLoop.reset`` does not take
   for a finished epoch; its ``reset`` counts the batch completed, as the uninterrupted loop did right
   after the checkpoint, which leaves the counters of a checkpoint written after the batch (Lightning's
   ``RESTARTED_ON_LAST``, restored by Lightning's own ``reset``); its first ``advance`` runs no batch, so
   Lightning's ``run`` goes straight on to ``on_advance_end`` for the restored batch, and then, after the
   epoch's last batch, to the epoch's end.
2. **At train epoch end** (``save_on_train_epoch_end=True``) under ``max_steps``. For iteration-based
   training Lightning restarts such an epoch (``RESTARTED_ON_EPOCH_END``): it replays the epoch's
   ``on_train_epoch_end`` hooks and counts the epoch processed twice, so every later epoch shuffles its
   data as the epoch after it. ``ResumableFitLoop.update_restart_stage`` resumes an epoch whose batches
   all ran as Lightning resumes it without ``max_steps`` (``RESUMED_ON_EPOCH_END``): the next epoch
   starts. An epoch cut short by ``max_steps`` still restarts, and goes on with its next batch.
3. **At the step where ``max_steps`` was reached**, before the validation and the epoch end that the
   uninterrupted run still did: Lightning's ``_FitLoop.done`` stops before them. ``ResumableFitLoop.done``
   lets a run restored inside an epoch finish that epoch's iteration first.

Checkpoints written at validation end (``save_on_train_epoch_end=False``, the default with validation
data) and, without ``max_steps``, at train epoch end already resume exactly and keep Lightning's logic:
the validation is not repeated, the epoch's end (or the next epoch) runs. Epoch-interval LR schedulers step
in ``advance``, before ``on_train_batch_end``, so an epoch's last-batch checkpoint holds that step already.
Not covered: a checkpoint written in the middle of a validation epoch, and ``ReduceLROnPlateau`` (which
``NASModule`` cannot configure) after a restarted epoch.

``install_resumable_loops`` is called by ``NASModule.setup("fit")``, which Lightning runs before it restores
the loops (``Trainer._run``: ``_call_setup_hook``, then ``_checkpoint_connector.restore_training_state``),
so a plain ``pl.Trainer`` gets these loops. It changes the class of the loops the trainer built: the
subclasses add no state, so every setting (``max_epochs``, ``max_steps``, ...) and counter stays.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.loops import _Loop
from pytorch_lightning.loops import fit_loop as lightning_fit_loop
from pytorch_lightning.loops import training_epoch_loop as lightning_epoch_loop
from pytorch_lightning.loops.fetchers import _DataFetcher
from pytorch_lightning.loops.fit_loop import _FitLoop
from pytorch_lightning.loops.training_epoch_loop import _TrainingEpochLoop
from pytorch_lightning.utilities import rank_zero_warn
from typing_extensions import override

# Restored at on_train_batch_end inside an epoch: the batch ran, the rest of its loop iteration did not.
RESTARTED_BEFORE_ADVANCE_END = "restarted_before_advance_end"


class ResumableTrainingEpochLoop(_TrainingEpochLoop):
    """``_TrainingEpochLoop`` that runs the restored batch's ``on_advance_end`` (its validation) on resume."""

    # A class attribute: instances get this class by reassignment, so no __init__ of theirs runs.
    _finish_restored_batch: bool = False

    @property
    def restarted_before_advance_end(self) -> bool:
        return self._restart_stage == RESTARTED_BEFORE_ADVANCE_END

    @override
    def update_restart_stage(self) -> None:
        super().update_restart_stage()
        # The fit loop sets its stage before this one's; outside an epoch, Lightning's stage stands.
        if self.restarted_on_train_batch_end and self.trainer.fit_loop.restarted_mid_epoch:
            self._restart_stage = RESTARTED_BEFORE_ADVANCE_END

    @override
    def reset(self) -> None:
        # Set on every run, so a flag left by a run that never reached advance cannot skip a later batch.
        self._finish_restored_batch = self.restarted_before_advance_end
        if self._finish_restored_batch:
            self.batch_progress.increment_completed()  # where the uninterrupted loop was when on_advance_end began
            self._restart_stage = lightning_epoch_loop.RestartStage.RESTARTED_ON_LAST
        super().reset()

    @override
    def advance(self, data_fetcher: _DataFetcher) -> None:
        if self._finish_restored_batch:
            # No batch: Lightning's run() calls on_advance_end for the restored one next. Its validation starts
            # afresh, as Lightning's advance sets it before a batch.
            self._finish_restored_batch = False
            self.val_loop.restarting = False
            return
        super().advance(data_fetcher)


class ResumableFitLoop(_FitLoop):
    """``_FitLoop`` that resumes an epoch ended under ``max_steps`` without replaying it, and finishes a restored
    epoch's iteration before it checks ``max_steps``."""

    def _restored_inside_epoch(self) -> bool:
        progress = self.epoch_progress.current
        return self.restarting and progress.ready == progress.started == progress.processed + 1

    @property
    @override
    def done(self) -> bool:
        if self.max_batches != 0 and self._restored_inside_epoch():
            return False  # the restored epoch's iteration (its validation and end) ran in the uninterrupted run
        done = super().done
        progress = self.epoch_progress.current
        if done and self.restarting and progress.processed == progress.ready:
            # Restored after an epoch's end with nothing left to run: that epoch counts completed, as it did in
            # the uninterrupted run (Lightning does the same when it stops at max_epochs).
            progress.completed = progress.processed
        return done

    @override
    def update_restart_stage(self) -> None:
        super().update_restart_stage()
        if self.restarted_on_epoch_end and self.epoch_loop._num_ready_batches_reached():
            # Every batch of the epoch ran and so did its on_train_epoch_end hooks, up to the checkpoint: go on
            # with the next epoch, as Lightning does when the restart is not iteration-based.
            self._restart_stage = lightning_fit_loop.RestartStage.RESUMED_ON_EPOCH_END
            _Loop.restarting.fset(self, False)  # the fit loop's own setter keeps iteration-based runs restarting
            self.epoch_loop.update_restart_stage()


def install_resumable_loops(trainer: pl.Trainer) -> None:
    """Give ``trainer`` the resumable fit and epoch loops; call it before the loops are restored."""
    fit_loop = trainer.fit_loop
    epoch_loop = fit_loop.epoch_loop
    if isinstance(fit_loop, ResumableFitLoop) and isinstance(epoch_loop, ResumableTrainingEpochLoop):
        return
    known = type(fit_loop) in (_FitLoop, ResumableFitLoop) and type(epoch_loop) in (
        _TrainingEpochLoop, ResumableTrainingEpochLoop)
    # Restart stages came with Lightning 2.5; the logic here is written against 2.5/2.6.
    stages = hasattr(lightning_fit_loop, "RestartStage") and hasattr(lightning_epoch_loop, "RestartStage")
    if not known or not stages:
        rank_zero_warn(f"the trainer runs a {type(fit_loop).__name__} with a {type(epoch_loop).__name__} (or a "
                       "Lightning without restart stages), so nas-lightning cannot make a run resumed from a "
                       "checkpoint written at an epoch's last batch run that epoch's validation and end; resume from "
                       "checkpoints written at validation end")
        return
    fit_loop.__class__ = ResumableFitLoop
    epoch_loop.__class__ = ResumableTrainingEpochLoop
