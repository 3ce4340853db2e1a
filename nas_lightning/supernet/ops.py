"""Candidate operations of every space, registered under the short names that arch strings use.

One registry, one builder signature: ``OPS.get(name)(c_in, c_out, stride, affine)``, where ``affine`` says
whether BN layers carry affine parameters (SPOS supernets use none). Cell ops (NAS-Bench-201, DARTS,
chain) keep the channels (``c_in == c_out``); DARTS strides the input edges of a reduction cell.

* NAS-Bench-201 (NATS-Bench's ``cell_operations.py``): ``nor_conv_kxk`` is ReLU-Conv-BN, ``avg_pool_3x3``
  does not count padding, ``none`` outputs zeros.
* DARTS (arXiv:1806.09055, section 3.1 / appendix A.1; the authors' ``cnn/operations.py``): ``sep_conv_kxk``,
  ``dil_conv_kxk``; ``skip_connect`` is the identity or, with stride 2, ``FactorizedReduce``; ``none`` gives
  zeros of the strided shape. As in the DARTS evaluation network, no BN follows the pooling ops (the DARTS
  *search* network appends an affine-free BN to them to balance the weighted mixture; single-path sampling
  mixes nothing, and the stand-alone network must compute the same function as its path).
* MobileNet (ProxylessNAS arXiv:1812.00332, PC-NAS arXiv:1910.02543, Table 4):

  - ``MBConv_{e}_{k}``: the mobile inverted bottleneck of MobileNetV2 (arXiv:1801.04381), timm's
    ``InvertedResidual`` (1x1 expand to ``e * c_in`` - kxk depthwise - 1x1 linear projection, BN after each
    conv, ReLU6 after the first two). ``e = 1`` has no expansion conv (timm's ``DepthwiseSeparableConv``),
    as in ProxylessNAS's ``MBInvertedConvLayer``.
  - ``NConv_{e}_{k}``, ``DConv_{e}_{k}``, ``RConv_{e}_{k}`` (PC-NAS large space, A.1): Conv1x1-ConvKxK-Conv1x1,
    Conv1x1-ConvKxK-ConvKxK-Conv1x1 and Conv1x1-Conv1xK-ConvKx1-Conv1x1 (``Bottleneck``), with expand ratio
    ``e`` = middle channels / input channels. The paper does not say whether the middle convs are grouped;
    they are dense here (``groups=1``): with depthwise middle convs NConv would be MBConv again, the small
    expand ratios the paper gives them (1, 2, 4 against MBConv's 3, 6) are those of dense bottlenecks, and
    PC-NAS-L's 15.3M parameters (Table 1) are out of reach of depthwise ops (every layer MBConv_6_7 gives
    5.1M at width 1.0; every layer DConv_2_3 gives 18.4M here). The same BN / ReLU6 / linear-projection
    pattern as MBConv.
  - ``Identity`` where input and output shapes match.

  Every MobileNet op adds its input back (residual) when stride is 1 and channels are equal, as MobileNetV2
  and ProxylessNAS do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from torch import nn

from nas_lightning.supernet.layers import Bottleneck, DilConv, FactorizedReduce, ReLUConvBN, SepConv, Zero
from nas_lightning.utils.registry import Registry

#: ``(c_in, c_out, stride, affine) -> module``
OpBuilder = Callable[[int, int, int, bool], nn.Module]
OPS: Registry[str, OpBuilder] = Registry("op")


def _same_channels(op: str, c_in: int, c_out: int) -> None:
    if c_in != c_out:
        raise ValueError(f"{op} keeps the channels, got c_in={c_in}, c_out={c_out}")


# --- shared by the cell spaces ----------------------------------------------------------------------------
@OPS.register("none")
def _none(c_in: int, c_out: int, stride: int, affine: bool) -> nn.Module:
    _same_channels("none", c_in, c_out)
    return Zero(stride)


@OPS.register("skip_connect")
def _skip(c_in: int, c_out: int, stride: int, affine: bool) -> nn.Module:
    if stride == 1:
        _same_channels("skip_connect", c_in, c_out)
        return nn.Identity()
    return FactorizedReduce(c_in, c_out, affine)


@OPS.register("avg_pool_3x3")
def _avg_pool(c_in: int, c_out: int, stride: int, affine: bool) -> nn.Module:
    _same_channels("avg_pool_3x3", c_in, c_out)
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


@OPS.register("max_pool_3x3")
def _max_pool(c_in: int, c_out: int, stride: int, affine: bool) -> nn.Module:
    _same_channels("max_pool_3x3", c_in, c_out)
    return nn.MaxPool2d(3, stride=stride, padding=1)


# --- NAS-Bench-201 ------------------------------------------------------------------------------------------
def _nor_conv(kernel: int) -> OpBuilder:
    def build(c_in: int, c_out: int, stride: int, affine: bool) -> nn.Module:
        return ReLUConvBN(c_in, c_out, kernel, stride=stride, affine=affine)

    return build


for _k in (1, 3, 5):
    OPS.register(f"nor_conv_{_k}x{_k}")(_nor_conv(_k))


# --- DARTS ----------------------------------------------------------------------------------------------------
def _sep_conv(kernel: int) -> OpBuilder:
    def build(c_in: int, c_out: int, stride: int, affine: bool) -> nn.Module:
        return SepConv(c_in, c_out, kernel, stride, kernel // 2, affine)

    return build


def _dil_conv(kernel: int) -> OpBuilder:
    def build(c_in: int, c_out: int, stride: int, affine: bool) -> nn.Module:
        return DilConv(c_in, c_out, kernel, stride, 2 * (kernel // 2), 2, affine)

    return build


for _k in (3, 5):
    OPS.register(f"sep_conv_{_k}x{_k}")(_sep_conv(_k))
    OPS.register(f"dil_conv_{_k}x{_k}")(_dil_conv(_k))


# --- MobileNet ------------------------------------------------------------------------------------------------
def _norm(affine: bool) -> Callable[..., nn.Module]:
    # timm turns a BatchNorm2d partial into BatchNormAct2d and keeps the bound ``affine``
    return partial(nn.BatchNorm2d, affine=affine)


def _mbconv(expand: int, kernel: int) -> OpBuilder:
    def build(c_in: int, c_out: int, stride: int, affine: bool) -> nn.Module:
        if expand == 1:
            return DepthwiseSeparableConv(c_in, c_out, kernel, stride, act_layer=nn.ReLU6, norm_layer=_norm(affine))
        return InvertedResidual(c_in, c_out, kernel, stride, exp_ratio=expand, act_layer=nn.ReLU6,
                                norm_layer=_norm(affine))

    return build


def _bottleneck(expand: int, spatial: Sequence[tuple[int, int]]) -> OpBuilder:
    def build(c_in: int, c_out: int, stride: int, affine: bool) -> nn.Module:
        return Bottleneck(c_in, c_out, stride, expand, spatial, affine)

    return build


@OPS.register("Identity")
def _identity(c_in: int, c_out: int, stride: int, affine: bool) -> nn.Module:
    if c_in != c_out or stride != 1:
        raise ValueError(f"Identity needs equal shapes, got c_in={c_in}, c_out={c_out}, stride={stride}")
    return nn.Identity()


for _k in (3, 5, 7):
    for _e in (1, 3, 6):
        OPS.register(f"MBConv_{_e}_{_k}")(_mbconv(_e, _k))
# PC-NAS large space, Table 4 (right column): OP_X_Y is OP with expand ratio X and K = Y.
for _e, _k in ((1, 3), (2, 3)):
    OPS.register(f"NConv_{_e}_{_k}")(_bottleneck(_e, [(_k, _k)]))
    OPS.register(f"DConv_{_e}_{_k}")(_bottleneck(_e, [(_k, _k), (_k, _k)]))
for _k in (5, 7):
    for _e in (1, 2, 4):
        OPS.register(f"RConv_{_e}_{_k}")(_bottleneck(_e, [(1, _k), (_k, 1)]))
