"""SPOS: the sampled arch is a function of the step, validation evaluates archs with inherited
weights, and a run resumed from a checkpoint ends where an uninterrupted one does."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from nas_lightning.data import SyntheticDataModule
from nas_lightning.evaluation import evaluate_archs
from nas_lightning.methods import SPOS
from nas_lightning.samplers import UniformSampler
from nas_lightning.spaces import ChainSpace


def make_space() -> ChainSpace:
    return ChainSpace(num_layers=3, C=8, num_classes=4, in_channels=1, input_size=12)


def make_data(**kw) -> SyntheticDataModule:
    return SyntheticDataModule(num_classes=4, in_channels=1, image_size=12, num_train=256, num_test=64,
                               batch_size=32, val_fraction=0.25, seed=0, noise=0.5, **kw)


def make_model(**kw) -> SPOS:
    return SPOS(make_space(), seed=3, optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
                num_eval_archs=4, **kw)


class ArchLog(pl.Callback):
    def __init__(self) -> None:
        self.steps: list[tuple[int, str]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append((trainer.global_step - 1, str(pl_module.current_arch)))


def trainer(tmp_path: Path, max_epochs: int, callbacks=(), **kw) -> pl.Trainer:
    return pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=list(callbacks), **kw)


def test_spos_trains_the_arch_of_each_step_and_learns(tmp_path: Path) -> None:
    pl.seed_everything(0)
    model, log = make_model(), ArchLog()
    t = trainer(tmp_path, 6, [log], enable_checkpointing=False)
    t.fit(model, datamodule=make_data())
    expected = UniformSampler(make_space(), seed=3)
    assert [a for _, a in log.steps] == [str(expected.sample(s)) for s, _ in log.steps]
    assert len({a for _, a in log.steps}) > 5
    # The synthetic classes are separable: the supernet's archs end well above chance (25%).
    assert set(model.eval_results) == set(model.eval_archs)
    assert max(model.eval_results.values()) > 60.0
    assert "train/loss" in t.logged_metrics and "val/acc_mean" in t.logged_metrics


def test_validation_numbers_equal_the_evaluator_on_the_same_batches(tmp_path: Path) -> None:
    pl.seed_everything(0)
    model, data = make_model(bn_recalibration=2), make_data()
    t = trainer(tmp_path, 1, enable_checkpointing=False)
    t.fit(model, datamodule=data)
    t.validate(model, datamodule=data, verbose=False)
    batches = list(data.val_dataloader())
    calib = []
    for x, y in data.train_dataloader():
        calib.append((x, y))
        if len(calib) == 2:
            break
    ref = evaluate_archs(model.supernet, model.eval_archs, batches, calib).accuracy
    assert torch.allclose(torch.tensor([model.eval_results[a] for a in model.eval_archs], dtype=ref.dtype), ref)


def test_resume_gives_the_uninterrupted_run(tmp_path: Path) -> None:
    pl.seed_everything(0)
    full, full_log = make_model(), ArchLog()
    trainer(tmp_path / "full", 3, [full_log], enable_checkpointing=False).fit(full, datamodule=make_data())

    pl.seed_everything(0)
    first = make_model()
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    trainer(tmp_path / "a", 1, [ckpt]).fit(first, datamodule=make_data())
    pl.seed_everything(123)  # a resumed process starts from other global RNG state
    resumed, resumed_log = make_model(), ArchLog()
    trainer(tmp_path / "b", 3, [resumed_log]).fit(resumed, datamodule=make_data(),
                                                   ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))

    n_first = len(full_log.steps) - len(resumed_log.steps)
    assert n_first > 0 and full_log.steps[n_first:] == resumed_log.steps
    for (name, p), q in zip(full.supernet.named_parameters(), resumed.supernet.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)


def test_space_that_mismatches_the_data_is_a_clear_error(tmp_path: Path) -> None:
    model = SPOS(ChainSpace(num_layers=2, C=4, num_classes=7, in_channels=1, input_size=12))
    with pytest.raises(ValueError, match="num_classes=7"):
        trainer(tmp_path, 1, enable_checkpointing=False).fit(model, datamodule=make_data())


@pytest.mark.parametrize("augment", [False, True], ids=["plain", "augmented"])
def test_resume_from_a_mid_epoch_checkpoint_gives_the_uninterrupted_run(tmp_path: Path, augment: bool) -> None:
    """Killed after step 9 of 3 x 6 steps: the resumed run trains the remaining batches of that epoch
    (not the epoch again from its start), with the same crops and flips, and ends with the uninterrupted
    run's archs and weights."""
    pl.seed_everything(0)
    full, full_log = make_model(), ArchLog()
    trainer(tmp_path / "full", 3, [full_log], enable_checkpointing=False).fit(full,
                                                                              datamodule=make_data(augment=augment))

    pl.seed_everything(0)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=9, save_top_k=-1)
    trainer(tmp_path / "a", 3, [ckpt], max_steps=9).fit(make_model(), datamodule=make_data(augment=augment))
    (path,) = (tmp_path / "ckpt").glob("*step=9.ckpt")
    pl.seed_everything(1)
    resumed, resumed_log = make_model(), ArchLog()
    trainer(tmp_path / "b", 3, [resumed_log]).fit(resumed, datamodule=make_data(augment=augment),
                                                   ckpt_path=str(path))

    assert [s for s, _ in resumed_log.steps] == list(range(9, 18))
    assert full_log.steps[9:] == resumed_log.steps
    for (name, p), q in zip(full.supernet.named_parameters(), resumed.supernet.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)


def test_a_method_seed_beside_another_data_seed_logs_both(tmp_path: Path) -> None:
    """Lightning refuses to merge module and data hparams that share a key with different values; the data
    module's reach the logger under ``data.``, so a seed sweep over the method with a fixed split runs."""
    model = SPOS(make_space(), seed=1, num_eval_archs=1)
    logger = pl.loggers.CSVLogger(tmp_path, name="logs")
    pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=logger, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False).fit(model, datamodule=make_data())
    hparams = yaml.safe_load(Path(logger.log_dir, "hparams.yaml").read_text())
    assert hparams["seed"] == 1 and hparams["data.seed"] == 0 and hparams["data.batch_size"] == 32
