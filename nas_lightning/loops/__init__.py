"""Lightning loops that nas-lightning methods run under (installed by ``NASModule.setup``)."""

from nas_lightning.loops.resumable import ResumableFitLoop, ResumableTrainingEpochLoop, install_resumable_loops

__all__ = ["ResumableFitLoop", "ResumableTrainingEpochLoop", "install_resumable_loops"]
