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

import sys
from collections.abc import Callable, Sequence

from pytorch_lightning.cli import LightningCLI

from nas_lightning.data.base import SplitDataModule
from nas_lightning.methods.base import NASModule


class NASLightningCLI(LightningCLI):
    """LightningCLI over any ``NASModule`` and any ``SplitDataModule``; optimisers are constructor
    arguments of the methods (``model.init_args.optimizer``), so the CLI adds none of its own."""

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
