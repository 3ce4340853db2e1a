"""The building blocks of the candidate ops and of the fixed network parts.

NAS-Bench-201 blocks follow the NATS-Bench authors' ``cell_operations.py`` (``ReLUConvBN``, the
``ResNetBasicBlock`` between stages); DARTS blocks follow the DARTS authors' ``cnn/operations.py``
(Liu et al., arXiv:1806.09055): ``SepConv`` is two stacked ReLU - depthwise conv - pointwise conv - BN
units (the first one strided), ``DilConv`` one such unit with dilation, ``FactorizedReduce`` halves the
resolution. ``Bottleneck`` is the dense Conv1x1 - ConvKxK... - Conv1x1 block of the PC-NAS large space
(arXiv:1910.02543, A.1); the MobileNet inverted bottlenecks come from timm.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from timm.layers import BatchNormAct2d, create_conv2d, make_divisible
from torch import nn
from typing_extensions import override


class Zero(nn.Module):
    """The ``none`` op: zeros with the output shape of a (strided) op. Cells may skip it (``is_zero``)."""

    is_zero = True

    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 affine: bool = True) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class FactorizedReduce(nn.Module):
    """Halves the resolution with two offset stride-2 1x1 convs whose outputs are concatenated."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True) -> None:
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


class DilConv(nn.Sequential):
    """ReLU - depthwise k x k conv with dilation - pointwise conv - BN."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, dilation: int,
                 affine: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel_size, stride=stride, padding=padding, dilation=dilation,
                      groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked depthwise-separable units; only the first one is strided."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True) -> None:
        super().__init__(
            DilConv(c_in, c_in, kernel_size, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel_size, 1, padding, 1, affine),
        )


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

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv_pwl(self.spatial(self.bn1(self.conv_pw(x)))))
        return out + x if self.has_skip else out


class ResNetBasicBlock(nn.Module):
    """The fixed reduction block between NAS-Bench-201 stages (stride 2, C -> 2C)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, stride=stride)
        self.conv_b = ReLUConvBN(c_out, c_out, 3)
        self.downsample: nn.Module
        if stride == 2:
            self.downsample = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(c_in, c_out, 1, bias=False))
        elif c_in != c_out:
            self.downsample = ReLUConvBN(c_in, c_out, 1)
        else:
            self.downsample = nn.Identity()

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


def classifier_head(channels: int, num_classes: int, bn_relu: bool) -> nn.Sequential:
    """(BN - ReLU -) global average pooling - linear classifier, the ``head`` of the cell networks."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if bn_relu:
        layers["bn"] = nn.BatchNorm2d(channels)
        layers["act"] = nn.ReLU(inplace=True)
    layers["pool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten(1)
    layers["classifier"] = nn.Linear(channels, num_classes)
    return nn.Sequential(layers)
