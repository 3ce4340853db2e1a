"""Every experiment config in configs/ parses and builds, alone and stacked with the add-on configs."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning import Callback
from typing_extensions import override

from nas_lightning.cli import NASLightningCLI
from nas_lightning.methods import NASModule, check_space_matches_data

CONFIGS = Path(__file__).parents[1] / "configs"
EXPERIMENTS = sorted(p for p in CONFIGS.glob("*/*.yaml") if "model:\n  class_path" in p.read_text())
ADD_ONS = ["search/evolution.yaml", "search/evolution_quick.yaml", "ranking/ranking.yaml", "logger/wandb.yaml"]


#: Datasets that are not on this machine: the config is built against an empty folder of the right name
#: (their data modules check only that it exists until ``setup``).
ABSENT_DATA = {"CIFAR10DataModule": "cifar-10-batches-py", "CIFAR100DataModule": "cifar-100-python"}


def stand_ins(config: Path, tmp_path: Path) -> list[str]:
    """Arguments that point a config at empty stand-ins for what this machine lacks: CIFAR folders, an
    ImageNet folder tree with the config's number of classes, and a latency table (all entries 1 ms) for
    the config's space. The config itself is built as written."""
    text = config.read_text()
    cfg = yaml.safe_load(text)
    args = []
    for data_class, folder in ABSENT_DATA.items():
        if f"nas_lightning.data.{data_class}\n" in text:
            (tmp_path / folder).mkdir()
            args.append(f"--data.init_args.root={tmp_path}")
    space_cfg = cfg["model"]["init_args"]["space"]
    module, _, name = space_cfg["class_path"].rpartition(".")
    space_args = dict(space_cfg.get("init_args", {}))
    if "nas_lightning.data.ImageFolderDataModule\n" in text:
        # ImageNet: 1000 class folders; the CLI links classes, channels and size from the data module.
        space_args.update(num_classes=1000, in_channels=3, input_size=cfg["data"]["init_args"]["image_size"])
        for split in ("train", "val"):
            for c in range(1000):
                (tmp_path / "imagenet" / split / f"class{c:04d}").mkdir(parents=True)
        args.append(f"--data.init_args.root={tmp_path / 'imagenet'}")
    sampler_args = cfg["model"]["init_args"].get("sampler", {}).get("init_args", {})
    if sampler_args.get("latency_table"):
        space = getattr(importlib.import_module(module), name)(**space_args)
        table = {"metadata": {"space": space.config()}, "fixed": {"stem": 1.0},
                 "layers": [{op: 1.0 for op in d.choices} for d in space.decisions]}
        (tmp_path / "latency.json").write_text(json.dumps(table))
        args.append(f"--model.init_args.sampler.init_args.latency_table={tmp_path / 'latency.json'}")
    return args


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_experiment_config_builds(config: Path, tmp_path: Path) -> None:
    cli = NASLightningCLI(["-c", str(config), "--trainer.logger=false", *stand_ins(config, tmp_path)], run=False)
    assert isinstance(cli.model, NASModule)
    check_space_matches_data(cli.model.space, cli.datamodule)


@pytest.mark.parametrize("add_on", ADD_ONS)
def test_add_on_configs_stack(add_on: str) -> None:
    cli = NASLightningCLI(["-c", str(CONFIGS / "spos" / "chain_synthetic.yaml"), "-c", str(CONFIGS / add_on)],
                          run=False)
    names = {type(c).__name__ for c in cli.trainer.callbacks} | {type(lg).__name__ for lg in cli.trainer.loggers}
    expected = {"search/evolution.yaml": "EvolutionSearch", "search/evolution_quick.yaml": "EvolutionSearch",
                "ranking/ranking.yaml": "RankingEvaluation", "logger/wandb.yaml": "WandbLogger"}[add_on]
    assert expected in names


class _KilledAtEpoch(Callback):
    """Stands in for a run killed when epoch ``epoch`` starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


def test_every_config_leaves_a_checkpoint_after_each_epoch(tmp_path: Path) -> None:
    """Lightning writes ``last.ckpt`` at an epoch's end only when a top-k checkpoint was saved, so
    ``save_top_k: 0`` leaves nothing to resume from until training ends. No config may set it, and the
    configs' checkpoint settings leave ``last.ckpt`` of epoch 0 behind a run killed as epoch 1 starts."""
    for config in EXPERIMENTS:
        for callback in yaml.safe_load(config.read_text())["trainer"].get("callbacks") or []:
            if callback["class_path"].endswith("ModelCheckpoint"):
                assert callback.get("init_args", {}).get("save_top_k", 1) != 0, config
    config = CONFIGS / "spos" / "chain_synthetic.yaml"
    cli = NASLightningCLI(["-c", str(config), "--trainer.logger=false", "--trainer.max_epochs=3",
                           f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"], run=False)
    cli.trainer.callbacks.append(_KilledAtEpoch(1))
    with pytest.raises(SystemExit):  # Lightning turns the interrupt into a graceful stop, then exits
        cli.trainer.fit(cli.model, cli.datamodule)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file() and torch.load(last, weights_only=False)["epoch"] == 0
