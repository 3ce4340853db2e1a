"""Candidate operations, registered under the short names that arch strings use.

Every builder takes ``(C, affine)``: channels in = channels out = ``C`` (the cell spaces keep the
width inside a cell), and whether BN layers carry affine parameters (SPOS supernets use none).
NAS-Bench-201 definitions follow the NATS-Bench authors' ``cell_operations.py``: ``nor_conv_kxk``
is ReLU-Conv-BN, ``avg_pool_3x3`` does not count padding, ``none`` outputs zeros.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from nas_lightning.utils.registry import Registry

OpBuilder = Callable[[int, bool], nn.Module]
OPS: Registry[OpBuilder] = Registry("op")


class Zero(nn.Module):
    """The ``none`` op. Cells skip it (``is_zero``) so that it costs nothing on the selected path."""

    is_zero = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 affine: bool = True) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


@OPS.register("none")
def _none(C: int, affine: bool) -> nn.Module:
    return Zero()


@OPS.register("skip_connect")
def _skip(C: int, affine: bool) -> nn.Module:
    return nn.Identity()


@OPS.register("nor_conv_1x1")
def _conv1(C: int, affine: bool) -> nn.Module:
    return ReLUConvBN(C, C, 1, affine=affine)


@OPS.register("nor_conv_3x3")
def _conv3(C: int, affine: bool) -> nn.Module:
    return ReLUConvBN(C, C, 3, affine=affine)


@OPS.register("nor_conv_5x5")
def _conv5(C: int, affine: bool) -> nn.Module:
    return ReLUConvBN(C, C, 5, affine=affine)


@OPS.register("avg_pool_3x3")
def _avg(C: int, affine: bool) -> nn.Module:
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


@OPS.register("max_pool_3x3")
def _max(C: int, affine: bool) -> nn.Module:
    return nn.MaxPool2d(3, stride=1, padding=1)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))
