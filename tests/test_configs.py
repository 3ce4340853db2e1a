"""Every experiment config in configs/ parses and builds, alone and stacked with the add-on configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from nas_lightning.cli import NASLightningCLI
from nas_lightning.methods import NASModule, check_space_matches_data

CONFIGS = Path(__file__).parents[1] / "configs"
EXPERIMENTS = sorted(p for p in CONFIGS.glob("*/*.yaml") if "model:\n  class_path" in p.read_text())
ADD_ONS = ["search/evolution.yaml", "search/evolution_quick.yaml", "ranking/ranking.yaml", "logger/wandb.yaml"]


#: Datasets that are not on this machine: the config is built against an empty folder of the right name
#: (their data modules check only that it exists until ``setup``).
ABSENT_DATA = {"CIFAR10DataModule": "cifar-10-batches-py", "CIFAR100DataModule": "cifar-100-python"}


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_experiment_config_builds(config: Path, tmp_path: Path) -> None:
    args = ["-c", str(config), "--trainer.logger=false"]
    for data_class, folder in ABSENT_DATA.items():
        if f"nas_lightning.data.{data_class}\n" in config.read_text():
            (tmp_path / folder).mkdir()
            args.append(f"--data.init_args.root={tmp_path}")
    cli = NASLightningCLI(args, run=False)
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
