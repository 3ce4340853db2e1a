"""The 64-arch cell space of "Deeper Insights into Weight Sharing in NAS" (Zhang et al., arXiv:2001.01431;
the authors' code, github.com/ultmaster/deeper-insights-weight-sharing: ``models/search_cnn.py``,
``models/search_cells.py``, ``genotypes.py`` and the ``experiments/final/*.yml`` settings ``n_layers: 4``,
``n_nodes: 2``).

A cell has one input (node 0, the previous cell's output after a 1x1 ReLU-conv-BN to ``C`` channels) and two
intermediate nodes wired by three edges: node 1 = op(node 0); node 2 = op(node 0) + op(node 1). Each edge
chooses among four ops (``DEEPER_INSIGHTS_OPS``), so the space has 4**3 = 64 archs; every cell of the network
uses the same cell arch, each cell with its own weights.

Grammar of an arch string (NAS-Bench-201's notation: node groups joined by ``+``, group i lists the edges into
node i as ``|op~j|``, j the input node)::

    |sep_conv_3x3~0|+|max_pool_3x3~0|dil_conv_5x5~1|

Decisions are the three edges in that order (``1<-0``, ``2<-0``, ``2<-1``), the order of the authors' cell DAG,
so ``arch_at(i)`` and ``enumerate`` follow their ``select`` index lists (mixed radix, last edge fastest).

The macro network (``nas_lightning.supernet.deeper_insights``; docs/design_choices.md, "Search spaces"), as in
the authors' code, where the paper is silent: a stem of two 3x3 convs, each followed by BN, to
``stem_multiplier * C`` (3 * 16 = 48) channels, no ReLU between them; ``num_cells`` (4) cells, none of them a
reduction (every cell keeps the input resolution, stride 1 everywhere); a cell outputs the concatenation of
nodes 1 and 2 (2C channels); global average pooling and a linear classifier. Where this space departs from the
authors' code: ``max_pool_3x3`` is the op of the one registry, with no BN after the pooling (the authors append
an affine-free BN, as the DARTS *search* network does; see ``nas_lightning.supernet.ops``), the BN momentum is
PyTorch's default (theirs: 0.4), and the stand-alone networks have affine BNs, as every stand-alone network here
(the authors trained their ground truth on the search network with one path fixed, whose cell BNs are affine-free).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from typing_extensions import override

from nas_lightning.spaces.base import Decision, OpSite, SearchSpace
from nas_lightning.spaces.cell_string import format_cell, parse_cell

#: The four candidate ops of every edge, in the authors' ``PRIMITIVES`` order.
DEEPER_INSIGHTS_OPS: tuple[str, ...] = ("max_pool_3x3", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_5x5")
#: (to_node, from_node) of the three edges of a cell, in arch-string (and decision) order.
DEEPER_INSIGHTS_EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1))
#: Intermediate nodes of a cell; the cell outputs their concatenation.
DEEPER_INSIGHTS_NODES: tuple[int, ...] = (1, 2)


class DeeperInsightsSpace(SearchSpace):
    """The paper's 64-arch space (4 ops on each of 3 edges), small enough to train every arch stand-alone.

    Args:
        C: channels of a cell's nodes (16 in the paper); a cell outputs ``2 * C``.
        num_cells: cells in sequence (4 in the paper); each is one layer for prefix sharing.
        stem_multiplier: the stem outputs ``stem_multiplier * C`` channels (3, as DARTS and the authors' code).
        num_classes: classifier outputs.
        in_channels: image channels (3 for CIFAR-10, 1 for Fashion-MNIST).
        input_size: image side, used for FLOPs.
        supernet_bn_affine: whether the supernet's cell BN layers learn affine parameters (the authors: no).
    """

    def __init__(self, C: int = 16, num_cells: int = 4, stem_multiplier: int = 3, num_classes: int = 10,
                 in_channels: int = 3, input_size: int = 32, supernet_bn_affine: bool = False) -> None:
        super().__init__()
        if C < 1 or num_cells < 1 or stem_multiplier < 1:
            raise ValueError(f"DeeperInsightsSpace needs C, num_cells and stem_multiplier >= 1, got C={C}, "
                             f"num_cells={num_cells}, stem_multiplier={stem_multiplier}")
        self.C, self.num_cells, self.stem_multiplier = C, num_cells, stem_multiplier
        self.num_classes, self.in_channels, self.input_size = num_classes, in_channels, input_size
        self.supernet_bn_affine = supernet_bn_affine

    @cached_property
    @override
    def decisions(self) -> list[Decision]:  # type: ignore[override]
        return [Decision(f"{to}<-{src}", DEEPER_INSIGHTS_OPS) for to, src in DEEPER_INSIGHTS_EDGES]

    @override
    def format(self, choices: Sequence[str]) -> str:
        return format_cell(choices, DEEPER_INSIGHTS_EDGES)

    @override
    def parse(self, text: str) -> list[str]:
        return parse_cell(text, DEEPER_INSIGHTS_EDGES, "Deeper-Insights",
                          "|sep_conv_3x3~0|+|max_pool_3x3~0|dil_conv_5x5~1|")

    @override
    def op_sites(self, decision: int) -> list[OpSite]:
        """Every cell runs the edge's op once on ``C`` channels at the input resolution (no reductions, a stem of
        stride 1): ``num_cells`` equal sites. Every op keeps that shape and the cell's 1x1 input conv does not
        depend on the choices, so the cost is additive (``SearchSpace.cost_table``)."""
        return [OpSite(self.C, self.C, 1, (self.C, self.input_size, self.input_size))] * self.num_cells
