"""The ProxylessNAS / PC-NAS MobileNet space (PC-NAS, arXiv:1910.02543, appendix A.1; docs/design_choices.md,
"Search spaces").

Macro structure (docs/design_choices.md, "Search spaces", after ProxylessNAS arXiv:1812.00332): stem 3x3
conv of 32 channels, stride 2, BN + ReLU6; a fixed MBConv1 3x3 to 16 channels; six stages of widths 24, 40,
80, 96, 192, 320 and depths 4, 4, 4, 4, 4, 1 (21 searchable layers) whose first layers have strides 2, 2, 2,
1, 2, 1; a 1x1 conv to 1280, pooling and the classifier. ``width_mult`` scales every width, rounded by
``make_divisible(8)`` (docs/design_choices.md, "Search spaces"; ProxylessNAS itself keeps the 1280 head for
multipliers below 1).

Ops per layer (Table 4): the small space has ``MBConv_{e}_{k}`` for e in {1, 3, 6}, k in {3, 5, 7}, plus
``Identity`` (10 choices); the large space adds ``NConv_1_3, NConv_2_3, DConv_1_3, DConv_2_3, RConv_{1,2,4}_5,
RConv_{1,2,4}_7`` (20 choices). ``Identity`` is offered only where input and output shapes match: on every
layer but the first of each stage (which has stride 2 or a width change, so one choice fewer). A width
multiplier that rounds two stage widths to the same value does not add ``Identity`` to a first layer, so an
arch string means the same network at every ``width_mult``. The small ops come first
and in the same order in both spaces, so a small-space arch keeps its indices in the large space.

Grammar of an arch string: one op name per searchable layer; layers of a stage joined by ``-``, stages
joined by ``|``, first stage first::

    MBConv_6_3-Identity-MBConv_3_5-Identity|MBConv_3_3-...-MBConv_1_7|...|MBConv_6_7

Decisions are named ``stage{s}_layer{j}`` (both from 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from timm.layers import make_divisible
from torch import nn
from typing_extensions import override

from nas_lightning.spaces.base import ArchFormatError, Decision, OpSite, SearchSpace, short_repr

MOBILENET_SMALL_OPS: tuple[str, ...] = (
    "MBConv_1_3", "MBConv_3_3", "MBConv_6_3", "MBConv_1_5", "MBConv_3_5", "MBConv_6_5",
    "MBConv_1_7", "MBConv_3_7", "MBConv_6_7", "Identity",
)
MOBILENET_LARGE_OPS: tuple[str, ...] = (
    *MOBILENET_SMALL_OPS, "NConv_1_3", "NConv_2_3", "DConv_1_3", "DConv_2_3", "RConv_1_5", "RConv_2_5", "RConv_4_5",
    "RConv_1_7", "RConv_2_7", "RConv_4_7",
)
_VARIANT_OPS = {"small": MOBILENET_SMALL_OPS, "large": MOBILENET_LARGE_OPS}

STAGE_WIDTHS: tuple[int, ...] = (24, 40, 80, 96, 192, 320)
STAGE_DEPTHS: tuple[int, ...] = (4, 4, 4, 4, 4, 1)
STAGE_STRIDES: tuple[int, ...] = (2, 2, 2, 1, 2, 1)
STEM_WIDTH, FIRST_WIDTH, HEAD_WIDTH = 32, 16, 1280


@dataclass(frozen=True)
class MobileNetLayer:
    """Shape of one searchable layer: channels in/out, stride, input side, and where it sits."""

    stage: int
    index: int
    c_in: int
    c_out: int
    stride: int
    input_size: int

    @property
    def allows_identity(self) -> bool:
        # every later layer of a stage keeps the shape; see the module docstring for the first one
        return self.index > 0


class MobileNetSpace(SearchSpace):
    """Args:
        variant: ``"small"`` (10 ops) or ``"large"`` (20 ops), PC-NAS A.1.
        width_mult: multiplier of every width, rounded to a multiple of 8.
        num_classes, in_channels, input_size: the data's shape.
        stem_stride: stride of the stem conv (2 in the paper; 1 keeps small CPU inputs from vanishing).
        depths: searchable layers per stage (six values; default 4, 4, 4, 4, 4, 1), to shrink the
            network for tests and CPU runs; the strides stay on each stage's first layer.
        supernet_bn_affine: whether the supernet's searchable-layer BNs learn affine parameters.
            ProxylessNAS and PC-NAS train them (default); SPOS practice is not to. Stand-alone
            networks always have them (export leaves missing ones at weight 1, bias 0).
    """

    def __init__(self, variant: Literal["small", "large"] = "small", width_mult: float = 1.0,
                 num_classes: int = 1000, in_channels: int = 3, input_size: int = 224, stem_stride: int = 2,
                 depths: list[int] | None = None, supernet_bn_affine: bool = True) -> None:
        super().__init__()
        if variant not in _VARIANT_OPS:
            raise ValueError(f"MobileNetSpace variant {variant!r} is unknown; choose one of {list(_VARIANT_OPS)}")
        depths = list(STAGE_DEPTHS if depths is None else depths)
        if len(depths) != len(STAGE_WIDTHS) or any(int(d) < 1 for d in depths):
            raise ValueError(f"MobileNetSpace depths must be {len(STAGE_WIDTHS)} integers >= 1, got {depths}")
        if width_mult <= 0 or stem_stride < 1 or input_size < 1:
            raise ValueError(f"MobileNetSpace needs width_mult > 0, stem_stride >= 1, input_size >= 1, got "
                             f"{width_mult}, {stem_stride}, {input_size}")
        self.variant, self.width_mult, self.depths = variant, float(width_mult), [int(d) for d in depths]
        self.num_classes, self.in_channels, self.input_size = num_classes, in_channels, input_size
        self.stem_stride, self.supernet_bn_affine = stem_stride, supernet_bn_affine
        self.stem_channels = self.width(STEM_WIDTH)
        self.first_channels = self.width(FIRST_WIDTH)
        self.head_channels = self.width(HEAD_WIDTH)

    def width(self, channels: int) -> int:
        return make_divisible(channels * self.width_mult, 8)

    def config(self) -> dict[str, Any]:
        """The constructor arguments (what a latency table or a checkpoint must agree on)."""
        return {"variant": self.variant, "width_mult": self.width_mult, "num_classes": self.num_classes,
                "in_channels": self.in_channels, "input_size": self.input_size, "stem_stride": self.stem_stride,
                "depths": list(self.depths)}

    @cached_property
    def layers(self) -> list[MobileNetLayer]:
        layers, c_in = [], self.first_channels
        size = -(-self.input_size // self.stem_stride)  # odd kernels with k // 2 padding: ceil(size / stride)
        for stage, (width, depth, stride) in enumerate(zip(STAGE_WIDTHS, self.depths, STAGE_STRIDES)):
            c_out = self.width(width)
            for j in range(depth):
                s = stride if j == 0 else 1
                layers.append(MobileNetLayer(stage, j, c_in, c_out, s, size))
                size, c_in = -(-size // s), c_out
        return layers

    @cached_property
    @override
    def decisions(self) -> list[Decision]:  # type: ignore[override]
        ops = _VARIANT_OPS[self.variant]
        return [
            Decision(f"stage{layer.stage}_layer{layer.index}",
                     ops if layer.allows_identity else tuple(o for o in ops if o != "Identity"))
            for layer in self.layers
        ]

    # --- arch strings ------------------------------------------------------------------------------
    @override
    def format(self, choices: Sequence[str]) -> str:
        stages, start = [], 0
        for depth in self.depths:
            stages.append("-".join(choices[start:start + depth]))
            start += depth
        return "|".join(stages)

    @override
    def parse(self, text: str) -> list[str]:
        stages = text.split("|")
        if len(stages) != len(self.depths) or [len(s.split("-")) for s in stages] != self.depths:
            got = [len(s.split("-")) for s in stages]
            raise ArchFormatError(
                f"MobileNet arch {short_repr(text)} has layers per stage {short_repr(got)}, expected {self.depths}: "
                "one op per layer, "
                f"layers joined by '-', stages by '|', e.g. {self.format([d.choices[0] for d in self.decisions])!r}"
            )
        return [op for stage in stages for op in stage.split("-")]

    # --- parts on their own (the latency table measures these), built by the registered network ------
    def layer_input_shape(self, decision: int) -> tuple[int, int, int]:
        layer = self.layers[decision]
        return (layer.c_in, layer.input_size, layer.input_size)

    @override
    def op_sites(self, decision: int) -> list[OpSite]:
        """The layer's op on the input shape that the macro structure fixes: the cost is additive
        (``SearchSpace.cost_table``)."""
        layer = self.layers[decision]
        return [OpSite(layer.c_in, layer.c_out, layer.stride, self.layer_input_shape(decision))]

    def build_layer_op(self, decision: int, op: str) -> nn.Module:
        return self.network_class.build_op(self, decision, op)  # type: ignore[attr-defined]

    def build_fixed_parts(self) -> dict[str, tuple[nn.Module, tuple[int, int, int]]]:
        """The non-searchable parts with their input shapes: the stem (with the fixed MBConv1) and the head."""
        last = self.layers[-1]
        head_size = -(-last.input_size // last.stride)
        network = self.network_class
        return {
            "stem": (network.build_stem(self), self.input_shape),  # type: ignore[attr-defined]
            "head": (network.build_head(self), (last.c_out, head_size, head_size)),  # type: ignore[attr-defined]
        }
