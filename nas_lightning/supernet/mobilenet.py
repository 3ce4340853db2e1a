"""The ProxylessNAS / PC-NAS MobileNet network, as a supernet or as a stand-alone network of one arch.

Structure (SPEC.md "MobileNet"; ProxylessNAS, arXiv:1812.00332; PC-NAS, arXiv:1910.02543, A.1): a 3x3
stem conv (stride ``stem_stride``) + BN + ReLU6, a fixed MBConv1 3x3, the searchable layers (one
``MixedLayer`` each), a 1x1 conv + BN + ReLU6, global average pooling and the classifier.

Candidate ops live in ``MOBILENET_OPS``; every builder takes ``(c_in, c_out, stride, affine)``:

* ``MBConv_{e}_{k}``: the mobile inverted bottleneck of MobileNetV2 (arXiv:1801.04381), timm's
  ``InvertedResidual`` (1x1 expand to ``e * c_in`` - kxk depthwise - 1x1 linear projection, BN after
  each conv, ReLU6 after the first two). ``e = 1`` has no expansion conv (timm's
  ``DepthwiseSeparableConv``), as in ProxylessNAS's ``MBInvertedConvLayer``.
* ``NConv_{e}_{k}``, ``DConv_{e}_{k}``, ``RConv_{e}_{k}`` (PC-NAS large space, A.1): Conv1x1-ConvKxK-Conv1x1,
  Conv1x1-ConvKxK-ConvKxK-Conv1x1 and Conv1x1-Conv1xK-ConvKx1-Conv1x1, with expand ratio ``e`` = middle
  channels / input channels. The paper does not say whether the middle convs are grouped; they are
  dense here (``groups=1``): with depthwise middle convs NConv would be MBConv again, the small expand
  ratios the paper gives them (1, 2, 4 against MBConv's 3, 6) are those of dense bottlenecks, and
  PC-NAS-L's 15.3M parameters (Table 1) are out of reach of depthwise ops (every layer MBConv_6_7 gives
  5.1M at width 1.0; every layer DConv_2_3 gives 18.4M here).
  The same BN / ReLU6 / linear-projection pattern as MBConv.
* ``Identity`` where input and output shapes match.

Every op adds its input back (residual) when stride is 1 and channels are equal, as MobileNetV2 and
ProxylessNAS do.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

import torch
from timm.layers import BatchNormAct2d, create_conv2d, make_divisible
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from torch import nn

from nas_lightning.supernet.base import Supernet
from nas_lightning.utils.registry import Registry

if TYPE_CHECKING:
    from nas_lightning.spaces.arch import Arch
    from nas_lightning.spaces.mobilenet import MobileNetSpace

MobileOpBuilder = Callable[[int, int, int, bool], nn.Module]
MOBILENET_OPS: Registry[MobileOpBuilder] = Registry("MobileNet op")


def _norm(affine: bool) -> Callable[..., nn.Module]:
    # timm turns a BatchNorm2d partial into BatchNormAct2d and keeps the bound ``affine``
    return partial(nn.BatchNorm2d, affine=affine)


def _mbconv(expand: int, kernel: int) -> MobileOpBuilder:
    def build(c_in: int, c_out: int, stride: int, affine: bool) -> nn.Module:
        if expand == 1:
            return DepthwiseSeparableConv(c_in, c_out, kernel, stride, act_layer=nn.ReLU6, norm_layer=_norm(affine))
        return InvertedResidual(c_in, c_out, kernel, stride, exp_ratio=expand, act_layer=nn.ReLU6,
                                norm_layer=_norm(affine))

    return build


class Bottleneck(nn.Module):
    """Conv1x1 - dense spatial convs - Conv1x1 (linear), the PC-NAS large-space ops (A.1).

    Args:
        spatial: ``(kernel_h, kernel_w)`` of each middle conv, in order; the first carries the stride.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, exp_ratio: float,
                 spatial: Sequence[tuple[int, int]], affine: bool) -> None:
        super().__init__()
        mid = make_divisible(c_in * exp_ratio)
        self.has_skip = stride == 1 and c_in == c_out
        self.conv_pw = create_conv2d(c_in, mid, 1)
        self.bn1 = BatchNormAct2d(mid, affine=affine, act_layer=nn.ReLU6)
        layers = []
        for i, (kh, kw) in enumerate(spatial):
            conv = nn.Conv2d(mid, mid, (kh, kw), stride=stride if i == 0 else 1, padding=(kh // 2, kw // 2), bias=False)
            layers.append(nn.Sequential(OrderedDict(conv=conv, bn=BatchNormAct2d(mid, affine=affine,
                                                                                 act_layer=nn.ReLU6))))
        self.spatial = nn.Sequential(*layers)
        self.conv_pwl = create_conv2d(mid, c_out, 1)
        self.bn3 = BatchNormAct2d(c_out, affine=affine, apply_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv_pwl(self.spatial(self.bn1(self.conv_pw(x)))))
        return out + x if self.has_skip else out


def _bottleneck(expand: int, spatial: Sequence[tuple[int, int]]) -> MobileOpBuilder:
    def build(c_in: int, c_out: int, stride: int, affine: bool) -> nn.Module:
        return Bottleneck(c_in, c_out, stride, expand, spatial, affine)

    return build


def _identity(c_in: int, c_out: int, stride: int, affine: bool) -> nn.Module:
    if c_in != c_out or stride != 1:
        raise ValueError(f"Identity needs equal shapes, got c_in={c_in}, c_out={c_out}, stride={stride}")
    return nn.Identity()


for _k in (3, 5, 7):
    for _e in (1, 3, 6):
        MOBILENET_OPS.register(f"MBConv_{_e}_{_k}")(_mbconv(_e, _k))
MOBILENET_OPS.register("Identity")(_identity)
# PC-NAS large space, Table 4 (right column): OP_X_Y is OP with expand ratio X and K = Y.
for _e, _k in ((1, 3), (2, 3)):
    MOBILENET_OPS.register(f"NConv_{_e}_{_k}")(_bottleneck(_e, [(_k, _k)]))
    MOBILENET_OPS.register(f"DConv_{_e}_{_k}")(_bottleneck(_e, [(_k, _k), (_k, _k)]))
for _k in (5, 7):
    for _e in (1, 2, 4):
        MOBILENET_OPS.register(f"RConv_{_e}_{_k}")(_bottleneck(_e, [(1, _k), (_k, 1)]))


class MixedLayer(nn.Module):
    """One searchable layer: its candidate ops keyed by name; ``forward(x, choice)`` runs only one.

    A stand-alone network holds the chosen op under the same key, so weights copy over by name.
    """

    def __init__(self, candidates: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.candidates = nn.ModuleDict(candidates)

    def forward(self, x: torch.Tensor, choice: str) -> torch.Tensor:
        return self.candidates[choice](x)


def build_stem(space: MobileNetSpace) -> nn.Sequential:
    """3x3 conv + BN + ReLU6, then the fixed MBConv1 3x3 (SPEC.md)."""
    return nn.Sequential(OrderedDict(
        conv=create_conv2d(space.in_channels, space.stem_channels, 3, stride=space.stem_stride),
        bn=BatchNormAct2d(space.stem_channels, act_layer=nn.ReLU6),
        block=DepthwiseSeparableConv(space.stem_channels, space.first_channels, 3, 1, act_layer=nn.ReLU6),
    ))


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


def build_op(space: MobileNetSpace, layer: int, op: str, affine: bool = True) -> nn.Module:
    """Candidate ``op`` of searchable layer ``layer`` on its own (also used by the latency table)."""
    spec = space.layers[layer]
    return MOBILENET_OPS.get(op)(spec.c_in, spec.c_out, spec.stride, affine)


class MobileNetNetwork(Supernet):
    """Args:
        bn_affine: whether the searchable layers' BNs learn affine parameters (the fixed stem and
            head always do).
    """

    def __init__(self, space: MobileNetSpace, fixed_arch: Arch | None = None, bn_affine: bool = True) -> None:
        super().__init__(space, fixed_arch)
        self.stem = build_stem(space)
        self.blocks = nn.ModuleList(
            MixedLayer({op: build_op(space, i, op, bn_affine) for op in self.candidates(i)})
            for i in range(space.num_decisions)
        )
        self.head = build_head(space)

    def forward_path(self, x: torch.Tensor, choices: Sequence[str]) -> torch.Tensor:
        x = self.stem(x)
        for block, choice in zip(self.blocks, choices):
            x = block(x, choice)
        return self.head(x)
