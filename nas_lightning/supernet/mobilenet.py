"""The ProxylessNAS / PC-NAS MobileNet network, as a supernet or as a stand-alone network of one arch.

Structure (ProxylessNAS, arXiv:1812.00332; PC-NAS, arXiv:1910.02543, A.1; docs/design_choices.md, "Search
spaces"): a 3x3 stem conv (stride ``stem_stride``) + BN + ReLU6 and a fixed MBConv1 3x3 (``stem``), the
searchable layers (``body``, one ``ChoiceBlock`` each, ops from ``OPS``), and a 1x1 conv + BN + ReLU6, global
average pooling and the classifier (``head``). The layers' shapes come from ``MobileNetSpace.layers``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from timm.layers import BatchNormAct2d, create_conv2d
from timm.models._efficientnet_blocks import DepthwiseSeparableConv
from torch import nn
from typing_extensions import override

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import NETWORKS
from nas_lightning.spaces.mobilenet import MobileNetSpace
from nas_lightning.supernet.base import Supernet
from nas_lightning.supernet.choice import ChoiceBlock
from nas_lightning.supernet.ops import OPS


@NETWORKS.register(MobileNetSpace)
class MobileNetNetwork(Supernet):
    """Args:
        bn_affine: whether the searchable layers' BNs learn affine parameters (the fixed stem and
            head always do).
    """

    space: MobileNetSpace

    def __init__(self, space: MobileNetSpace, fixed_arch: Arch | None = None, bn_affine: bool = True) -> None:
        super().__init__(space, fixed_arch)
        self.stem = self.build_stem(space)
        self.body = nn.ModuleList(
            ChoiceBlock({op: self.build_op(space, i, op, bn_affine) for op in self.candidates(i)})
            for i in range(space.num_decisions)
        )
        self.head = self.build_head(space)

    @staticmethod
    def build_stem(space: MobileNetSpace) -> nn.Sequential:
        """3x3 conv + BN + ReLU6, then the fixed MBConv1 3x3 (docs/design_choices.md, "Search spaces")."""
        return nn.Sequential(OrderedDict(
            conv=create_conv2d(space.in_channels, space.stem_channels, 3, stride=space.stem_stride),
            bn=BatchNormAct2d(space.stem_channels, act_layer=nn.ReLU6),
            block=DepthwiseSeparableConv(space.stem_channels, space.first_channels, 3, 1, act_layer=nn.ReLU6),
        ))

    @staticmethod
    def build_head(space: MobileNetSpace) -> nn.Sequential:
        """1x1 conv + BN + ReLU6, global average pooling, the classifier."""
        c_last = space.layers[-1].c_out if space.layers else space.first_channels
        return nn.Sequential(OrderedDict(
            conv=create_conv2d(c_last, space.head_channels, 1),
            bn=BatchNormAct2d(space.head_channels, act_layer=nn.ReLU6),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1),
            classifier=nn.Linear(space.head_channels, space.num_classes),
        ))

    @staticmethod
    def build_op(space: MobileNetSpace, layer: int, op: str, affine: bool = True) -> nn.Module:
        """Candidate ``op`` of searchable layer ``layer`` on its own (also used by the latency table)."""
        spec = space.layers[layer]
        return OPS.get(op)(spec.c_in, spec.c_out, spec.stride, affine)

    @override
    def forward_path(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        x = self.stem(x)
        for layer, choice in zip(self.body, self.space.choice_names(arch)):
            x = layer(x, choice)
        return self.head(x)
