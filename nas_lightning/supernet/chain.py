"""The chain network: a stem, L searchable layers in sequence, and a classifier."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from nas_lightning.supernet.base import Supernet
from nas_lightning.supernet.choice import ChoiceBlock

if TYPE_CHECKING:
    from nas_lightning.spaces.arch import Arch
    from nas_lightning.spaces.chain import ChainSpace


class ChainNetwork(Supernet):
    def __init__(self, space: ChainSpace, fixed_arch: Arch | None = None, bn_affine: bool = True) -> None:
        super().__init__(space, fixed_arch)
        C = space.C
        self.stem = nn.Sequential(
            nn.Conv2d(space.in_channels, C, 3, stride=space.stem_stride, padding=1, bias=False), nn.BatchNorm2d(C)
        )
        self.layers = nn.ModuleList(ChoiceBlock(self.candidates(i), C, bn_affine) for i in range(space.num_layers))
        self.lastact = nn.Sequential(nn.BatchNorm2d(C), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C, space.num_classes)

    def forward_path(self, x: torch.Tensor, choices: Sequence[str]) -> torch.Tensor:
        x = self.stem(x)
        for layer, choice in zip(self.layers, choices):
            x = layer(x, choice)
        return self.classifier(self.global_pooling(self.lastact(x)).flatten(1))
