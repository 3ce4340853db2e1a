"""The chain network: a stem, L searchable layers in sequence, and a classifier head."""

from __future__ import annotations

import torch
from torch import nn
from typing_extensions import override

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import NETWORKS
from nas_lightning.spaces.chain import ChainSpace
from nas_lightning.supernet.base import Supernet
from nas_lightning.supernet.choice import ChoiceBlock
from nas_lightning.supernet.layers import classifier_head


@NETWORKS.register(ChainSpace)
class ChainNetwork(Supernet):
    space: ChainSpace

    def __init__(self, space: ChainSpace, fixed_arch: Arch | None = None, bn_affine: bool = True) -> None:
        super().__init__(space, fixed_arch)
        C = space.C
        self.stem = nn.Sequential(
            nn.Conv2d(space.in_channels, C, 3, stride=space.stem_stride, padding=1, bias=False), nn.BatchNorm2d(C)
        )
        self.body = nn.ModuleList(
            ChoiceBlock.from_ops(self.candidates(i), C, C, 1, bn_affine) for i in range(space.num_layers)
        )
        self.head = classifier_head(C, space.num_classes, bn_relu=True)

    @override
    def forward_path(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        x = self.stem(x)
        for layer, choice in zip(self.body, self.space.choice_names(arch)):
            x = layer(x, choice)
        return self.head(x)
