"""The eight DARTS candidate ops (Liu et al., DARTS, arXiv:1806.09055, section 3.1 / appendix A.1).

Definitions follow the authors' ``cnn/operations.py``: ``sep_conv_kxk`` is two stacked
ReLU - depthwise conv - pointwise conv - BN units (the first one strided), ``dil_conv_kxk`` is one
ReLU - depthwise conv (dilation 2) - pointwise conv - BN unit, ``avg_pool_3x3`` does not count
padding, ``skip_connect`` is the identity or, with stride 2, ``FactorizedReduce``, and ``none`` outputs
zeros of the strided shape. As in the DARTS evaluation network, no BN follows the pooling ops (the
DARTS *search* network appends an affine-free BN to them to balance the weighted mixture; single-path
sampling mixes nothing, and the stand-alone network must compute the same function as its path).

Builders take ``(C, stride, affine)`` (stride 2 on the input edges of a reduction cell), so they have
their own registry ``DARTS_OPS``; the stride-free ``OPS`` registry of the other cell spaces is separate.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from nas_lightning.utils.registry import Registry

DartsOpBuilder = Callable[[int, int, bool], nn.Module]
DARTS_OPS: Registry[DartsOpBuilder] = Registry("DARTS op")

#: The DARTS ``PRIMITIVES``, in the authors' order.
DARTS_PRIMITIVES: tuple[str, ...] = (
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)


class StridedZero(nn.Module):
    """The ``none`` op: zeros with the output shape of a strided op."""

    is_zero = True

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


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


@DARTS_OPS.register("none")
def _none(C: int, stride: int, affine: bool) -> nn.Module:
    return StridedZero(stride)


@DARTS_OPS.register("max_pool_3x3")
def _max_pool(C: int, stride: int, affine: bool) -> nn.Module:
    return nn.MaxPool2d(3, stride=stride, padding=1)


@DARTS_OPS.register("avg_pool_3x3")
def _avg_pool(C: int, stride: int, affine: bool) -> nn.Module:
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


@DARTS_OPS.register("skip_connect")
def _skip(C: int, stride: int, affine: bool) -> nn.Module:
    return nn.Identity() if stride == 1 else FactorizedReduce(C, C, affine)


@DARTS_OPS.register("sep_conv_3x3")
def _sep3(C: int, stride: int, affine: bool) -> nn.Module:
    return SepConv(C, C, 3, stride, 1, affine)


@DARTS_OPS.register("sep_conv_5x5")
def _sep5(C: int, stride: int, affine: bool) -> nn.Module:
    return SepConv(C, C, 5, stride, 2, affine)


@DARTS_OPS.register("dil_conv_3x3")
def _dil3(C: int, stride: int, affine: bool) -> nn.Module:
    return DilConv(C, C, 3, stride, 2, 2, affine)


@DARTS_OPS.register("dil_conv_5x5")
def _dil5(C: int, stride: int, affine: bool) -> nn.Module:
    return DilConv(C, C, 5, stride, 4, 2, affine)


__all__ = ["DARTS_OPS", "DARTS_PRIMITIVES", "DilConv", "FactorizedReduce", "SepConv", "StridedZero"]
