"""The ``nas-lightning`` command.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI subcommands over a method
(``model``) and a data module (``data``) chosen by ``class_path`` in YAML. Search and ranking run as
callbacks of ``validate``. Two more commands need no Trainer of their own:

- ``nas-lightning cost``: params and FLOPs of given archs for a configured space, no data needed.
- ``nas-lightning ground-truth``: stand-alone training of a sample of archs with several seeds.
- ``nas-lightning compare-disturbance``: the DI-NAS section 5.3 table over groups of runs and seeds.
- ``nas-lightning measure-latency``: a PC-NAS latency lookup table, measured on this machine's device.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

from jsonargparse import ArgumentParser, Namespace
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from nas_lightning.data.base import SplitDataModule
from nas_lightning.methods.base import NASModule

#: Data module attribute -> search-space argument, linked by the CLI.
DATA_TO_SPACE = {"num_classes": "num_classes", "in_channels": "in_channels", "image_size": "input_size"}


class NASLightningCLI(LightningCLI):
    """LightningCLI over any ``NASModule`` and any ``SplitDataModule``; optimisers are constructor
    arguments of the methods (``model.init_args.optimizer``), so the CLI adds none of its own. The
    space's ``num_classes``, ``in_channels`` and ``input_size`` are linked from the data module."""

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
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        self._written_shape = written_space_shape(config.get("model.init_args.space"))

    @override
    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        refuse_shape_conflicts(self._written_shape, self.datamodule, "model.init_args.space.init_args")


def link_data_to_space(parser: ArgumentParser, data: str, space: str) -> None:
    """A value is given once: the space's classes and image shape (``DATA_TO_SPACE``) come from the data
    module ``data`` into the space at ``space`` when both are instantiated."""
    for source, target in DATA_TO_SPACE.items():
        parser.link_arguments(data, f"{space}.init_args.{target}", compute_fn=attrgetter(source),
                              apply_on="instantiate")


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
    from nas_lightning.commands.compare_disturbance import compare_disturbance_main
    from nas_lightning.commands.cost import cost_main
    from nas_lightning.commands.ground_truth import ground_truth_main
    from nas_lightning.commands.measure_latency import measure_latency_main

    return {"cost": cost_main, "ground-truth": ground_truth_main, "compare-disturbance": compare_disturbance_main,
            "measure-latency": measure_latency_main}


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
