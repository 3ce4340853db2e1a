"""The DARTS macro network (Liu et al., DARTS, arXiv:1806.09055, section 2.1 and appendix A.2), as a
supernet or as a stand-alone network of one genotype.

Structure (the authors' ``NetworkCIFAR``): a 3x3 conv stem to ``stem_multiplier * C`` channels + BN;
``layers`` cells, the ones at ``layers // 3`` and ``2 * layers // 3`` being reduction cells that
double the channels and halve the resolution; global average pooling and a linear classifier.
A cell (DARTS eq. 1, ``x_j = sum_{i<j} o_(i,j)(x_i)``, with two incoming edges kept per node) takes
the outputs of the two previous cells as nodes 0 and 1, preprocessed to ``C`` channels by a 1x1
ReLU-conv-BN (or ``FactorizedReduce`` when the cell before the previous one halved the resolution);
each intermediate node 2..5 sums one op applied to each of its two parents; the cell outputs the
concatenation of nodes 2..5. In a reduction cell, edges leaving nodes 0 and 1 have stride 2.

Every normal cell shares the normal genotype, every reduction cell the reduction genotype; each cell
has its own weights. The supernet holds all 8 ops on every (node, predecessor) edge, 14 edges per
cell, and ``forward_path`` runs only the two selected edges of each node with their selected ops
(single-path sampling as in WPNAS, Lin et al., section 4.2: parent pair and ops are independent
decisions). The stand-alone network is this class holding only the selected edges and ops, so that
``Supernet.export`` copies weights by name. Not included: the auxiliary head and drop-path of the
DARTS evaluation recipe (training tricks outside the search space).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from nas_lightning.supernet.base import Supernet
from nas_lightning.supernet.darts_ops import DARTS_OPS, FactorizedReduce
from nas_lightning.supernet.ops import ReLUConvBN

if TYPE_CHECKING:
    from nas_lightning.spaces.arch import Arch
    from nas_lightning.spaces.darts import DartsSpace

#: The two cell genotypes, in arch order.
DARTS_CELL_TYPES: tuple[str, ...] = ("normal", "reduce")
#: Intermediate nodes of a cell; nodes 0 and 1 are the (preprocessed) outputs of the two previous cells.
DARTS_NODES: tuple[int, ...] = (2, 3, 4, 5)
#: Decisions per node, in arch order: op on the edge from the smaller parent, op on the edge from the
#: larger parent (in the order the genotype string lists them), then the parent pair.
DECISIONS_PER_NODE = 3

#: One node of a genotype: (parent, op) of its two input edges, smaller parent first.
Gene = tuple[tuple[int, str], tuple[int, str]]


def parent_pairs(node: int) -> tuple[tuple[int, int], ...]:
    """All unordered pairs of distinct predecessors of ``node``, in lexicographic order."""
    return tuple(itertools.combinations(range(node), 2))


def pair_name(pair: tuple[int, int]) -> str:
    return f"{pair[0]},{pair[1]}"


def edge_key(node: int, src: int) -> str:
    return f"{node}<-{src}"


def genes_from_choices(choices: Sequence[str]) -> dict[str, list[Gene]]:
    """Per cell type, the four genes that 24 choice names (``DartsSpace.decisions`` order) select."""
    genes: dict[str, list[Gene]] = {}
    for c, cell_type in enumerate(DARTS_CELL_TYPES):
        genes[cell_type] = []
        for n in range(len(DARTS_NODES)):
            op_a, op_b, pair = choices[(c * len(DARTS_NODES) + n) * DECISIONS_PER_NODE:][:DECISIONS_PER_NODE]
            a, b = (int(j) for j in pair.split(","))
            genes[cell_type].append(((a, op_a), (b, op_b)))
    return genes


class DartsCell(nn.Module):
    """One cell; ``edge_ops`` maps each (node, parent) edge it holds to the op names it holds there."""

    def __init__(self, c_prev_prev: int, c_prev: int, C: int, reduction: bool, reduction_prev: bool,
                 edge_ops: Mapping[tuple[int, int], Sequence[str]], affine: bool) -> None:
        super().__init__()
        self.reduction = reduction
        self.preprocess0: nn.Module = (
            FactorizedReduce(c_prev_prev, C, affine) if reduction_prev else ReLUConvBN(c_prev_prev, C, 1, affine=affine)
        )
        self.preprocess1 = ReLUConvBN(c_prev, C, 1, affine=affine)
        self.edges = nn.ModuleDict({
            edge_key(node, src): nn.ModuleDict({
                op: DARTS_OPS.get(op)(C, 2 if reduction and src < 2 else 1, affine) for op in ops
            })
            for (node, src), ops in edge_ops.items()
        })

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, genes: Sequence[Gene]) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node, ((a, op_a), (b, op_b)) in zip(DARTS_NODES, genes):
            edges_a, edges_b = self.edges[edge_key(node, a)], self.edges[edge_key(node, b)]
            states.append(edges_a[op_a](states[a]) + edges_b[op_b](states[b]))
        return torch.cat(states[2:], dim=1)


class DartsNetwork(Supernet):
    """The DARTS CIFAR network (no auxiliary head, no drop-path); a supernet when ``fixed_arch`` is None."""

    def __init__(self, space: DartsSpace, fixed_arch: Arch | None = None, bn_affine: bool = True) -> None:
        super().__init__(space, fixed_arch)
        c_curr = space.stem_multiplier * space.C
        self.stem = nn.Sequential(
            nn.Conv2d(space.in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr)
        )
        c_prev_prev, c_prev, c_curr = c_curr, c_curr, space.C
        reduction_prev = False
        cells: list[DartsCell] = []
        for layer in range(space.layers):
            reduction = layer in space.reduction_layers
            if reduction:
                c_curr *= 2
            edge_ops = self._edge_ops(DARTS_CELL_TYPES.index("reduce" if reduction else "normal"))
            cells.append(DartsCell(c_prev_prev, c_prev, c_curr, reduction, reduction_prev, edge_ops, bn_affine))
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, len(DARTS_NODES) * c_curr
        self.cells = nn.ModuleList(cells)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, space.num_classes)

    def _edge_ops(self, cell_index: int) -> dict[tuple[int, int], list[str]]:
        """The edges of one cell type that get weights: all of them, or the fixed arch's two per node."""
        edge_ops: dict[tuple[int, int], list[str]] = {}
        for n, node in enumerate(DARTS_NODES):
            first = (cell_index * len(DARTS_NODES) + n) * DECISIONS_PER_NODE
            pairs = [tuple(int(j) for j in p.split(",")) for p in self.candidates(first + 2)]
            for pair in pairs:
                for src, decision in zip(pair, (first, first + 1)):
                    # op_a and op_b share their choices, so a supernet edge holds each op once.
                    edge_ops[(node, src)] = self.candidates(decision)
        return edge_ops

    def forward_path(self, x: torch.Tensor, choices: Sequence[str]) -> torch.Tensor:
        genes = genes_from_choices(choices)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, genes["reduce" if cell.reduction else "normal"])
        return self.classifier(self.global_pooling(s1).flatten(1))
