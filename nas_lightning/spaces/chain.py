"""A small chain space for fast tests and ground-truth experiments.

``num_layers`` layers in sequence, each a choice among ``ops`` (names from ``CHAIN_OPS``, the cell ops of
NAS-Bench-201 and DARTS that keep the shape).
Arch strings list the layers' ops between bars: ``|nor_conv_3x3|skip_connect|avg_pool_3x3|``.
Small enough (K**L archs) to enumerate and train every arch stand-alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from typing_extensions import override

from nas_lightning.spaces.base import ArchFormatError, Decision, OpSite, SearchSpace, short_repr

#: The ops a chain layer may choose among.
CHAIN_OPS: tuple[str, ...] = (
    "none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "nor_conv_5x5", "avg_pool_3x3", "max_pool_3x3",
)


class ChainSpace(SearchSpace):
    """Args:
        num_layers: searchable layers (L).
        ops: candidate op names (K), each one of ``CHAIN_OPS``.
        C: channels of every layer.
        num_classes, in_channels, input_size: the data's shape.
        stem_stride: stride of the stem conv (2 halves the cost of every layer).
        supernet_bn_affine: whether the supernet's layer BNs learn affine parameters.
    """

    def __init__(self, num_layers: int = 4,
                 ops: Sequence[str] = ("nor_conv_1x1", "nor_conv_3x3", "skip_connect", "avg_pool_3x3"),
                 C: int = 16, num_classes: int = 10, in_channels: int = 1, input_size: int = 28,
                 stem_stride: int = 2, supernet_bn_affine: bool = False) -> None:
        super().__init__()
        unknown = [o for o in ops if o not in CHAIN_OPS]
        if unknown:
            raise ValueError(f"ChainSpace ops {unknown} are unknown; known ops: {list(CHAIN_OPS)}")
        if num_layers < 1 or len(ops) < 1 or len(set(ops)) != len(ops):
            raise ValueError(f"ChainSpace needs num_layers >= 1 and distinct ops, got {num_layers}, {list(ops)}")
        self.num_layers, self.ops, self.C = num_layers, tuple(ops), C
        self.num_classes, self.in_channels, self.input_size = num_classes, in_channels, input_size
        self.stem_stride, self.supernet_bn_affine = stem_stride, supernet_bn_affine

    @cached_property
    @override
    def decisions(self) -> list[Decision]:  # type: ignore[override]
        return [Decision(f"layer{i}", self.ops) for i in range(self.num_layers)]

    @override
    def format(self, choices: Sequence[str]) -> str:
        return "|" + "|".join(choices) + "|"

    @override
    def parse(self, text: str) -> list[str]:
        if not (text.startswith("|") and text.endswith("|")) or len(text) < 3:
            example = self.format(self.ops[:1] * self.num_layers)
            raise ArchFormatError(f"chain arch {short_repr(text)} must read '|op|op|...|', e.g. {example!r}")
        return text[1:-1].split("|")

    @override
    def op_sites(self, decision: int) -> list[OpSite]:
        """Each layer's op runs once, on the stem's output (``C`` channels, side ``ceil(input_size /
        stem_stride)``); every chain op keeps that shape, so the cost is additive (``SearchSpace.cost_table``)."""
        size = (self.input_size - 1) // self.stem_stride + 1
        return [OpSite(self.C, self.C, 1, (self.C, size, size))]
