"""WPNAS's MobileNet search space (Lin et al., arXiv:2203.02086, section 4.3; docs/design_choices.md, "Search
spaces").

"17 search blocks, each a MobileNetV2 inverted bottleneck; kernel size in {3, 5}, expansion ratio in {1, 3, 6},
nonlinearity in {ReLU, HardSwish}, with or without Squeeze-and-Excitation": 24 combinations per block,
24^17 ~ 2.9e23 archs. The paper gives no macro structure beyond that; the 17 blocks are MobileNetV2's
(arXiv:1801.04381, Table 2): stages of widths 16, 24, 32, 64, 96, 160, 320, depths 1, 2, 3, 4, 3, 3, 1 and first
strides 1, 2, 2, 2, 1, 2, 1, after a 3x3 stem conv of 32 channels (stride 2) + BN + ReLU, and before a 1x1 conv
to 1280, pooling and the classifier. ``width_mult`` scales every width (``make_divisible(8)``).

Each block is four decisions, in this order: ``block{b}.kernel`` (``3``, ``5``), ``block{b}.expand`` (``1``,
``3``, ``6``), ``block{b}.act`` (``ReLU``, ``HardSwish``), ``block{b}.se`` (``off``, ``on``): 17 x 4 = 68
decisions, each sampled independently (WPNAS eq. 1 is a product of per-decision softmaxes).

Grammar of an arch string: one op per block, ``MBConv_{expand}_{kernel}_{act}`` with ``_SE`` appended when SE is
on; blocks of a stage joined by ``-``, stages by ``|`` (as in the ProxylessNAS space)::

    MBConv_1_3_ReLU|MBConv_6_5_HardSwish_SE-MBConv_3_3_ReLU|...|MBConv_6_5_ReLU_SE
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from timm.layers import make_divisible
from typing_extensions import override

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import ArchFormatError, Decision, SearchSpace, count_module_cost, short_repr

WPNAS_KERNELS: tuple[str, ...] = ("3", "5")
WPNAS_EXPANDS: tuple[str, ...] = ("1", "3", "6")
WPNAS_ACTS: tuple[str, ...] = ("ReLU", "HardSwish")
WPNAS_SE: tuple[str, ...] = ("off", "on")
#: The four decisions of a block, in arch order: (suffix, choices).
BLOCK_DECISIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("kernel", WPNAS_KERNELS), ("expand", WPNAS_EXPANDS), ("act", WPNAS_ACTS), ("se", WPNAS_SE),
)

#: MobileNetV2's bottleneck stages (arXiv:1801.04381, Table 2): 17 blocks.
STAGE_WIDTHS: tuple[int, ...] = (16, 24, 32, 64, 96, 160, 320)
STAGE_DEPTHS: tuple[int, ...] = (1, 2, 3, 4, 3, 3, 1)
STAGE_STRIDES: tuple[int, ...] = (1, 2, 2, 2, 1, 2, 1)
STEM_WIDTH, HEAD_WIDTH = 32, 1280


@dataclass(frozen=True)
class BlockShape:
    """Shape of one searchable block: channels in/out, stride, input side."""

    c_in: int
    c_out: int
    stride: int
    input_size: int


@dataclass(frozen=True)
class BlockChoice:
    """One block's four choices, typed."""

    kernel: int
    expand: int
    act: str
    se: bool

    @property
    def op(self) -> str:
        """The weight-holding candidate: kernel and expansion set the convs; act and SE run on top of them."""
        return f"MBConv_{self.expand}_{self.kernel}"

    @property
    def text(self) -> str:
        return f"{self.op}_{self.act}" + ("_SE" if self.se else "")


class WPNASMobileNetSpace(SearchSpace):
    """Args:
        width_mult: multiplier of every width, rounded to a multiple of 8.
        num_classes, in_channels, input_size: the data's shape.
        stem_stride: stride of the stem conv (2 in MobileNetV2; 1 keeps small CPU inputs from vanishing).
        depths: blocks per stage (seven values; default 1, 2, 3, 4, 3, 3, 1 = 17 blocks), to shrink the network for
            tests; the strides stay on each stage's first block.
        supernet_bn_affine: whether the supernet's block BNs learn affine parameters (default yes, as the
            ProxylessNAS space); stand-alone networks always have them.
    """

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, in_channels: int = 3, input_size: int = 224,
                 stem_stride: int = 2, depths: list[int] | None = None, supernet_bn_affine: bool = True) -> None:
        super().__init__()
        depths = list(STAGE_DEPTHS if depths is None else depths)
        if len(depths) != len(STAGE_WIDTHS) or any(int(d) < 0 for d in depths) or sum(depths) < 1:
            raise ValueError(f"WPNASMobileNetSpace depths must be {len(STAGE_WIDTHS)} integers >= 0 with at least one "
                             f"block, got {depths}")
        if width_mult <= 0 or stem_stride < 1 or input_size < 1:
            raise ValueError(f"WPNASMobileNetSpace needs width_mult > 0, stem_stride >= 1, input_size >= 1, got "
                             f"{width_mult}, {stem_stride}, {input_size}")
        self.width_mult, self.depths = float(width_mult), [int(d) for d in depths]
        self.num_classes, self.in_channels, self.input_size = num_classes, in_channels, input_size
        self.stem_stride, self.supernet_bn_affine = stem_stride, supernet_bn_affine
        self.stem_channels = self.width(STEM_WIDTH)
        self.head_channels = self.width(HEAD_WIDTH)
        self._block_costs: dict[tuple[BlockShape, str, bool], tuple[int, int]] = {}
        self._fixed_cost: tuple[int, int] | None = None

    def width(self, channels: int) -> int:
        return make_divisible(channels * self.width_mult, 8)

    @cached_property
    def blocks(self) -> list[BlockShape]:
        blocks, c_in = [], self.stem_channels
        size = -(-self.input_size // self.stem_stride)
        for width, depth, stride in zip(STAGE_WIDTHS, self.depths, STAGE_STRIDES):
            c_out = self.width(width)
            for j in range(depth):
                s = stride if j == 0 else 1
                blocks.append(BlockShape(c_in, c_out, s, size))
                size, c_in = -(-size // s), c_out
        return blocks

    @cached_property
    @override
    def decisions(self) -> list[Decision]:  # type: ignore[override]
        return [Decision(f"block{b}.{name}", choices) for b in range(len(self.blocks))
                for name, choices in BLOCK_DECISIONS]

    def decision_index(self, block: int, name: str) -> int:
        """Index of ``block``'s decision ``name`` (``kernel``, ``expand``, ``act``, ``se``)."""
        return block * len(BLOCK_DECISIONS) + [n for n, _ in BLOCK_DECISIONS].index(name)

    def block_choices(self, arch: Arch) -> list[BlockChoice]:
        per = len(BLOCK_DECISIONS)
        names = self.choice_names(arch)
        return [BlockChoice(int(names[i]), int(names[i + 1]), names[i + 2], names[i + 3] == "on")
                for i in range(0, len(names), per)]

    # --- arch strings ------------------------------------------------------------------------------
    @override
    def format(self, choices: Sequence[str]) -> str:
        per = len(BLOCK_DECISIONS)
        ops = [BlockChoice(int(choices[i]), int(choices[i + 1]), choices[i + 2], choices[i + 3] == "on").text
               for i in range(0, len(choices), per)]
        stages, start = [], 0
        for depth in self.depths:
            if depth:
                stages.append("-".join(ops[start:start + depth]))
            start += depth
        return "|".join(stages)

    @override
    def parse(self, text: str) -> list[str]:
        depths = [d for d in self.depths if d]
        stages = text.split("|")
        example = self.format([d.choices[0] for d in self.decisions])
        if [len(s.split("-")) for s in stages] != depths:
            raise ArchFormatError(f"WPNAS MobileNet arch {short_repr(text)} must have blocks per stage {depths}: "
                                  f"blocks joined by '-', stages by '|', e.g. {example!r}")
        names: list[str] = []
        for op in (o for s in stages for o in s.split("-")):
            parts = op.split("_")
            se = parts[-1] == "SE"
            parts = parts[:-1] if se else parts
            if len(parts) != 4 or parts[0] != "MBConv":
                raise ArchFormatError(f"block {short_repr(op)} of {short_repr(text)} must read "
                                      "'MBConv_{expand}_{kernel}_{act}' with '_SE' appended when SE is on, "
                                      "e.g. 'MBConv_6_5_HardSwish_SE'")
            names += [parts[2], parts[1], parts[3], "on" if se else "off"]
        return names

    # --- cost: each block's cost depends on its own four choices only ------------------------------------
    @override
    def count_cost(self, arch: Arch) -> tuple[int, int]:
        """(params, FLOPs) of the stand-alone network, as the sum of its fixed parts and of each block counted on
        its own input shape (exact: a block's cost depends on its choices and shape only; the activation changes
        neither, ``flop_counter`` counting convs and matrix products). Block counts are kept per (shape, op, SE)."""
        network = self.network_class
        if self._fixed_cost is None:
            stem, head = network.build_stem(self), network.build_head(self)  # type: ignore[attr-defined]
            last = self.blocks[-1]
            side = -(-last.input_size // last.stride)
            s = count_module_cost(stem, self.input_shape)
            h = count_module_cost(head, (last.c_out, side, side))
            self._fixed_cost = (s[0] + h[0], s[1] + h[1])
        params, flops = self._fixed_cost
        for shape, choice in zip(self.blocks, self.block_choices(arch)):
            key = (shape, choice.op, choice.se)
            if key not in self._block_costs:
                module = network.build_block_for_cost(shape, choice)  # type: ignore[attr-defined]
                self._block_costs[key] = count_module_cost(module, (shape.c_in, shape.input_size, shape.input_size))
            p, f = self._block_costs[key]
            params, flops = params + p, flops + f
        return params, flops
