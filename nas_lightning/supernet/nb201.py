"""The NAS-Bench-201 macro network, as a supernet or as a stand-alone network of one cell.

Structure (Dong & Yang, ICLR 2020; SPEC.md): 3x3 conv stem + BN; three stages of N cells
(C, 2C, 4C) with ResNet basic reduction blocks between them; BN-ReLU, global average pool, linear.
Every cell of the network uses the same cell arch; each cell has its own weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from nas_lightning.supernet.base import Supernet
from nas_lightning.supernet.choice import ChoiceBlock
from nas_lightning.supernet.ops import ResNetBasicBlock

if TYPE_CHECKING:
    from nas_lightning.spaces.arch import Arch
    from nas_lightning.spaces.nb201 import NB201Space

#: (to_node, from_node) of the six edges, in arch-string order.
NB201_EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))


class NB201Cell(nn.Module):
    def __init__(self, C: int, candidates: Sequence[Sequence[str]], affine: bool) -> None:
        super().__init__()
        self.edges = nn.ModuleList(ChoiceBlock(c, C, affine) for c in candidates)

    def forward(self, x: torch.Tensor, choices: Sequence[str]) -> torch.Tensor:
        nodes = [x]
        for node in (1, 2, 3):
            total: torch.Tensor | None = None
            for e, (to, src) in enumerate(NB201_EDGES):
                if to != node or self.edges[e].is_zero(choices[e]):
                    continue  # a 'none' edge adds zeros: skipping it costs nothing and changes nothing
                out = self.edges[e](nodes[src], choices[e])
                total = out if total is None else total + out
            nodes.append(torch.zeros_like(x) if total is None else total)
        return nodes[-1]


class NB201Network(Supernet):
    def __init__(self, space: NB201Space, fixed_arch: Arch | None = None, bn_affine: bool = True) -> None:
        super().__init__(space, fixed_arch)
        C, N = space.C, space.N
        candidates = [self.candidates(d) for d in range(space.num_decisions)]
        self.stem = nn.Sequential(nn.Conv2d(space.in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        cells: list[nn.Module] = []
        c_prev = C
        for stage, c in enumerate((C, 2 * C, 4 * C)):
            if stage > 0:
                cells.append(ResNetBasicBlock(c_prev, c, stride=2))
            cells.extend(NB201Cell(c, candidates, bn_affine) for _ in range(N))
            c_prev = c
        self.cells = nn.ModuleList(cells)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, space.num_classes)

    def forward_path(self, x: torch.Tensor, choices: Sequence[str]) -> torch.Tensor:
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x, choices) if isinstance(cell, NB201Cell) else cell(x)
        x = self.global_pooling(self.lastact(x)).flatten(1)
        return self.classifier(x)
