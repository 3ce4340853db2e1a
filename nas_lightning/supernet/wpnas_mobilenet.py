"""The network of WPNAS's MobileNet space (arXiv:2203.02086, section 4.3; ``nas_lightning.spaces.wpnas_mobilenet``),
as a supernet or as a stand-alone network of one arch.

``stem`` (3x3 conv + BN + ReLU), ``body`` (17 ``WPNASBlock``s) and ``head`` (1x1 conv + BN + ReLU, pooling, the
classifier), built from timm layers (``create_conv2d``, ``BatchNormAct2d``, ``SqueezeExcite``). Weight sharing
inside a block (docs/design_choices.md, "Search spaces"): kernel and expansion ratio choose one of six weight
sets (``MBConv_{e}_{k}``: 1x1 expansion - kxk depthwise - SE - 1x1 linear projection, BN after each conv, a
residual when stride is 1 and widths agree); the activation has no weights and is applied in the forward pass,
and each of the six holds one SE module, used when SE is on. So archs that differ only in activation or SE share
every conv weight. timm's ``InvertedResidual`` fixes its activation at construction, hence this block: the same
layout with the activation chosen per call. The SE module is timm's (reduction to a quarter of the expanded width,
ReLU inside, hard-sigmoid gate as in MobileNetV3, arXiv:1905.02244).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, create_conv2d, make_divisible
from timm.models._efficientnet_blocks import SqueezeExcite
from torch import nn
from typing_extensions import override

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import NETWORKS, SearchSpace
from nas_lightning.spaces.wpnas_mobilenet import (
    WPNAS_ACTS,
    WPNAS_EXPANDS,
    WPNAS_KERNELS,
    BlockChoice,
    BlockShape,
    WPNASMobileNetSpace,
)
from nas_lightning.supernet.base import Supernet
from nas_lightning.supernet.hypernet import HYPERNET_SITES, ConvSite

#: The activations a block may choose, by choice name.
ACTIVATIONS = {"ReLU": F.relu, "HardSwish": F.hardswish}
if set(ACTIVATIONS) != set(WPNAS_ACTS):
    raise ImportError(f"the WPNAS MobileNet activations {WPNAS_ACTS} need a function each, got {list(ACTIVATIONS)}")


class SearchableMBConv(nn.Module):
    """A MobileNetV2 inverted bottleneck whose activation and SE are chosen per call (``with_se``: whether it holds
    the SE module at all)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int, with_se: bool,
                 affine: bool) -> None:
        super().__init__()
        mid = make_divisible(c_in * expand) if expand != 1 else c_in
        self.has_skip = stride == 1 and c_in == c_out
        self.has_expansion = expand != 1
        if self.has_expansion:
            self.conv_pw = create_conv2d(c_in, mid, 1)
            self.bn1 = nn.BatchNorm2d(mid, affine=affine)
        self.conv_dw = create_conv2d(mid, mid, kernel, stride=stride, depthwise=True)
        self.bn2 = nn.BatchNorm2d(mid, affine=affine)
        self.se = SqueezeExcite(mid, rd_ratio=0.25, act_layer=nn.ReLU, gate_layer="hard_sigmoid") if with_se else None
        self.conv_pwl = create_conv2d(mid, c_out, 1)
        self.bn3 = nn.BatchNorm2d(c_out, affine=affine)

    @override
    def forward(self, x: torch.Tensor, act: str, se: bool) -> torch.Tensor:
        f = ACTIVATIONS[act]
        out = f(self.bn1(self.conv_pw(x))) if self.has_expansion else x
        out = f(self.bn2(self.conv_dw(out)))
        if se:
            if self.se is None:
                raise RuntimeError("this block was built without SE (a stand-alone network of an arch with SE off)")
            out = self.se(out)
        out = self.bn3(self.conv_pwl(out))
        return out + x if self.has_skip else out


class WPNASBlock(nn.Module):
    """One searchable block: the weight sets it holds (``candidates``, keyed ``MBConv_{e}_{k}``)."""

    def __init__(self, shape: BlockShape, ops: list[tuple[int, int]], with_se: bool, affine: bool) -> None:
        super().__init__()
        self.candidates = nn.ModuleDict({
            f"MBConv_{e}_{k}": SearchableMBConv(shape.c_in, shape.c_out, k, shape.stride, e, with_se, affine)
            for e, k in ops
        })

    @override
    def forward(self, x: torch.Tensor, choice: BlockChoice) -> torch.Tensor:
        return self.candidates[choice.op](x, choice.act, choice.se)


class _BlockForCost(nn.Module):
    """A block with its choice bound, so that ``count_module_cost`` can call it with the input alone."""

    def __init__(self, shape: BlockShape, choice: BlockChoice) -> None:
        super().__init__()
        self.block = WPNASBlock(shape, [(choice.expand, choice.kernel)], choice.se, True)
        self.choice = choice

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, self.choice)


@NETWORKS.register(WPNASMobileNetSpace)
class WPNASMobileNetNetwork(Supernet):
    """Args:
        bn_affine: whether the blocks' BNs learn affine parameters (the fixed stem and head always do).
    """

    space: WPNASMobileNetSpace

    def __init__(self, space: WPNASMobileNetSpace, fixed_arch: Arch | None = None, bn_affine: bool = True) -> None:
        super().__init__(space, fixed_arch)
        self.stem = self.build_stem(space)
        all_ops = [(int(e), int(k)) for e in WPNAS_EXPANDS for k in WPNAS_KERNELS]
        fixed = None if fixed_arch is None else space.block_choices(fixed_arch)
        self.body = nn.ModuleList(
            WPNASBlock(shape, all_ops, True, bn_affine) if fixed is None
            else WPNASBlock(shape, [(fixed[b].expand, fixed[b].kernel)], fixed[b].se, bn_affine)
            for b, shape in enumerate(space.blocks)
        )
        self.head = self.build_head(space)

    @staticmethod
    def build_stem(space: WPNASMobileNetSpace) -> nn.Sequential:
        return nn.Sequential(OrderedDict(
            conv=create_conv2d(space.in_channels, space.stem_channels, 3, stride=space.stem_stride),
            bn=BatchNormAct2d(space.stem_channels, act_layer=nn.ReLU),
        ))

    @staticmethod
    def build_head(space: WPNASMobileNetSpace) -> nn.Sequential:
        return nn.Sequential(OrderedDict(
            conv=create_conv2d(space.blocks[-1].c_out, space.head_channels, 1),
            bn=BatchNormAct2d(space.head_channels, act_layer=nn.ReLU),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1),
            classifier=nn.Linear(space.head_channels, space.num_classes),
        ))

    @staticmethod
    def build_block_for_cost(shape: BlockShape, choice: BlockChoice) -> nn.Module:
        """One block of a stand-alone network on its own (``WPNASMobileNetSpace.count_cost`` counts it)."""
        return _BlockForCost(shape, choice)

    @override
    def forward_path(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        x = self.stem(x)
        for block, choice in zip(self.body, self.space.block_choices(arch)):
            x = block(x, choice)
        return self.head(x)


@HYPERNET_SITES.register(WPNASMobileNetSpace)
def _wpnas_mobilenet_sites(space: SearchSpace, supernet: nn.Module) -> list[ConvSite]:
    """WPNAS HyperNet sites: each block's depthwise conv takes the offset of the block's kernel decision, when
    kernel and expansion pick its weight set (the 1x1 convs and the SE's are left alone; docs/design_choices.md,
    "WPNAS")."""
    assert isinstance(space, WPNASMobileNetSpace)
    sites = []
    for b, block in enumerate(supernet.body):
        kernel, expand = space.decision_index(b, "kernel"), space.decision_index(b, "expand")
        for op in block.candidates:
            _, e, k = op.split("_")
            sites.append(ConvSite(f"body.{b}.candidates.{op}.conv_dw", kernel, WPNAS_KERNELS.index(k),
                                  ((expand, WPNAS_EXPANDS.index(e)),)))
    return sites
