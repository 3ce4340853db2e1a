"""``--ckpt_path`` gives state, never settings: what the config and flags say runs, or the run is refused
naming the conflict (``NASLightningCLI``). A checkpoint of another method, another space, or a resume that
would change the training is refused; evaluation settings at ``validate`` are the config's; what is taken
from the checkpoint is said; a file that is not a readable checkpoint is named."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from nas_lightning.cli import SETTINGS_KEY, CheckpointError, NASLightningCLI

SPACE = {"class_path": "nas_lightning.spaces.ChainSpace",
         "init_args": {"num_layers": 2, "ops": ["nor_conv_1x1", "skip_connect"], "C": 4}}
DATA = {"class_path": "nas_lightning.data.SyntheticDataModule",
        "init_args": {"num_classes": 3, "in_channels": 1, "image_size": 8, "num_train": 256, "num_test": 64,
                      "noise": 0.5, "batch_size": 32, "val_fraction": 0.25}}


def write_config(root: Path, max_epochs: int = 1) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": max_epochs, "accelerator": "cpu", "devices": 1, "default_root_dir": str(root),
                    "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0,
                    "logger": False,
                    "callbacks": [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(root / "ckpt"), "save_last": True,
                                                 "save_top_k": 0}}]},
        "model": {"class_path": "nas_lightning.methods.SPOS",
                  "init_args": {"space": SPACE, "seed": 0, "num_eval_archs": 3,
                                "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}}}},
        "data": DATA,
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-epoch SPOS run: its config and its last.ckpt (trained with bn_recalibration 0, 3 eval archs)."""
    root = tmp_path_factory.mktemp("spos")
    config = write_config(root)
    NASLightningCLI(["fit", "-c", str(config)])
    return config, root / "ckpt" / "last.ckpt"


def edited(ckpt: Path, tmp_path: Path, edit: Any) -> Path:
    """A copy of ``ckpt`` with ``edit(checkpoint)`` applied."""
    checkpoint = torch.load(ckpt, weights_only=False)
    edit(checkpoint)
    path = tmp_path / "edited.ckpt"
    torch.save(checkpoint, path)
    return path


def messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


def test_checkpoints_record_the_run_settings(trained: tuple[Path, Path]) -> None:
    settings = torch.load(trained[1], weights_only=True)[SETTINGS_KEY]
    assert settings["model"]["class_path"] == "nas_lightning.methods.SPOS"
    assert settings["model"]["init_args"]["space"]["init_args"]["C"] == 4
    assert settings["data"]["init_args"]["num_train"] == 256


def test_validate_uses_the_evaluation_settings_written_now(trained: tuple[Path, Path], tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    config, ckpt = trained
    cli = NASLightningCLI(["validate", "-c", str(config), "--model.init_args.bn_recalibration", "2",
                           "--model.init_args.num_eval_archs", "2", "--trainer.default_root_dir", str(tmp_path),
                           "--ckpt_path", str(ckpt)])
    # Lightning's CLI put the checkpoint's bn_recalibration 0 and 3 eval archs over the flags.
    assert cli.model.bn_recalibration == 2 and cli.model.hparams["bn_recalibration"] == 2
    assert len(cli.model.eval_archs) == 2 and len(cli.model.eval_results) == 2
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["model"]["init_args"]["bn_recalibration"] == 2
    log = messages(caplog)
    assert "model.init_args.bn_recalibration: checkpoint 0, config 2" in log
    assert "model.init_args.num_eval_archs: checkpoint 3, config 2" in log
    (restored,) = [line for line in log.splitlines() if "restoring" in line]
    assert str(ckpt) in restored and "weights" in restored and "nas_sampler" in restored
    assert "optimiser" not in restored  # validate restores no optimiser or loop position


def _claim_pcnas(checkpoint: dict[str, Any]) -> None:
    checkpoint[SETTINGS_KEY]["model"]["class_path"] = "nas_lightning.methods.pcnas.PCNAS"
    checkpoint["hyper_parameters"]["_class_path"] = "nas_lightning.methods.pcnas.PCNAS"


@pytest.mark.parametrize("record", [True, False], ids=["settings_record", "hyperparameters_only"])
def test_a_checkpoint_of_another_method_is_refused(trained: tuple[Path, Path], tmp_path: Path, record: bool) -> None:
    def edit(checkpoint: dict[str, Any]) -> None:
        _claim_pcnas(checkpoint)
        if not record:  # a checkpoint written before runs recorded their settings
            del checkpoint[SETTINGS_KEY]

    ckpt = edited(trained[1], tmp_path, edit)
    for subcommand in ("validate", "fit"):
        with pytest.raises(CheckpointError) as error:
            NASLightningCLI([subcommand, "-c", str(trained[0]), "--ckpt_path", str(ckpt)])
        message = str(error.value)
        assert str(ckpt) in message and "nas_lightning.methods.pcnas.PCNAS" in message
        assert "nas_lightning.methods.spos.SPOS" in message


def test_one_class_by_two_import_paths_is_the_same_class(trained: tuple[Path, Path], tmp_path: Path) -> None:
    def edit(checkpoint: dict[str, Any]) -> None:
        model = checkpoint[SETTINGS_KEY]["model"]
        model["class_path"] = "nas_lightning.methods.spos.SPOS"  # the config says nas_lightning.methods.SPOS
        model["init_args"]["space"]["class_path"] = "nas_lightning.spaces.chain.ChainSpace"

    cli = NASLightningCLI(["validate", "-c", str(trained[0]), "--trainer.default_root_dir", str(tmp_path),
                           "--ckpt_path", str(edited(trained[1], tmp_path, edit))])
    assert len(cli.model.eval_results) == 3


def test_a_checkpoint_of_another_space_is_refused(trained: tuple[Path, Path]) -> None:
    config, ckpt = trained
    with pytest.raises(CheckpointError, match=r"space.init_args.C: checkpoint 4, config 8"):
        NASLightningCLI(["validate", "-c", str(config), "--model.init_args.space.init_args.C", "8",
                         "--ckpt_path", str(ckpt)])


def test_resume_refuses_a_setting_that_changes_the_training(trained: tuple[Path, Path]) -> None:
    config, ckpt = trained
    with pytest.raises(CheckpointError) as error:
        NASLightningCLI(["fit", "-c", str(config), "--model.init_args.seed", "7", "--data.init_args.batch_size", "16",
                         "--ckpt_path", str(ckpt)])
    message = str(error.value)
    assert "model.init_args.seed: checkpoint 0, config 7" in message
    assert "data.init_args.batch_size: checkpoint 32, config 16" in message
    with pytest.raises(CheckpointError, match=r"optimizer.init_args.lr: checkpoint 0.05, config 0.1"):
        NASLightningCLI(["fit", "-c", str(config), "--model.init_args.optimizer.init_args.lr", "0.1",
                         "--ckpt_path", str(ckpt)])


def test_resume_refuses_another_schedule_of_a_training_callback(trained: tuple[Path, Path], tmp_path: Path) -> None:
    def edit(checkpoint: dict[str, Any]) -> None:  # as if the run had trained with PoolShrinking(interval_epochs=1)
        checkpoint[SETTINGS_KEY]["trainer"]["callbacks"]["PoolShrinking"] = {
            "class_path": "callbacks.PoolShrinking", "init_args": {"warmup_epochs": 1, "interval_epochs": 1}}

    extra = tmp_path / "shrink.yaml"
    extra.write_text(yaml.safe_dump({"trainer": {"callbacks+": [
        {"class_path": "callbacks.PoolShrinking", "init_args": {"warmup_epochs": 1, "interval_epochs": 2}}]}}))
    with pytest.raises(CheckpointError, match=r"PoolShrinking.init_args.interval_epochs: checkpoint 1, config 2"):
        NASLightningCLI(["fit", "-c", str(trained[0]), "-c", str(extra), "--ckpt_path",
                         str(edited(trained[1], tmp_path, edit))])


def test_resume_applies_and_says_a_harmless_change(trained: tuple[Path, Path], tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    config, ckpt = trained
    root = tmp_path / "resumed"
    shutil.copytree(ckpt.parent, root / "ckpt")
    cli = NASLightningCLI(["fit", "-c", str(config), "--trainer.max_epochs", "2", "--model.init_args.num_eval_archs",
                           "1", "--trainer.callbacks.dirpath", str(root / "ckpt"), "--ckpt_path",
                           str(root / "ckpt" / "last.ckpt")])
    assert cli.trainer.current_epoch == 2 and len(cli.model.eval_results) == 1
    log = messages(caplog)
    assert "model.init_args.num_eval_archs: checkpoint 3, config 1" in log
    assert "trainer.callbacks.ModelCheckpoint.init_args.dirpath" in log  # where checkpoints go: said, not refused
    (restored,) = [line for line in log.splitlines() if "restoring" in line]
    assert "optimiser state" in restored and "loop position (epoch " in restored and "global step 6)" in restored


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "not_lightning", "missing"])
def test_an_unreadable_checkpoint_is_named(trained: tuple[Path, Path], tmp_path: Path, damage: str) -> None:
    data = trained[1].read_bytes()
    path = tmp_path / f"{damage}.ckpt"
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"hello world" * 10)
    elif damage == "not_lightning":
        torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError) as error:
        NASLightningCLI(["validate", "-c", str(trained[0]), "--ckpt_path", str(path)])
    message = str(error.value)
    assert str(path) in message and "\n" not in message and len(message) < 600
