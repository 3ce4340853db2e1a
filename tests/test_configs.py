"""Every experiment config in configs/ parses and builds, alone and stacked with the add-on configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from nas_lightning.cli import NASLightningCLI
from nas_lightning.methods import NASModule, check_space_matches_data

CONFIGS = Path(__file__).parents[1] / "configs"
EXPERIMENTS = sorted(p for p in CONFIGS.glob("*/*.yaml") if "model:\n  class_path" in p.read_text())
ADD_ONS = ["search/evolution.yaml", "search/evolution_quick.yaml", "ranking/ranking.yaml", "logger/wandb.yaml"]


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_experiment_config_builds(config: Path) -> None:
    cli = NASLightningCLI(["-c", str(config), "--trainer.logger=false"], run=False)
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
