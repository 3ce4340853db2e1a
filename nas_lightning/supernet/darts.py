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

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from typing_extensions import override

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import NETWORKS
from nas_lightning.spaces.darts import DARTS_CELL_TYPES, DARTS_NODES, DartsSpace, Gene
from nas_lightning.supernet.base import Supernet
from nas_lightning.supernet.choice import ChoiceBlock
from nas_lightning.supernet.layers import FactorizedReduce, ReLUConvBN, classifier_head


def edge_key(node: int, src: int) -> str:
    """The module key of the edge from ``src`` into ``node`` (the notation of NAS-Bench-201's decisions)."""
    return f"{node}<-{src}"


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
        # edges leaving the cell's inputs (nodes 0 and 1) halve the resolution in a reduction cell
        self.edges = nn.ModuleDict({
            edge_key(node, src): ChoiceBlock.from_ops(ops, C, C, 2 if reduction and src < 2 else 1, affine)
            for (node, src), ops in edge_ops.items()
        })

    @override
    def forward(self, s0: torch.Tensor, s1: torch.Tensor, genes: Sequence[Gene]) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node, (a, b) in zip(DARTS_NODES, genes):
            out_a = self.edges[edge_key(node, a.parent)](states[a.parent], a.op)
            out_b = self.edges[edge_key(node, b.parent)](states[b.parent], b.op)
            states.append(out_a + out_b)
        return torch.cat(states[2:], dim=1)


@NETWORKS.register(DartsSpace)
class DartsNetwork(Supernet):
    """The DARTS CIFAR network (no auxiliary head, no drop-path); a supernet when ``fixed_arch`` is None."""

    space: DartsSpace

    def __init__(self, space: DartsSpace, fixed_arch: Arch | None = None, bn_affine: bool = True) -> None:
        super().__init__(space, fixed_arch)
        c_curr = space.stem_multiplier * space.C
        self.stem = nn.Sequential(
            nn.Conv2d(space.in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr)
        )
        edge_ops = {cell_type: space.cell_edges(cell_type, fixed_arch) for cell_type in DARTS_CELL_TYPES}
        c_prev_prev, c_prev, c_curr = c_curr, c_curr, space.C
        reduction_prev = False
        cells: list[DartsCell] = []
        for layer in range(space.layers):
            reduction = layer in space.reduction_layers
            if reduction:
                c_curr *= 2
            cells.append(DartsCell(c_prev_prev, c_prev, c_curr, reduction, reduction_prev,
                                   edge_ops["reduce" if reduction else "normal"], bn_affine))
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, len(DARTS_NODES) * c_curr
        self.body = nn.ModuleList(cells)
        self.head = classifier_head(c_prev, space.num_classes, bn_relu=False)

    @override
    def forward_path(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        genotype = self.space.genotype(arch)
        s0 = s1 = self.stem(x)
        for cell in self.body:
            s0, s1 = s1, cell(s0, s1, genotype["reduce" if cell.reduction else "normal"])
        return self.head(s1)
