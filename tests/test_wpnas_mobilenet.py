"""WPNAS's MobileNet space (arXiv:2203.02086, section 4.3): 17 blocks x 4 decisions, the grammar, the supernet
against stand-alone networks, weight sharing across activation and SE, cost, and the HyperNet's sites."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas_lightning.spaces import ArchFormatError, WPNASMobileNetSpace
from nas_lightning.spaces.base import count_module_cost
from nas_lightning.spaces.wpnas_mobilenet import BlockChoice, BlockShape
from nas_lightning.supernet.hypernet import HyperNet, active_convs, effective_weights, install_hypernet
from nas_lightning.supernet.wpnas_mobilenet import WPNASMobileNetNetwork


def small_space(depths: list[int] | None = None) -> WPNASMobileNetSpace:
    return WPNASMobileNetSpace(width_mult=0.25, num_classes=5, in_channels=1, input_size=8, depths=depths)


def test_seventeen_blocks_of_four_decisions() -> None:
    space = WPNASMobileNetSpace()
    assert len(space.blocks) == 17 and space.num_decisions == 17 * 4
    assert space.num_archs == 24**17  # 2.9e23, section 4.3
    assert [d.name for d in space.decisions[:4]] == ["block0.kernel", "block0.expand", "block0.act", "block0.se"]
    assert [d.choices for d in space.decisions[4:8]] == [("3", "5"), ("1", "3", "6"), ("ReLU", "HardSwish"),
                                                         ("off", "on")]
    # MobileNetV2's stages: widths, strides and the 224 -> 7 resolution
    assert [(b.c_in, b.c_out, b.stride) for b in space.blocks[:4]] == [(32, 16, 1), (16, 24, 2), (24, 24, 1),
                                                                       (24, 32, 2)]
    assert space.blocks[-1].c_out == 320 and space.blocks[-1].input_size == 7
    assert space.decision_index(3, "se") == 15


def test_round_trip_and_bad_strings() -> None:
    space = WPNASMobileNetSpace()
    gen = torch.Generator().manual_seed(0)
    for arch in space.sample_many(20, gen):
        assert space.decode(space.encode(arch)) == arch
    arch = space.arch([1, 2, 1, 1] + [0] * 64)
    assert arch.text.startswith("MBConv_6_5_HardSwish_SE|MBConv_1_3_ReLU-MBConv_1_3_ReLU|")
    assert space.block_choices(arch)[0] == BlockChoice(5, 6, "HardSwish", True)
    good = arch.text
    for bad in (good.replace("|", "-", 1),  # blocks per stage
                good.replace("MBConv_6_5_HardSwish_SE", "MBConv_6_5_Swish_SE"),  # unknown act
                good.replace("MBConv_6_5_HardSwish_SE", "MBConv_2_5_HardSwish"),  # unknown expansion
                good.replace("MBConv_6_5_HardSwish_SE", "MBConv_6_7_ReLU"),  # unknown kernel
                good.replace("MBConv_6_5_HardSwish_SE", "Conv_6_5_ReLU"), "not an arch"):
        with pytest.raises(ArchFormatError):
            space.decode(bad)
    with pytest.raises(ValueError, match="depths"):
        WPNASMobileNetSpace(depths=[1, 2, 3])


def test_supernet_equals_the_stand_alone_network() -> None:
    space = small_space()
    torch.manual_seed(0)
    supernet = space.build_supernet()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in supernet.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    x = torch.randn(4, *space.input_shape, generator=gen)
    for arch in space.sample_many(4, gen):
        net = supernet.export(arch)
        for mode in (True, False):
            supernet.train(mode)
            net.train(mode)
            torch.testing.assert_close(net(x), supernet(x, arch), rtol=0, atol=1e-6)


def test_activation_and_se_share_the_conv_weights() -> None:
    """Archs that differ only in activation and SE run the same conv weights, and compute different functions."""
    space = small_space()
    supernet = space.build_supernet()
    base = [0, 2, 0, 0] * 17  # kernel 3, expansion 6, ReLU, no SE
    other = list(base)
    other[2], other[3] = 1, 1  # block 0: HardSwish with SE
    a, b = space.arch(base), space.arch(other)
    na, nb = supernet.export(a), supernet.export(b)
    key = "body.0.candidates.MBConv_6_3.conv_dw.weight"
    assert torch.equal(na.state_dict()[key], nb.state_dict()[key])
    assert not any(".se." in k for k in na.state_dict()) and "body.0.candidates.MBConv_6_3.se.conv_reduce.weight" in (
        nb.state_dict())
    x = torch.randn(4, *space.input_shape, generator=torch.Generator().manual_seed(2))
    act_only, se_only = list(base), list(base)
    act_only[2], se_only[3] = 1, 1
    outputs = [supernet(x, space.arch(c)) for c in (base, act_only, se_only, other)]
    for i in range(4):
        for j in range(i):
            assert not torch.allclose(outputs[i], outputs[j]), (i, j)


def test_block_params_by_hand_and_cost_equals_the_network_count() -> None:
    space = small_space()
    # one block 8 -> 8, stride 1, e = 3, k = 5, SE: 1x1 8->24 (192) + BN (48) + dw 24x5x5 (600) + BN (48)
    # + SE 24->6->24 with biases (150 + 168) + 1x1 24->8 (192) + BN (16) = 1414
    block = WPNASMobileNetNetwork.build_block_for_cost(BlockShape(8, 8, 1, 4), BlockChoice(5, 3, "ReLU", True))
    assert sum(p.numel() for p in block.parameters()) == 1414
    block = WPNASMobileNetNetwork.build_block_for_cost(BlockShape(8, 8, 1, 4), BlockChoice(3, 1, "ReLU", False))
    assert sum(p.numel() for p in block.parameters()) == 8 * 9 + 16 + 8 * 8 + 16  # e = 1: dw, BN, 1x1, BN
    gen = torch.Generator().manual_seed(3)
    for arch in space.sample_many(6, gen):
        assert space.count_cost(arch) == count_module_cost(space.build_network(arch), space.input_shape)
    # the activation changes neither count
    relu, hswish = space.arch([0, 1, 0, 1] * 17), space.arch([0, 1, 1, 1] * 17)
    assert space.cost(relu) == space.cost(hswish)


def test_hypernet_offsets_each_depthwise_conv_by_its_kernel_decision() -> None:
    space = small_space(depths=[1, 1, 1, 0, 0, 0, 1])
    supernet = space.build_supernet()
    hypernet = HyperNet(space, supernet, hidden=4, frozen=True)
    assert len(hypernet.sites) == 4 * 6
    install_hypernet(supernet, hypernet)
    # same block 1 (kernel 5, expansion 3, ReLU, SE off), different elsewhere
    a = space.arch([0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    b = space.arch([1, 2, 1, 1, 1, 1, 0, 0, 1, 0, 1, 1, 1, 2, 1, 0])
    for arch in (a, b):  # one depthwise conv per block: the one of the weight set kernel and expansion pick
        paths = {m: n for n, m in supernet.named_modules()}
        assert sorted(paths[conv] for conv, _ in active_convs(supernet, arch)) == [
            f"body.{i}.candidates.{c.op}.conv_dw" for i, c in enumerate(space.block_choices(arch))]
    path = "body.1.candidates.MBConv_3_5.conv_dw"
    wa, wb = effective_weights(supernet, a, [path])[0], effective_weights(supernet, b, [path])[0]
    base = supernet.get_submodule(path).weight
    torch.testing.assert_close(wa, base * hypernet.offsets(a)[space.decision_index(1, "kernel")])
    assert not torch.allclose(wa, wb)
    # a 3x3 depthwise conv takes the top-left 3x3 of its block's kernel-decision offset
    path3 = "body.0.candidates.MBConv_1_3.conv_dw"
    w3 = effective_weights(supernet, a, [path3])[0]
    torch.testing.assert_close(w3, supernet.get_submodule(path3).weight * hypernet.offsets(a)[0, :3, :3])
    x = torch.randn(4, *space.input_shape, generator=torch.Generator().manual_seed(4))
    for arch in (a, b):
        net = supernet.export(arch)
        with torch.no_grad():
            torch.testing.assert_close(net(x), supernet(x, arch), rtol=0, atol=1e-6)
