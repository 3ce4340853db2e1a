"""The NAS-Bench-201 macro network, as a supernet or as a stand-alone network of one cell.

Structure (Dong & Yang, arXiv:2001.00326, section 2.1; the NATS-Bench authors' ``TinyNetwork``): 3x3 conv
stem + BN; three stages of N cells (C, 2C, 4C) with ResNet basic reduction blocks between them; BN-ReLU,
global average pool, linear. Every cell of the network uses the same cell arch; each cell has its own weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from typing_extensions import override

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import NETWORKS
from nas_lightning.spaces.nb201 import NB201_EDGES, NB201Space
from nas_lightning.supernet.base import Supernet
from nas_lightning.supernet.choice import ChoiceBlock
from nas_lightning.supernet.layers import ResNetBasicBlock, classifier_head


class NB201Cell(nn.Module):
    def __init__(self, C: int, candidates: Sequence[Sequence[str]], affine: bool) -> None:
        super().__init__()
        self.edges = nn.ModuleList(ChoiceBlock.from_ops(c, C, C, 1, affine) for c in candidates)

    @override
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


@NETWORKS.register(NB201Space)
class NB201Network(Supernet):
    space: NB201Space

    def __init__(self, space: NB201Space, fixed_arch: Arch | None = None, bn_affine: bool = True) -> None:
        super().__init__(space, fixed_arch)
        C, N = space.C, space.N
        candidates = [self.candidates(d) for d in range(space.num_decisions)]
        self.stem = nn.Sequential(nn.Conv2d(space.in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        body: list[nn.Module] = []
        c_prev = C
        for stage, c in enumerate((C, 2 * C, 4 * C)):
            if stage > 0:
                body.append(ResNetBasicBlock(c_prev, c, stride=2))
            body.extend(NB201Cell(c, candidates, bn_affine) for _ in range(N))
            c_prev = c
        self.body = nn.ModuleList(body)
        self.head = classifier_head(c_prev, space.num_classes, bn_relu=True)

    @override
    def forward_path(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        choices = self.space.choice_names(arch)
        x = self.stem(x)
        for block in self.body:
            x = block(x, choices) if isinstance(block, NB201Cell) else block(x)
        return self.head(x)
