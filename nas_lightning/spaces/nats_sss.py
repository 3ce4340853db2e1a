"""NATS-Bench size search space, SSS (Dong et al., NATS-Bench, arXiv:2009.00437, section 2; the authors'
``exps/NATS-Bench/main-sss.py`` and ``xautodl/models/shape_infers/InferTinyCellNet.py``).

The topology is fixed to the benchmark's cell (arch 9930 of the topology space, the best on CIFAR-100
validation)::

    |nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|

and five layers choose their widths among {8, 16, ..., 64}: 8^5 = 32,768 archs. Macro skeleton (the authors'
``DynamicShapeTinyNet`` with one cell per stage): a 3x3 conv + BN stem of width c0; a cell c0 -> c0; a ResNet
basic block c0 -> c1, stride 2; a cell c1 -> c2; a basic block c2 -> c3, stride 2; a cell c3 -> c4; BN-ReLU,
global average pooling, a linear classifier. In a cell, the edges leaving node 0 map c_in to c_out and the others
c_out to c_out; ``skip_connect`` from node 0 is the identity when c_in == c_out, otherwise a 1x1 conv + BN
(xautodl's ``FactorizedReduce`` at stride 1, without ReLU).

Grammar of an arch string (the benchmark's): the five widths joined by ``:``, e.g. ``8:16:32:48:64``. Decisions
``layer0`` .. ``layer4`` in that order; ``arch_at(i)`` is the benchmark's arch index i (its ``traverse_net``
enumerates the last layer fastest, as ``SearchSpace.enumerate`` does).

Parameter counts (docs/design_choices.md, "Search spaces"): at 10 classes, ``8:8:8:8:8`` has 11,714 parameters,
``8:8:16:40:40`` 107,826 and ``64:64:64:64:64`` 713,674 (hand counts of the structure above; tests check them).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from typing_extensions import override

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import ArchFormatError, Decision, SearchSpace, count_module_cost, short_repr
from nas_lightning.spaces.cell_string import parse_cell
from nas_lightning.spaces.nb201 import NB201_EDGES, NB201_OPS

#: The benchmark's fixed cell (``main-sss.py``: arch-index 9930 of the topology space).
SSS_CELL = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
#: The benchmark's candidate widths (``--candidateC``).
SSS_CHANNELS: tuple[int, ...] = (8, 16, 24, 32, 40, 48, 56, 64)
#: What each of the five layers is: a cell keeps the resolution, a reduction is a stride-2 ResNet basic block.
SSS_LAYERS: tuple[str, ...] = ("cell", "reduction", "cell", "reduction", "cell")


class NATSSizeSpace(SearchSpace):
    """The 32,768-arch size space with its macro net.

    Args:
        channels: candidate widths of every layer (the benchmark's 8, 16, ..., 64; smaller sets for tests).
        cell: the fixed cell in NAS-Bench-201 notation (the benchmark's by default).
        num_classes, in_channels, input_size: the data's shape.
        supernet_bn_affine: whether the supernet's body BNs (cells and reduction blocks) learn affine parameters
            (SPOS practice: no); the stem and final BNs always do, and stand-alone networks always have them.
    """

    def __init__(self, channels: Sequence[int] = SSS_CHANNELS, cell: str = SSS_CELL, num_classes: int = 10,
                 in_channels: int = 3, input_size: int = 32, supernet_bn_affine: bool = False) -> None:
        super().__init__()
        widths = [int(c) for c in channels]
        if not widths or any(c < 1 for c in widths) or len(set(widths)) != len(widths):
            raise ValueError(f"NATSSizeSpace channels must be distinct positive integers, got {list(channels)}")
        ops = parse_cell(cell.strip(), NB201_EDGES, "NAS-Bench-201 cell", SSS_CELL)
        unknown = [op for op in ops if op not in NB201_OPS]
        if unknown:
            raise ValueError(f"NATSSizeSpace cell {short_repr(cell)} has ops {unknown}; choose among {list(NB201_OPS)}")
        self.channels = tuple(sorted(widths))
        self.cell = cell.strip()
        self.cell_ops: tuple[str, ...] = tuple(ops)
        self.num_classes, self.in_channels, self.input_size = num_classes, in_channels, input_size
        self.supernet_bn_affine = supernet_bn_affine
        self._part_costs: dict[tuple[str | int, int, int], tuple[int, int]] = {}

    @cached_property
    @override
    def decisions(self) -> list[Decision]:  # type: ignore[override]
        return [Decision(f"layer{i}", tuple(str(c) for c in self.channels)) for i in range(len(SSS_LAYERS))]

    @override
    def format(self, choices: Sequence[str]) -> str:
        return ":".join(choices)

    @override
    def parse(self, text: str) -> list[str]:
        parts = text.split(":")
        if len(parts) != len(SSS_LAYERS) or not all(p.strip().isdigit() for p in parts):
            raise ArchFormatError(f"NATS-Bench size arch {short_repr(text)} must be {len(SSS_LAYERS)} widths joined "
                                  f"by ':', e.g. '8:16:32:48:64'")
        return [str(int(p)) for p in parts]

    def widths(self, arch: Arch) -> list[int]:
        """The five layer widths of ``arch``."""
        return [self.channels[i] for i in arch.indices]

    @property
    def max_widths(self) -> list[int]:
        """The widths of the supernet's weights (the widest choice of every layer)."""
        return [max(self.channels)] * len(SSS_LAYERS)

    def part_input_sides(self) -> list[int]:
        """Input side of the stem, of each layer, and of the head (a reduction halves it, rounding up)."""
        sides = [self.input_size, self.input_size]
        for kind in SSS_LAYERS:
            sides.append((sides[-1] - 1) // 2 + 1 if kind == "reduction" else sides[-1])
        return sides

    @override
    def count_cost(self, arch: Arch) -> tuple[int, int]:
        """(params, FLOPs) of the stand-alone network as the sum of its parts (stem, five layers, head), each counted
        once per (part, input width, output width) on its own input shape: exact, since a part's cost depends on
        nothing else, and after a few hundred counts every one of the 32,768 archs is a sum of lookups."""
        widths = self.widths(arch)
        sides = self.part_input_sides()
        parts: list[tuple[str | int, int, int, int]] = [("stem", self.in_channels, widths[0], sides[0])]
        c_prev = widths[0]
        for layer, c in enumerate(widths):
            parts.append((layer, c_prev, c, sides[1 + layer]))
            c_prev = c
        parts.append(("head", c_prev, self.num_classes, sides[-1]))
        params = flops = 0
        for part, c_in, c_out, side in parts:
            key = (part, c_in, c_out)
            if key not in self._part_costs:
                module = self.network_class.build_part(self, part, c_in, c_out)  # type: ignore[attr-defined]
                self._part_costs[key] = count_module_cost(module, (c_in, side, side))
            params, flops = params + self._part_costs[key][0], flops + self._part_costs[key][1]
        return params, flops
