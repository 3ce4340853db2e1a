"""The ``nas-lightning`` command.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI subcommands over a method
(``model``) and a data module (``data``) chosen by ``class_path`` in YAML. Search and ranking run as
callbacks of ``validate``. More commands (``nas_lightning/commands/``) need no Trainer of their own:

- ``nas-lightning cost``: params and FLOPs of given archs for a configured space, no data needed.
- ``nas-lightning ground-truth``: stand-alone training of a sample of archs with several seeds.
- ``nas-lightning acquire-gt``: WPNAS step 2, archs fine-tuned from a supernet's inherited weights.
- ``nas-lightning train-predictor``: WPNAS step 3, a few-shot or supervised accuracy predictor.
- ``nas-lightning compare``: every method of a study at equal cost, one table against the GT.
- ``nas-lightning compare-disturbance``: the DI-NAS section 5.3 table over groups of runs and seeds.
- ``nas-lightning ranking-variance`` and ``interference``: the Deeper-Insights measurements.
- ``nas-lightning measure-latency``: a PC-NAS latency lookup table, measured on this machine's device.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from operator import attrgetter
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities.rank_zero import rank_zero_info
from typing_extensions import override

from nas_lightning.data.base import SplitDataModule
from nas_lightning.methods.base import NASModule
from nas_lightning.spaces.base import short_repr
from nas_lightning.utils.wandb_logging import finish_wandb_runs

#: Data module attribute -> search-space argument, linked by the CLI.
DATA_TO_SPACE = {"num_classes": "num_classes", "in_channels": "in_channels", "image_size": "input_size"}

#: Checkpoint key under which ``SettingsRecord`` keeps the settings of the run that wrote it.
SETTINGS_KEY = "nas_lightning_settings"

#: Settings a resumed ``fit`` may change (applied and said): the archs validation reports (nothing trains on
#: them), where the data is read from, and the global seed (every draw of the project has its own seeded
#: generator, and the weights come from the checkpoint).
RESUME_MAY_CHANGE = frozenset({
    "model.init_args.eval_archs", "model.init_args.num_eval_archs", "model.init_args.eval_seed",
    "data.init_args.root", "data.init_args.download", "data.init_args.num_workers", "seed_everything",
})

#: Callbacks whose arguments are part of a method's training (PC-NAS's shrink schedule, DI-NAS's controller
#: schedule and projection, WPNAS's policy schedule, DC-NAS's re-clustering): a resumed ``fit`` refuses changes
#: to them. Named, as the library never imports ``callbacks``; any other callback's arguments are the config's,
#: said when they differ.
TRAINING_CALLBACKS = frozenset({"PoolShrinking", "ControllerStep", "ProjectionMatrixUpdate", "PolicyStep",
                                "SharingStateUpdate"})

#: ``--ckpt_path`` values (before any ``:``) that Lightning resolves itself rather than a file.
_LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")

#: Top-level checkpoint keys Lightning itself writes; any other key is a module's or data module's own state.
_LIGHTNING_KEYS = frozenset({
    "epoch", "global_step", "pytorch-lightning_version", "state_dict", "loops", "callbacks", "optimizer_states",
    "lr_schedulers", "hparams_name", "hyper_parameters", "datamodule_hparams_name", "datamodule_hyper_parameters",
    SETTINGS_KEY,
})


class CheckpointError(ValueError):
    """A ``--ckpt_path`` that cannot be read, or whose run contradicts the config and flags."""


class NASLightningCLI(LightningCLI):
    """LightningCLI over any ``NASModule`` and any ``SplitDataModule``; optimisers are constructor
    arguments of the methods (``model.init_args.optimizer``), so the CLI adds none of its own. The
    space's ``num_classes``, ``in_channels`` and ``input_size`` are linked from the data module.

    ``--ckpt_path`` gives state, never settings: what the config files and flags say is what runs, or the
    run is refused with a message that names the conflict. (Lightning's own CLI would put the method class
    and every saved hyperparameter of the checkpoint over them.) Every checkpoint records the model and data
    settings and the callbacks' arguments of its run (``SettingsRecord``); with ``--ckpt_path`` they are
    compared with the ones written now:

    - another method class than the config's is an error, naming both classes and the checkpoint;
    - another search space is an error (the weights belong to the space they were trained on);
    - ``validate``/``test``/``predict``: every other setting is the config's (evaluation and search settings
      such as ``bn_recalibration``, ``num_eval_archs``, ``eval_archs``, the data, callbacks' arguments and
      output folders); the model and data settings that differ from the checkpoint's are listed in one info
      line;
    - ``fit`` (resume): a setting in ``RESUME_MAY_CHANGE``, or an argument of a callback outside
      ``TRAINING_CALLBACKS`` (checkpointing, logging, measurements), that differs is applied and said; any
      other that differs would change the training (the sampler, the method's or the data's seed, the
      optimiser and scheduler, batch sizes, the split, PC-NAS or DI-NAS arguments and their callbacks'
      schedules, ``bn_recalibration``, which PC-NAS potentials and DI-NAS rewards use), so the resume is
      refused, naming each key, the checkpoint's value and the config's value. Trainer settings (epochs,
      devices, precision) are not compared.

    One info line says what the checkpoint gives: weights, the module's own state (the sampler's search
    state), callback states, and for ``fit`` the optimiser and scheduler state and the loop position. A
    checkpoint written before settings were recorded is compared on the hyperparameters it saved. A file
    that is empty, truncated or not a checkpoint fails before anything is built, naming it.
    """

    def __init__(self, args: Sequence[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=NASModule,
            datamodule_class=SplitDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            args=list(args) if args is not None else None,
            run=run,
        )

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        link_data_to_space(parser, "data", "model.init_args.space")

    @override
    def _parse_ckpt_path(self) -> None:
        # Replaces LightningCLI's, which parses the checkpoint's hyperparameters over the config.
        subcommand = self.config.get("subcommand")
        self._settings = run_settings(self.parser, self.config, subcommand)
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path is None or str(ckpt_path).split(":")[0] in _LIGHTNING_CKPT_NAMES or "://" in str(ckpt_path):
            return  # resolved by Lightning (the last or best checkpoint, a registry, a remote file)
        checkpoint = load_checkpoint(ckpt_path, subcommand)
        changed = check_checkpoint_settings(ckpt_path, checkpoint, self._settings, subcommand)
        rank_zero_info(restored_message(ckpt_path, checkpoint, subcommand))
        if changed:
            rank_zero_info(f"--ckpt_path {ckpt_path}: the config's settings are used where they differ from the "
                           f"checkpoint's: {format_changes(changed)}")

    @override
    def after_subcommand(self) -> None:
        """A subcommand's W&B run ends with it (``finish_wandb_runs``)."""
        finish_wandb_runs(self.trainer.loggers)

    after_fit = after_validate = after_test = after_predict = after_subcommand

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        self._written_shape = written_space_shape(config.get("model.init_args.space"))

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as error:
            cause = constructor_error(error)
            if cause is None:
                raise
            raise cause from None  # the constructor's own message, not jsonargparse's dump of every alternative
        refuse_shape_conflicts(self._written_shape, self.datamodule, "model.init_args.space.init_args")

    @override
    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.insert(0, SettingsRecord(self._settings))
        return trainer


class SettingsRecord(pl.Callback):
    """Writes the run's settings (``run_settings``), as the config and flags gave them, into every checkpoint
    (``checkpoint[SETTINGS_KEY]``), so that a later ``--ckpt_path`` can compare them with what is written then."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint[SETTINGS_KEY] = self.settings


def run_settings(parser: ArgumentParser, config: Namespace, subcommand: str | None) -> dict[str, Any]:
    """The model and data settings, ``seed_everything`` and the callbacks' arguments of a parsed config, as
    plain YAML data. Link targets (the space's shape, which comes from the data) are left out."""
    dumped = yaml.safe_load(parser.dump(config, skip_link_targets=True, format="yaml")) or {}
    if subcommand:
        dumped = dumped.get(subcommand) or {}
    settings = {key: dumped[key] for key in ("seed_everything", "model", "data") if key in dumped}
    settings["trainer"] = {"callbacks": callback_settings((dumped.get("trainer") or {}).get("callbacks"))}
    return settings


def callback_settings(callbacks: Any) -> dict[str, Any]:
    """``trainer.callbacks`` keyed by class name (``Name#2`` for a second one of a class), so that a difference
    is named by the callback rather than by its position in the list."""
    keyed: dict[str, Any] = {}
    for callback in [callbacks] if isinstance(callbacks, dict) else callbacks or []:
        if not isinstance(callback, dict) or not isinstance(callback.get("class_path"), str):
            continue
        name = key = callback["class_path"].rpartition(".")[2]
        while key in keyed:
            key = f"{name}#{len([k for k in keyed if k.split('#')[0] == name]) + 1}"
        keyed[key] = {"class_path": callback["class_path"], "init_args": callback.get("init_args") or {}}
    return keyed


def load_checkpoint(path: str | os.PathLike[str], subcommand: str | None) -> dict[str, Any]:
    """The checkpoint at ``path`` on the CPU; a file that is missing, empty, truncated, corrupt or not a
    Lightning checkpoint (or, for ``fit``, holds only weights) is a ``CheckpointError`` naming it."""
    retry = "pass another checkpoint (an earlier one from the same folder, say) or train again"
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"--ckpt_path {path}: no such file")
    if file.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); {retry}")
    try:
        checkpoint = torch.load(file, weights_only=True, map_location="cpu")
    except Exception as error:  # torch.load raises EOFError, KeyError, RuntimeError, UnpicklingError, ... on bad files
        detail = str(error).strip().splitlines()[0] if str(error).strip() else "no detail"
        detail = detail if len(detail) <= 160 else detail[:160] + "..."
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(error).__name__}: {detail}): "
                              "it is truncated, corrupt, not a checkpoint, or holds objects that "
                              f"torch.load(weights_only=True) refuses; {retry}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        found = short_repr(sorted(map(str, checkpoint)) if isinstance(checkpoint, dict) else type(checkpoint).__name__)
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict'; found {found}); {retry}")
    if subcommand == "fit" and not {"optimizer_states", "loops"} <= set(checkpoint):
        raise CheckpointError(f"checkpoint {path} holds only weights (ModelCheckpoint save_weights_only=True?): it "
                              "cannot resume a fit; validate with it, or resume from a full checkpoint")
    return checkpoint


def saved_settings(checkpoint: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The settings the checkpoint's run was given, and whether they are complete: a ``SettingsRecord`` if
    the checkpoint has one, else what its saved hyperparameters hold (no space, sampler or optimiser)."""
    if isinstance(checkpoint.get(SETTINGS_KEY), dict):
        return checkpoint[SETTINGS_KEY], True
    settings: dict[str, Any] = {}
    for name, key in (("model", "hyper_parameters"), ("data", "datamodule_hyper_parameters")):
        hparams = dict(checkpoint.get(key) or {})
        hparams.pop("_instantiator", None)
        class_path = hparams.pop("_class_path", None)
        settings[name] = {"init_args": hparams} | ({"class_path": class_path} if class_path else {})
    return settings, False


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are values. None is left out, as the config dump leaves it."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        elif value is not None:
            flat[f"{prefix}{key}"] = value
    return flat


def canonical_classes(flat: dict[str, Any]) -> dict[str, Any]:
    """Each ``class_path`` as the module that defines the class plus its name, so that one class written by
    two import paths (``nas_lightning.methods.SPOS``, ``nas_lightning.methods.spos.SPOS``) compares equal."""
    def canonical(path: str) -> str:
        module, _, name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError):
            return path
        return f"{cls.__module__}.{cls.__qualname__}" if isinstance(cls, type) else path

    return {key: canonical(value) if key.endswith("class_path") and isinstance(value, str) else value
            for key, value in flat.items()}


Change = tuple[str, Any, Any]  # (key, the checkpoint's value, the config's value)


def check_checkpoint_settings(path: str | os.PathLike[str], checkpoint: dict[str, Any], current: dict[str, Any],
                              subcommand: str | None) -> list[Change]:
    """Compare the checkpoint's settings with the config's (the rule is in ``NASLightningCLI``'s docstring).
    Returns the differences the config's values win; raises ``CheckpointError`` on the refused ones."""
    saved, complete = saved_settings(checkpoint)
    old, new = canonical_classes(flatten(saved)), canonical_classes(flatten(current))
    old_class, new_class = old.get("model.class_path"), new.get("model.class_path")
    if old_class and new_class and old_class != new_class:
        raise CheckpointError(
            f"checkpoint {path} was written by {old_class}, but the config's method is {new_class}: use the "
            f"config of the run that wrote it (model.class_path: {old_class}), or a checkpoint of {new_class}")
    keys = sorted(set(old) | set(new)) if complete else sorted(old)
    changes = [(key, old.get(key), new.get(key)) for key in keys if old.get(key) != new.get(key)]
    space = [c for c in changes if c[0].startswith("model.init_args.space.")]
    if space:
        raise CheckpointError(f"checkpoint {path} was trained on another search space: {format_changes(space)}. "
                              "Its weights belong to that space; use the space it was trained on")
    if subcommand != "fit":  # the config's callbacks (a search, say) are what validate is for: not listed
        return [c for c in changes if not c[0].startswith("trainer.callbacks.")]
    refused = [c for c in changes if not _may_change_on_resume(c[0])]
    if refused:
        raise CheckpointError(
            f"cannot resume from {path}: these settings change the training and differ from the checkpoint's: "
            f"{format_changes(refused)}. Resume with the checkpoint's values, or train anew without --ckpt_path")
    return changes


def _may_change_on_resume(key: str) -> bool:
    if key.startswith("trainer.callbacks."):
        return key.split(".")[2].split("#")[0] not in TRAINING_CALLBACKS
    return key in RESUME_MAY_CHANGE


def format_changes(changes: Sequence[Change]) -> str:
    return "; ".join(f"{key}: checkpoint {short_repr(old, 80)}, config {short_repr(new, 80)}"
                     for key, old, new in changes)


def restored_message(path: str | os.PathLike[str], checkpoint: dict[str, Any], subcommand: str | None) -> str:
    """One line: what ``--ckpt_path`` restores for ``subcommand`` (Lightning restores callback and module
    state for every stage; optimiser, scheduler and loop position only for ``fit``)."""
    parts = ["weights"]
    own = sorted(set(checkpoint) - _LIGHTNING_KEYS)
    if own:
        parts.append(f"module and data state ({', '.join(map(str, own))})")
    callbacks = sorted({str(k).split("{")[0] for k in checkpoint.get("callbacks") or {}})
    if callbacks:
        parts.append(f"callback state ({', '.join(callbacks)})")
    if subcommand == "fit":
        parts.append("optimiser state" + (" and LR-scheduler state" if checkpoint.get("lr_schedulers") else ""))
        parts.append(f"loop position (epoch {checkpoint.get('epoch')}, global step {checkpoint.get('global_step')})")
    return f"--ckpt_path {path}: restoring {', '.join(parts)}; every setting comes from the config and flags"


def constructor_error(error: BaseException) -> BaseException | None:
    """The exception a class's constructor raised under jsonargparse's wrappers (whose union error repeats
    every alternative and the whole config), or None when ``error`` is not such a wrapper."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    if len(chain) < 2 or not _raised_in_jsonargparse(chain[0]):
        return None
    return next((e for e in chain[1:] if not _raised_in_jsonargparse(e)), None)


def _raised_in_jsonargparse(error: BaseException) -> bool:
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and f"{os.sep}jsonargparse{os.sep}" in frames[-1].filename


def link_data_to_space(parser: ArgumentParser, data: str, space: str) -> None:
    """A value is given once: the space's classes and image shape (``DATA_TO_SPACE``) come from the data
    module ``data`` into the space at ``space`` when both are instantiated."""
    for source, target in DATA_TO_SPACE.items():
        parser.link_arguments(data, f"{space}.init_args.{target}", compute_fn=attrgetter(source),
                              apply_on="instantiate")


def run_with_space_and_data(function: Callable[..., object], prog: str, argv: Sequence[str]) -> object:
    """Run a command ``function(space, data, ...)`` from the command line or a ``--config`` file, the space's
    classes and image shape linked from the data module as in ``fit`` (a written value the data contradicts is
    refused)."""
    parser = ArgumentParser(prog=prog, description=function.__doc__)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(function, as_group=False)
    link_data_to_space(parser, "data", "space")
    config = parser.parse_args(list(argv))
    written = written_space_shape(config.get("space"))
    init = parser.instantiate(config)
    refuse_shape_conflicts(written, init.data, "space.init_args")
    return function(**{k: v for k, v in vars(init).items() if k != "config"})


def written_space_shape(space: Namespace | None) -> dict[str, Any]:
    """The linked space arguments that a config or flag set to something other than the class default: the
    link would replace them, so they are checked against the data (``refuse_shape_conflicts``)."""
    if space is None or not isinstance(space.get("class_path"), str):
        return {}
    module, _, name = space["class_path"].rpartition(".")
    defaults = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    written = {}
    for target in DATA_TO_SPACE.values():
        value = space.get(f"init_args.{target}")
        if value is not None and target in defaults and value != defaults[target].default:
            written[target] = value
    return written


def refuse_shape_conflicts(written: dict[str, Any], datamodule: Any, prefix: str) -> None:
    """A space value the user wrote that the data contradicts is an error, never silently replaced."""
    source_of = {target: source for source, target in DATA_TO_SPACE.items()}
    conflicts = [f"{prefix}.{key}={value} but the data gives {source_of[key]}={getattr(datamodule, source_of[key])}"
                 for key, value in written.items() if getattr(datamodule, source_of[key], value) != value]
    if conflicts:
        raise ValueError("the space's classes and image shape come from the data module; " + "; ".join(conflicts)
                         + ". Remove them from the space (or change the data: data.init_args.image_size, ...)")


def _commands() -> dict[str, Callable[[list[str]], object]]:
    from nas_lightning.commands.acquire_gt import acquire_gt_main
    from nas_lightning.commands.compare import compare_main
    from nas_lightning.commands.compare_disturbance import compare_disturbance_main
    from nas_lightning.commands.cost import cost_main
    from nas_lightning.commands.ground_truth import ground_truth_main
    from nas_lightning.commands.interference import interference_main
    from nas_lightning.commands.measure_latency import measure_latency_main
    from nas_lightning.commands.ranking_variance import ranking_variance_main
    from nas_lightning.commands.train_predictor import train_predictor_main

    return {"cost": cost_main, "ground-truth": ground_truth_main, "compare-disturbance": compare_disturbance_main,
            "measure-latency": measure_latency_main, "ranking-variance": ranking_variance_main,
            "interference": interference_main, "compare": compare_main,
            "acquire-gt": acquire_gt_main, "train-predictor": train_predictor_main}


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    if args and args[0] in commands:
        commands[args[0]](args[1:])
        return
    if args and args[0] in ("-h", "--help"):
        print(f"nas-lightning {{fit,validate,test,predict,{','.join(commands)}}} --help\n")
    # From the shell, LightningCLI reads sys.argv itself (and warns when also given args).
    NASLightningCLI(None if argv is None else args)


if __name__ == "__main__":
    main()
