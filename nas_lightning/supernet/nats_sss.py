"""The NATS-Bench size-space network (arXiv:2009.00437; the authors' ``DynamicShapeTinyNet`` with the fixed
cell), as a supernet that slices the widest weights or as a stand-alone network of one width arch.

Layout: ``stem`` (3x3 conv + BN to c0), ``body`` (cell, basic block, cell, basic block, cell, one per width
decision) and ``head`` (BN-ReLU, pooling, linear). The supernet holds every layer at the widest width; a forward
pass with widths (c0, ..., c4) runs every conv on its leading slice ``W[:c_out, :c_in]`` and every BN on its
leading ``c`` channels, parameters and running statistics alike: one set of BN statistics shared by all widths,
sliced (docs/design_choices.md, "Search spaces"). The stand-alone network of an arch is this class built at the
arch's widths, so ``Supernet.export`` copies the leading slices by name and the two compute the same function.
The weight-sharing counterpart in the authors' code (``GenericNAS301Model``) masks channels instead of slicing;
the SPEC of this project asks for slicing, which computes the same subnetwork without the masked channels' cost.

A cell's ``skip_connect`` from node 0 is the identity when its input and output widths agree, otherwise a 1x1 conv
+ BN; the supernet holds that conv wherever the widths may differ (cells 2 and 4) and runs it only when they do.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import NETWORKS, SearchSpace
from nas_lightning.spaces.nats_sss import SSS_LAYERS, NATSSizeSpace
from nas_lightning.spaces.nb201 import NB201_EDGES
from nas_lightning.supernet.base import Supernet
from nas_lightning.supernet.hypernet import HYPERNET_SITES, ConvSite, spatial_convs


class SlicedConv2d(nn.Conv2d):
    """A conv that runs the leading slice ``W[:c_out, :c_in]`` of its weight (c_in: the input's channels)."""

    @override
    def forward(self, x: torch.Tensor, c_out: int | None = None) -> torch.Tensor:  # type: ignore[override]
        weight = self.weight[:c_out, : x.shape[1]]
        bias = None if self.bias is None else self.bias[: weight.shape[0]]
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class SlicedLinear(nn.Linear):
    """A linear layer that reads only the input's channels: ``W[:, :c_in]``."""

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight[:, : x.shape[1]], self.bias)


class SlicedBatchNorm2d(nn.BatchNorm2d):
    """BN over the input's ``c`` channels with the leading ``c`` entries of the affine parameters and running
    statistics (updated in place); the same arithmetic as ``nn.BatchNorm2d`` (momentum None: cumulative average,
    ``track_running_stats=False``: batch statistics only), so the evaluator's recalibration works unchanged."""

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_buffers = not self.training or self.track_running_stats
        mean = self.running_mean[:c] if use_buffers and self.running_mean is not None else None
        var = self.running_var[:c] if use_buffers and self.running_var is not None else None
        weight = None if self.weight is None else self.weight[:c]
        bias = None if self.bias is None else self.bias[:c]
        return F.batch_norm(x, mean, var, weight, bias, bn_training, factor, self.eps)


class ReLUConvBN(nn.Module):
    """``nor_conv_kxk`` (ReLU - conv - BN) on sliced weights."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, affine: bool) -> None:
        super().__init__()
        self.conv = SlicedConv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn = SlicedBatchNorm2d(c_out, affine=affine)

    @override
    def forward(self, x: torch.Tensor, c_out: int) -> torch.Tensor:
        return self.bn(self.conv(F.relu(x), c_out))


class ConvBN(nn.Module):
    """The ``skip_connect`` between unequal widths: 1x1 conv + BN (xautodl's ``FactorizedReduce``, stride 1)."""

    def __init__(self, c_in: int, c_out: int, affine: bool) -> None:
        super().__init__()
        self.conv = SlicedConv2d(c_in, c_out, 1, bias=False)
        self.bn = SlicedBatchNorm2d(c_out, affine=affine)

    @override
    def forward(self, x: torch.Tensor, c_out: int) -> torch.Tensor:
        return self.bn(self.conv(x, c_out))


class SizeCellEdge(nn.Module):
    """One edge of the fixed cell. ``adapter`` maps node 0's width to the cell's where they may differ (skip and
    pooling edges); ``op`` is the conv of a ``nor_conv`` edge."""

    def __init__(self, op: str, c_in: int, c_out: int, may_differ: bool, affine: bool) -> None:
        super().__init__()
        self.kind = op
        self.op: nn.Module | None = None
        self.adapter: nn.Module | None = None
        if op.startswith("nor_conv_"):
            self.op = ReLUConvBN(c_in, c_out, int(op.rsplit("x", 1)[1]), 1, affine)
        elif op in ("skip_connect", "avg_pool_3x3") and may_differ:
            # xautodl: FactorizedReduce for a skip, a 1x1 ReLU-conv-BN before a pooling
            self.adapter = (ConvBN(c_in, c_out, affine) if op == "skip_connect"
                            else ReLUConvBN(c_in, c_out, 1, 1, affine))

    @override
    def forward(self, x: torch.Tensor, c_out: int) -> torch.Tensor:
        if self.op is not None:
            return self.op(x, c_out)
        if x.shape[1] != c_out:
            if self.adapter is None:
                raise RuntimeError(f"this {self.kind} edge was built for equal widths, got {x.shape[1]} -> {c_out}")
            x = self.adapter(x, c_out)
        if self.kind == "avg_pool_3x3":
            return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        return x


class SizeCell(nn.Module):
    """The fixed NAS-Bench-201 cell between widths ``c_in`` (node 0) and ``c_out`` (xautodl's ``InferCell``)."""

    def __init__(self, ops: Sequence[str], c_in: int, c_out: int, may_differ: bool, affine: bool) -> None:
        super().__init__()
        self.ops = tuple(ops)
        self.edges = nn.ModuleList(
            nn.Identity() if op == "none" else SizeCellEdge(op, c_in if src == 0 else c_out, c_out,
                                                              may_differ and src == 0, affine)
            for op, (_, src) in zip(ops, NB201_EDGES)
        )

    @override
    def forward(self, x: torch.Tensor, c_out: int) -> torch.Tensor:
        nodes = [x]
        for node in (1, 2, 3):
            total: torch.Tensor | None = None
            for op, edge, (to, src) in zip(self.ops, self.edges, NB201_EDGES):
                if to != node or op == "none":
                    continue  # a 'none' edge adds zeros
                out = edge(nodes[src], c_out)
                total = out if total is None else total + out
            nodes.append(x.new_zeros(x.shape[0], c_out, *x.shape[2:]) if total is None else total)
        return nodes[-1]


class SizeReduction(nn.Module):
    """The stride-2 ResNet basic block between stages (xautodl's ``ResNetBasicblock``) on sliced weights."""

    def __init__(self, c_in: int, c_out: int, affine: bool) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, 2, affine)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, affine)
        self.downsample = SlicedConv2d(c_in, c_out, 1, bias=False)  # after a 2x2 average pooling

    @override
    def forward(self, x: torch.Tensor, c_out: int) -> torch.Tensor:
        return self.downsample(F.avg_pool2d(x, 2, 2), c_out) + self.conv_b(self.conv_a(x, c_out), c_out)


class SizeStem(nn.Module):
    def __init__(self, in_channels: int, c_out: int) -> None:
        super().__init__()
        self.conv = SlicedConv2d(in_channels, c_out, 3, padding=1, bias=False)
        self.bn = SlicedBatchNorm2d(c_out)

    @override
    def forward(self, x: torch.Tensor, c_out: int) -> torch.Tensor:
        return self.bn(self.conv(x, c_out))


class _WidthBound(nn.Module):
    """A part called with its input alone, its output width bound (for counting it on its own)."""

    def __init__(self, part: nn.Module, c_out: int) -> None:
        super().__init__()
        self.part, self.c_out = part, c_out

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.part(x, self.c_out)


@NETWORKS.register(NATSSizeSpace)
class NATSSizeNetwork(Supernet):
    """Args:
        bn_affine: whether the body's BNs learn affine parameters (the stem and final BNs always do).
    """

    space: NATSSizeSpace

    def __init__(self, space: NATSSizeSpace, fixed_arch: Arch | None = None, bn_affine: bool = True) -> None:
        super().__init__(space, fixed_arch)
        widths = space.max_widths if fixed_arch is None else space.widths(fixed_arch)
        self.stem = SizeStem(space.in_channels, widths[0])
        body: list[nn.Module] = []
        c_prev = widths[0]
        for layer, (kind, c) in enumerate(zip(SSS_LAYERS, widths)):
            if kind == "reduction":
                body.append(SizeReduction(c_prev, c, bn_affine))
            else:  # the first cell reads the stem, always of its own width
                may_differ = layer > 0 and (len(space.channels) > 1 if fixed_arch is None else c_prev != c)
                body.append(SizeCell(space.cell_ops, c_prev, c, may_differ, bn_affine))
            c_prev = c
        self.body = nn.ModuleList(body)
        self.head = self.build_head(c_prev, space.num_classes)

    @staticmethod
    def build_part(space: NATSSizeSpace, part: str | int, c_in: int, c_out: int) -> nn.Module:
        """One part of a stand-alone network on its own, called with its input alone (``NATSSizeSpace.count_cost``):
        ``"stem"``, layer 0..4 (from width ``c_in`` to ``c_out``) or ``"head"`` (``c_in`` features)."""
        if part == "stem":
            return _WidthBound(SizeStem(c_in, c_out), c_out)
        if part == "head":
            return NATSSizeNetwork.build_head(c_in, space.num_classes)
        if SSS_LAYERS[int(part)] == "reduction":
            return _WidthBound(SizeReduction(c_in, c_out, True), c_out)
        return _WidthBound(SizeCell(space.cell_ops, c_in, c_out, c_in != c_out, True), c_out)

    @staticmethod
    def build_head(c_in: int, num_classes: int) -> nn.Sequential:
        """BN-ReLU, global average pooling, the linear classifier."""
        return nn.Sequential(OrderedDict(
            bn=SlicedBatchNorm2d(c_in), act=nn.ReLU(inplace=True), pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(1), classifier=SlicedLinear(c_in, num_classes),
        ))

    @override
    def forward_path(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        widths = self.space.widths(arch)
        x = self.stem(x, widths[0])
        for block, c in zip(self.body, widths):
            x = block(x, c)
        return self.head(x)


@HYPERNET_SITES.register(NATSSizeSpace)
def _size_sites(space: SearchSpace, supernet: nn.Module) -> list[ConvSite]:
    """WPNAS HyperNet sites: the spatial convs whose output width layer l sets (the stem's for layer 0 too), with
    layer l's offset, whatever width it picks (docs/design_choices.md, "WPNAS")."""
    paths = [spatial_convs(supernet.stem, "stem") + spatial_convs(supernet.body[0], "body.0")]
    paths += [spatial_convs(supernet.body[i], f"body.{i}") for i in range(1, len(supernet.body))]
    return [ConvSite(p, layer, None) for layer, layer_paths in enumerate(paths) for p in layer_paths]
