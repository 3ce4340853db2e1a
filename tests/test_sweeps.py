"""The W&B sweep files of configs/sweeps/: each is a well-formed sweep whose ``command`` runs ``nas-lightning`` with
``${args}``; every parameter, at each grid value and at values drawn from each distribution, expanded the way the
W&B agent expands it (``wandb.sdk.launch.sweeps.utils.create_sweep_command_args``: ``--key=value``), parses as a
config key of the command's configs and sets exactly the value it names; and one trial of the smoke sweep runs a
short fit through the WandbLogger with ``WANDB_MODE=offline`` and leaves an offline run directory."""

from __future__ import annotations

import importlib.util
import math
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonargparse import Namespace
from typing_extensions import override
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from nas_lightning.cli import NASLightningCLI

ROOT = Path(__file__).parents[1]
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
#: Sweep files that need a method another change adds; checked once its class exists.
NEEDS = {"wpnas_bayes.yaml": "nas_lightning.methods.wpnas", "wpnas_beta2_grid.yaml": "nas_lightning.methods.wpnas"}
#: A flag naming a file that another command makes before the sweep (``nas-lightning train-predictor``).
PREDICTOR_FLAG = "--model.init_args.predictor="
#: A ``trainer.callbacks.<arg>`` parameter must reach this callback (jsonargparse gives the flag to the last callback
#: of the list so far; the sweep's command places ``${args}`` where that callback is last).
CALLBACK_OF = {"alpha": "ProjectionMatrixUpdate"}
TOP_KEYS = {"program", "name", "description", "method", "metric", "parameters", "command", "early_terminate",
            "run_cap"}


def _available(sweep: Path) -> bool:
    module = NEEDS.get(sweep.name)
    return module is None or importlib.util.find_spec(module) is not None


def _load(path: Path) -> dict[str, Any]:
    with path.open() as f:
        return yaml.safe_load(f)


# --- what the W&B server draws ----------------------------------------------------------------------------------

def _draws(spec: dict[str, Any], rng: random.Random) -> list[Any]:
    """Values the W&B search could give a parameter: every grid value, or the bounds and one random draw of a
    distribution (the distributions of the W&B sweep configuration reference that these files use)."""
    if "values" in spec:
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    low, high, q = spec["min"], spec["max"], spec.get("q", 1)
    kind = spec["distribution"]
    if kind == "int_uniform":
        return [low, high] + [rng.randint(low, high) for _ in range(1)]
    if kind == "uniform":
        return [float(low), float(high)] + [rng.uniform(low, high) for _ in range(1)]
    if kind == "log_uniform_values":
        return [float(low), float(high)] + [math.exp(rng.uniform(math.log(low), math.log(high))) for _ in range(1)]
    if kind == "q_log_uniform_values":
        draws = [math.exp(rng.uniform(math.log(low), math.log(high))) for _ in range(1)]
        return [int(round(v / q) * q) for v in [low, high, *draws]]
    raise AssertionError(f"distribution {kind!r} has no sampler in this test: add it")


def _cases(sweep: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Assignments that together give every parameter each of its values: the i-th holds the i-th value of each
    (cycling through the shorter lists)."""
    rng = random.Random(0)
    draws = {key: _draws(spec, rng) for key, spec in sweep["parameters"].items()}
    for i in range(max(map(len, draws.values()))):
        yield {key: values[i % len(values)] for key, values in draws.items()}


def agent_command(sweep: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The command line the W&B agent runs for ``params`` (wandb_agent.Agent._command_run's macro expansion)."""
    macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    macros.update(env=["/usr/bin/env"], interpreter=["python"], program=[sweep["program"]])
    command: list[str] = []
    for part in map(str, sweep["command"]):
        command += macros.get(part[2:-1], []) if part.startswith("${") and part.endswith("}") else [part]
    return command


# --- the CLI's parser, without running anything -----------------------------------------------------------------

class _ParserOnly(NASLightningCLI):
    """Builds ``nas-lightning``'s parser and stops: no parsing of sys.argv, no classes instantiated."""

    @override
    def parse_arguments(self, parser: Any, args: Any) -> None:
        self.config = Namespace(subcommand=None)

    @override
    def _parse_ckpt_path(self) -> None:
        pass

    @override
    def _set_seed(self) -> None:
        pass

    @override
    def before_instantiate_classes(self) -> None:
        pass

    @override
    def instantiate_classes(self) -> None:
        pass


@pytest.fixture(scope="module")
def parser() -> Any:
    return _ParserOnly([]).parser


def _without_args(sweep: dict[str, Any]) -> dict[str, Any]:
    return {**sweep, "command": [part for part in sweep["command"] if part != "${args}"]}


def _parse(parser: Any, command: list[str]) -> dict[str, Any]:
    assert command[:3] == ["/usr/bin/env", "nas-lightning", "fit"], command
    config = parser.parse_args(command[2:])
    return yaml.safe_load(parser.dump(config, skip_link_targets=True, format="yaml", skip_validation=True))["fit"]


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    if isinstance(tree, list) and tree and all(isinstance(x, dict) and "class_path" in x for x in tree):
        return {k: v for i, item in enumerate(tree) for k, v in _flatten(item, f"{prefix}{i}.").items()}
    return {prefix[:-1]: tree}


def _callback_key(config: dict[str, Any], arg: str, changed: set[str]) -> str:
    """The flattened key that ``--trainer.callbacks.<arg>`` set: in the callback the sweep meant it for."""
    callbacks = config["trainer"]["callbacks"]
    wanted = CALLBACK_OF.get(arg)
    for i, callback in enumerate(callbacks):
        key = f"trainer.callbacks.{i}.init_args.{arg}"
        if callback["class_path"].rpartition(".")[2] == wanted or (wanted is None and key in changed):
            return key
    raise AssertionError(f"no callback of the config takes {arg!r} for this sweep")


# --- the tests ----------------------------------------------------------------------------------------------------

def test_there_are_sweeps_of_every_method() -> None:
    names = {path.name for path in SWEEPS}
    for method in ("spos", "pcnas", "dinas", "reduced_sharing", "wpnas"):
        assert any(name.startswith(method) for name in names), method
    methods = {_load(path)["method"] for path in SWEEPS}
    assert {"grid", "bayes"} <= methods


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_file_is_well_formed(path: Path) -> None:
    sweep = _load(path)
    assert set(sweep) <= TOP_KEYS, f"unknown top-level keys {set(sweep) - TOP_KEYS}"
    assert sweep["method"] in ("grid", "random", "bayes")
    assert sweep["program"] == "nas-lightning"
    command = sweep["command"]
    assert command[:3] == ["${env}", "${program}", "fit"] and command.count("${args}") == 1
    if sweep["method"] != "grid":
        assert sweep["metric"]["goal"] in ("maximize", "minimize") and sweep["metric"]["name"]
    for key, spec in sweep["parameters"].items():
        if sweep["method"] == "grid":
            assert set(spec) <= {"values", "value"}, f"{key}: a grid sweep takes values only"
        for value in spec.get("values", []):
            assert isinstance(value, (int, float, str)) and not isinstance(value, bool), (key, value)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_parameters_parse_as_config_keys(path: Path, parser: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    if not _available(path):
        pytest.skip(f"{NEEDS[path.name]} does not exist yet")
    monkeypatch.chdir(ROOT)  # the agent runs the command from the repository root
    sweep = _load(path)
    base = _flatten(_parse(parser, agent_command(_without_args(sweep), {})))
    for params in _cases(sweep):
        config = _parse(parser, agent_command(sweep, params))
        flat = _flatten(config)
        changed = {key for key in set(flat) | set(base) if flat.get(key) != base.get(key)}
        reached = set()
        for key, value in params.items():
            prefix, _, arg = key.rpartition(".")
            where = _callback_key(config, arg, changed) if prefix == "trainer.callbacks" else key
            got = flat.get(where)
            assert got == pytest.approx(value), f"{path.name}: --{key}={value} set {where}={got}"
            reached.add(where)
        assert changed <= reached, f"{path.name}: {params} also changed {changed - reached}"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_extremes_build_the_method(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last values of every parameter, and the first ones of a method's own arguments, pass the constructors'
    checks (P >= 1, a prefix within the cells, ...): the CLI builds the model, data module and trainer without
    running."""
    if not _available(path):
        pytest.skip(f"{NEEDS[path.name]} does not exist yet")
    sweep = _load(path)
    rng = random.Random(0)
    draws = {key: _draws(spec, rng) for key, spec in sweep["parameters"].items()}
    monkeypatch.chdir(tmp_path)  # whatever the CLI creates goes here
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["nas-lightning"])  # the CLI is given its arguments, not pytest's
    # The first values too where the method's constructor checks them (P, S, groups, prefix, betas).
    checked = any(key.startswith("model.init_args.") and ".optimizer." not in key for key in draws)
    for pick in (-1, 0) if checked else (-1,):
        command = agent_command(sweep, {key: values[pick] for key, values in draws.items()})
        _make_predictor_file(command)
        cli = NASLightningCLI(command[3:], run=False)
        assert type(cli.trainer.logger).__name__ == "WandbLogger"


def _make_predictor_file(command: list[str]) -> None:
    """An untrained predictor for the run's own space, standing in for the file ``nas-lightning train-predictor``
    makes before a sweep that names one (construction loads it and checks its space)."""
    path = next((arg.removeprefix(PREDICTOR_FLAG) for arg in command if arg.startswith(PREDICTOR_FLAG)), None)
    if path is None or Path(path).exists():
        return
    from nas_lightning.predictors.file import save_predictor
    from nas_lightning.predictors.training import build_predictor

    without = [arg for arg in command[3:] if not arg.startswith((PREDICTOR_FLAG, "--model.init_args.beta1="))]
    space = NASLightningCLI(without, run=False).model.space
    save_predictor(path, build_predictor("supervised", space, seed=0), "supervised")


@pytest.mark.slow
def test_one_offline_trial_of_the_smoke_sweep(tmp_path: Path) -> None:
    """The agent's command for one draw of configs/sweeps/smoke_synthetic.yaml, cut to a few batches, runs to the
    end through the WandbLogger offline (nothing reaches the network) and leaves an offline run directory whose
    log holds the validation metric the sweep maximises, once per epoch the draw asked for."""
    from test_ranking_wandb import finished_run

    sweep = _load(ROOT / "configs" / "sweeps" / "smoke_synthetic.yaml")
    params = {"model.init_args.optimizer.init_args.lr": 0.03, "trainer.max_epochs": 2}
    command = agent_command(sweep, params)
    command[1] = str(Path(sys.executable).parent / "nas-lightning")
    out = tmp_path / "run"
    command += [f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
                "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
                "--trainer.enable_progress_bar=false"]
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(out), "WANDB_SILENT": "true",
           "WANDB_RUN_ID": "smoketrial", "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_API_KEY", None)
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = (out / "wandb").glob("offline-run-*-smoketrial")
    records = finished_run(run_dir)
    assert ("exit", {"exit_code": 0}) in records
    history = [row for kind, row in records if kind == "history"]
    epochs = sorted({row["epoch"] for row in history if "val/acc_mean" in row})
    assert epochs == [0, 1]
    assert all(0 <= row["val/acc_mean"] <= 100 for row in history if "val/acc_mean" in row)
