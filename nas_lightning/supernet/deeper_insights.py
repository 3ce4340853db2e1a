"""The network of the Deeper-Insights space (Zhang et al., arXiv:2001.01431; the authors' ``SearchCNN``), as a
supernet or as a stand-alone network of one cell arch.

``stem``: conv3x3 - BN - conv3x3 - BN to ``stem_multiplier * C`` channels (stride 1). ``body``: ``num_cells``
cells, none of them a reduction; a cell preprocesses its input with a 1x1 ReLU-conv-BN to ``C`` channels (node
0), computes node 1 = op(node 0) and node 2 = op(node 0) + op(node 1), and outputs the concatenation of nodes 1
and 2 (``2 * C`` channels). ``head``: global average pooling and a linear classifier (no BN-ReLU before it).
Every cell uses the same cell arch, with its own weights. See ``nas_lightning.spaces.deeper_insights`` for where
this follows the authors' code and where it departs from it (docs/design_choices.md, "Search spaces").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from typing_extensions import override

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import NETWORKS
from nas_lightning.spaces.deeper_insights import DEEPER_INSIGHTS_EDGES, DEEPER_INSIGHTS_NODES, DeeperInsightsSpace
from nas_lightning.supernet.base import Supernet
from nas_lightning.supernet.choice import ChoiceBlock
from nas_lightning.supernet.layers import ReLUConvBN, classifier_head


class DeeperInsightsCell(nn.Module):
    """One cell: ``preprocess`` (1x1 ReLU-conv-BN to ``C``), then one ``ChoiceBlock`` per edge."""

    def __init__(self, c_prev: int, C: int, candidates: Sequence[Sequence[str]], affine: bool) -> None:
        super().__init__()
        self.preprocess = ReLUConvBN(c_prev, C, 1, affine=affine)
        self.edges = nn.ModuleList(ChoiceBlock.from_ops(c, C, C, 1, affine) for c in candidates)

    @override
    def forward(self, x: torch.Tensor, choices: Sequence[str]) -> torch.Tensor:
        nodes = [self.preprocess(x)]
        for node in DEEPER_INSIGHTS_NODES:
            total: torch.Tensor | None = None
            for e, (to, src) in enumerate(DEEPER_INSIGHTS_EDGES):
                if to == node:
                    out = self.edges[e](nodes[src], choices[e])
                    total = out if total is None else total + out
            assert total is not None  # every intermediate node has an incoming edge
            nodes.append(total)
        return torch.cat(nodes[1:], dim=1)


@NETWORKS.register(DeeperInsightsSpace)
class DeeperInsightsNetwork(Supernet):
    space: DeeperInsightsSpace

    def __init__(self, space: DeeperInsightsSpace, fixed_arch: Arch | None = None, bn_affine: bool = True) -> None:
        super().__init__(space, fixed_arch)
        C = space.C
        c_stem = space.stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(space.in_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem),
            nn.Conv2d(c_stem, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem),
        )
        candidates = [self.candidates(d) for d in range(space.num_decisions)]
        c_out = len(DEEPER_INSIGHTS_NODES) * C
        self.body = nn.ModuleList(
            DeeperInsightsCell(c_stem if i == 0 else c_out, C, candidates, bn_affine) for i in range(space.num_cells)
        )
        self.head = classifier_head(c_out, space.num_classes, bn_relu=False)

    @override
    def forward_path(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        choices = self.space.choice_names(arch)
        x = self.stem(x)
        for cell in self.body:
            x = cell(x, choices)
        return self.head(x)
