"""A run resumed from any checkpoint of a short fit continues exactly as the uninterrupted run
(``nas_lightning.loops``): for SPOS (cosine LR per epoch), PC-NAS (a shrink after every epoch) and DI-NAS
(controller updates after every epoch, projected updates), from a checkpoint at every step's
``on_train_batch_end`` (each epoch's last batch included, before its validation and its end), at every
validation end and at every train epoch end; also with a validation in the middle of each epoch, and with
``max_steps`` (iteration-based training, the last epoch cut short).

Compared: the sequence of what happens after the resume point (each step's arch and learning rate, each
epoch's start, each validation's inherited-weight accuracies, each epoch end's search state), then the final
weights, optimiser and scheduler state, search state (pool and its history with potentials; controller,
baseline, counters) and projection matrices."""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loops.fit_loop import _FitLoop
from pytorch_lightning.loops.training_epoch_loop import _TrainingEpochLoop
from typing_extensions import override

from callbacks.controller_step import ControllerStep
from callbacks.pool_shrinking import PoolShrinking
from callbacks.projection_matrix_update import ProjectionMatrixUpdate
from nas_lightning.data import SyntheticDataModule
from nas_lightning.loops import ResumableFitLoop, ResumableTrainingEpochLoop, install_resumable_loops
from nas_lightning.methods import DINAS, PCNAS, SPOS, SupernetModule
from nas_lightning.samplers.controller import ControllerSampler
from nas_lightning.spaces import ChainSpace

EPOCHS, STEPS = 3, 3  # 3 epochs of 3 steps: 9 step checkpoints, 3 at validation end, 3 at train epoch end
OPS3 = ("nor_conv_1x1", "nor_conv_3x3", "skip_connect")


def make_space() -> ChainSpace:
    return ChainSpace(num_layers=3, ops=OPS3, C=4, num_classes=4, in_channels=1, input_size=8)


def make_data() -> SyntheticDataModule:
    # 48 supernet-train images (3 steps of 16), 16 supernet-val (2 batches of 8).
    return SyntheticDataModule(num_classes=4, in_channels=1, image_size=8, num_train=64, num_test=8, noise=0.5,
                               batch_size=16, eval_batch_size=8, val_fraction=0.25, seed=0)


def sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)


def make_spos() -> SPOS:
    return SPOS(make_space(), seed=3, num_eval_archs=2, optimizer=sgd,
                lr_scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=EPOCHS))


def make_pcnas() -> PCNAS:
    return PCNAS(make_space(), seed=1, num_eval_archs=2, optimizer=sgd, pool_size=2, num_completions=3,
                 num_val_batches=2)


def make_dinas() -> DINAS:
    return DINAS(make_space(), partial(ControllerSampler, hidden_size=8, lr=0.05), seed=3, num_eval_archs=2,
                 optimizer=sgd)


def pcnas_callbacks() -> list[pl.Callback]:
    return [PoolShrinking(warmup_epochs=1, interval_epochs=1)]  # shrinks after epochs 1, 2 and 3 (1-based)


def dinas_callbacks() -> list[pl.Callback]:
    return [ControllerStep(start_epoch=1, steps_per_epoch=2, archs_per_step=2), ProjectionMatrixUpdate(alpha=1.0)]


METHODS: dict[str, tuple[Callable[[], SupernetModule], Callable[[], list[pl.Callback]]]] = {
    "spos": (make_spos, list),
    "pcnas": (make_pcnas, pcnas_callbacks),
    "dinas": (make_dinas, dinas_callbacks),
}


def _plain(value: Any) -> Any:
    """Exact, comparable copy: tensors become nested lists."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return copy.deepcopy(value)


class Record(pl.Callback):
    """What the run does, in order. Listed after the method's callbacks, so an epoch end's entry holds the
    search state after that epoch's shrink or controller updates; its state (checkpointed) is how many entries
    came before the checkpoint, so a resumed run knows where in the uninterrupted record it starts."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.start = 0

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.events.append(("epoch_start", trainer.current_epoch, trainer.global_step))

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.events.append(("step", trainer.global_step - 1, batch_idx, str(pl_module.current_arch), lr))

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the module's on_validation_epoch_end, which evaluates the archs (callbacks' run before it).
        results = sorted((str(a), acc) for a, acc in pl_module.eval_results.items())
        self.events.append(("validation", trainer.current_epoch, trainer.global_step, results))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.events.append(("epoch_end", trainer.current_epoch, trainer.global_step,
                            _plain(pl_module.sampler.state_dict())))

    @override
    def state_dict(self) -> dict[str, int]:
        return {"events": len(self.events)}

    @override
    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.start = state_dict["events"]


def checkpoints(root: Path) -> list[pl.callbacks.ModelCheckpoint]:
    """At every step's on_train_batch_end, at every validation end, at every train epoch end (``mode`` only
    tells the last two apart in the checkpoint: nothing is monitored)."""
    kw: dict[str, Any] = {"save_top_k": -1, "enable_version_counter": False}
    return [pl.callbacks.ModelCheckpoint(root / "step", every_n_train_steps=1, **kw),
            pl.callbacks.ModelCheckpoint(root / "validation_end", save_on_train_epoch_end=False, **kw),
            pl.callbacks.ModelCheckpoint(root / "epoch_end", save_on_train_epoch_end=True, mode="max", **kw)]


def fit(name: str, root: Path, callbacks: list[pl.Callback], ckpt_path: Path | None = None, **kw: Any
        ) -> tuple[SupernetModule, pl.Trainer, Record]:
    make_model, method_callbacks = METHODS[name]
    model, record = make_model(), Record()
    kw.setdefault("max_epochs", EPOCHS)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=root,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         enable_checkpointing=bool(callbacks), callbacks=[*method_callbacks(), record, *callbacks],
                         **kw)
    trainer.fit(model, datamodule=make_data(), ckpt_path=ckpt_path)
    return model, trainer, record


def _final_state(model: SupernetModule, trainer: pl.Trainer) -> dict[str, Any]:
    state: dict[str, Any] = {
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "sampler": _plain(model.sampler.state_dict()),
        "optimizer": _plain(trainer.optimizers[0].state_dict()),
        "schedulers": [_plain(c.scheduler.state_dict()) for c in trainer.lr_scheduler_configs],
    }
    for cb in trainer.callbacks:
        if isinstance(cb, ProjectionMatrixUpdate):
            state["projection"] = _plain(cb.state_dict())
    return state


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: extra threads only spin on a loaded CI machine
    yield
    torch.set_num_threads(threads)


EPOCH = ["epoch_start", *["step"] * STEPS, "validation", "epoch_end"]
# name: (method, Trainer arguments, what the uninterrupted run does, in order)
CASES: dict[str, tuple[str, dict[str, Any], list[str]]] = {
    "spos": ("spos", {}, EPOCH * EPOCHS),
    "pcnas": ("pcnas", {}, EPOCH * EPOCHS),
    "dinas": ("dinas", {}, EPOCH * EPOCHS),
    # Validation after the 2nd of 3 batches: a checkpoint written at that batch's end comes before it.
    "spos-mid-epoch-validation": ("spos", {"val_check_interval": 2},
                                  ["epoch_start", "step", "step", "validation", "step", "epoch_end"] * EPOCHS),
    # Iteration-based: max_steps ends the last epoch after its 2nd batch (its end still runs, no validation).
    "dinas-max-steps": ("dinas", {"max_steps": 2 * STEPS + 2, "max_epochs": -1},
                        EPOCH * 2 + ["epoch_start", "step", "step", "epoch_end"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_resume_from_every_checkpoint_gives_the_uninterrupted_run(case: str, tmp_path: Path) -> None:
    name, kw, kinds = CASES[case]
    pl.seed_everything(0)
    full, full_trainer, full_record = fit(name, tmp_path / "full", checkpoints(tmp_path / "ckpt"), **kw)
    assert isinstance(full_trainer.fit_loop, ResumableFitLoop)
    assert isinstance(full_trainer.fit_loop.epoch_loop, ResumableTrainingEpochLoop)
    assert [e[0] for e in full_record.events] == kinds
    expected = _final_state(full, full_trainer)
    if name == "pcnas":
        assert len(full.pool.history) == 3 and full.pool.is_complete(full.space)
    if name == "dinas":
        assert full.controller.num_updates == 2 * 2 and full.controller.last_update_epoch == 2
    if name == "spos":  # the schedule moved each epoch (a step's rate is read after it, the epoch's last after
        # the epoch's scheduler step)
        assert len({e[4] for e in full_record.events if e[0] == "step"}) == EPOCHS + 1

    # A checkpoint after every step, every validation and every epoch end.
    paths = sorted((tmp_path / "ckpt").rglob("*.ckpt"))
    assert len(paths) == sum(k in ("step", "validation", "epoch_end") for k in kinds)
    next_after: set[tuple[str, str]] = set()  # (where a checkpoint was written, what the run did next)
    for i, path in enumerate(paths):
        pl.seed_everything(100 + i)  # a resumed process starts from other global RNG state
        resumed, trainer, record = fit(name, tmp_path / f"resumed{i}", [], ckpt_path=path, **kw)
        where = f"resumed from {path.parent.name}/{path.name}"
        assert record.start > 0, where
        assert record.events == full_record.events[record.start:], where
        got = _final_state(resumed, trainer)
        assert got.keys() == expected.keys(), where
        for key in expected:
            assert got[key] == expected[key], f"{key}, {where}"
        for (p, a), b in zip(full.supernet.state_dict().items(), resumed.supernet.state_dict().values()):
            assert torch.equal(a, b), f"{p}, {where}"
        next_after.add((path.parent.name, kinds[record.start] if record.start < len(kinds) else "end"))
    # Among them: a step's checkpoint written before the validation that followed the step, one written at
    # validation end before what followed it (the epoch's end, or the epoch's next step), one written at epoch end
    # before the next epoch.
    after_validation = kinds[kinds.index("validation") + 1]
    assert {("step", "validation"), ("validation_end", after_validation), ("epoch_end", "epoch_start")} <= next_after


def test_the_loops_are_installed_keeping_the_trainers_settings_and_a_custom_loop_is_left_alone(
        tmp_path: Path) -> None:
    trainer = pl.Trainer(max_epochs=7, min_epochs=2, max_steps=50, min_steps=3, logger=False,
                         default_root_dir=tmp_path)
    fit_loop, epoch_loop = trainer.fit_loop, trainer.fit_loop.epoch_loop
    install_resumable_loops(trainer)
    install_resumable_loops(trainer)  # a second fit on the same trainer
    assert trainer.fit_loop is fit_loop and fit_loop.epoch_loop is epoch_loop
    assert type(fit_loop) is ResumableFitLoop and type(epoch_loop) is ResumableTrainingEpochLoop
    assert (trainer.max_epochs, trainer.min_epochs, trainer.max_steps, trainer.min_steps) == (7, 2, 50, 3)

    class OwnEpochLoop(_TrainingEpochLoop):
        pass

    other = pl.Trainer(logger=False, default_root_dir=tmp_path)
    other.fit_loop.epoch_loop = OwnEpochLoop(other)
    with pytest.warns(UserWarning, match="runs a _FitLoop with a OwnEpochLoop"):
        install_resumable_loops(other)
    assert type(other.fit_loop) is _FitLoop and type(other.fit_loop.epoch_loop) is OwnEpochLoop
