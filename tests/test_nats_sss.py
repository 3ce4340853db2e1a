"""NATS-Bench size space (arXiv:2009.00437): grammar and benchmark indices, the sliced supernet against
stand-alone networks, and params / FLOPs against hand counts of the authors' ``DynamicShapeTinyNet``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas_lightning.evaluation.inherited import recalibrate_bn
from nas_lightning.spaces import ArchFormatError, NATSSizeSpace
from nas_lightning.spaces.base import count_module_cost
from nas_lightning.supernet.hypernet import HyperNet, install_hypernet
from nas_lightning.supernet.nats_sss import SlicedBatchNorm2d


def small_space() -> NATSSizeSpace:
    return NATSSizeSpace(channels=(2, 4, 6), num_classes=5, in_channels=1, input_size=8)


def hand_params(c: list[int], classes: int = 10, c_img: int = 3) -> int:
    """Parameters of ``DynamicShapeTinyNet(c, best cell)``: ReLU-conv-BN = conv + 2 BN affine per channel."""
    def rcb(i: int, o: int, k: int) -> int:
        return i * o * k * k + 2 * o

    def cell(i: int, o: int) -> int:  # two 3x3 edges from node 0, three inside; skip = 1x1 conv + BN if i != o
        return 2 * rcb(i, o, 3) + 3 * rcb(o, o, 3) + (0 if i == o else i * o + 2 * o)

    def reduction(i: int, o: int) -> int:  # conv_a, conv_b, 1x1 downsample after pooling
        return rcb(i, o, 3) + rcb(o, o, 3) + i * o

    c0, c1, c2, c3, c4 = c
    stem = c_img * c0 * 9 + 2 * c0
    head = 2 * c4 + c4 * classes + classes
    return stem + cell(c0, c0) + reduction(c0, c1) + cell(c1, c2) + reduction(c2, c3) + cell(c3, c4) + head


def hand_flops(c: list[int], classes: int = 10, c_img: int = 3, side: int = 32) -> int:
    """2 x multiply-adds of the convs and the classifier (what ``torch.utils.flop_counter`` counts)."""
    def cell(i: int, o: int, s: int) -> int:
        return 2 * s * s * (2 * 9 * i * o + 3 * 9 * o * o + (0 if i == o else i * o))

    def reduction(i: int, o: int, s: int) -> int:
        h = s // 2
        return 2 * h * h * (9 * i * o + 9 * o * o + i * o)

    c0, c1, c2, c3, c4 = c
    s = side
    return (2 * c_img * c0 * 9 * s * s + cell(c0, c0, s) + reduction(c0, c1, s) + cell(c1, c2, s // 2)
            + reduction(c2, c3, s // 2) + cell(c3, c4, s // 4) + 2 * c4 * classes)


def test_grammar_and_benchmark_indices() -> None:
    space = NATSSizeSpace()
    assert space.num_archs == 32768 and space.num_decisions == 5
    # the benchmark's traverse_net: the last layer fastest
    assert [space.arch_at(i).text for i in (0, 1, 8, 32767)] == [
        "8:8:8:8:8", "8:8:8:8:16", "8:8:8:16:8", "64:64:64:64:64"]
    assert space.arch_at(7 * 8**4 + 0 * 8**3 + 3 * 8**2 + 5 * 8 + 1).text == "64:8:32:48:16"
    gen = torch.Generator().manual_seed(0)
    for arch in space.sample_many(20, gen):
        assert space.decode(space.encode(arch)) == arch
        assert space.widths(arch) == [int(w) for w in arch.text.split(":")]
    assert space.decode("08:16:32:48:64").text == "8:16:32:48:64"
    for bad in ("8:16:32:48", "8:16:32:48:65", "a:b:c:d:e", "8-16-32-48-64"):
        with pytest.raises(ArchFormatError):
            space.decode(bad)
    with pytest.raises(ValueError, match="distinct positive"):
        NATSSizeSpace(channels=(8, 8))
    with pytest.raises(ValueError, match="ops"):
        NATSSizeSpace(cell="|sep_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|none~0|none~1|none~2|")


@pytest.mark.parametrize(("text", "params"), [
    ("8:8:8:8:8", 11_714), ("8:8:16:40:40", 107_826), ("64:64:64:64:64", 713_674), ("8:16:32:48:64", None),
    ("64:8:32:48:16", None),
])
def test_params_and_flops_match_hand_counts(text: str, params: int | None) -> None:
    """11,714 / 107,826 / 713,674: hand counts of the benchmark's structure at 10 classes (equal to the values a
    third-party reproduction reports reading from the benchmark file; docs/design_choices.md, "Search spaces")."""
    space = NATSSizeSpace()
    arch = space.decode(text)
    widths = space.widths(arch)
    assert space.params(arch) == hand_params(widths)
    if params is not None:
        assert hand_params(widths) == params
    assert space.flops(arch) == hand_flops(widths)
    assert space.cost(arch) == count_module_cost(space.build_network(arch), space.input_shape)  # the sum of parts


def test_supernet_slices_the_widest_weights_and_equals_the_stand_alone_network() -> None:
    space = small_space()
    torch.manual_seed(0)
    supernet = space.build_supernet()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial BN statistics and affine parameters, so slicing them matters
        for m in supernet.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    x = torch.randn(6, *space.input_shape, generator=gen)
    archs = [space.decode(t) for t in ("6:6:6:6:6", "2:2:2:2:2", "2:6:4:4:6", "6:2:6:2:4")]
    for arch in archs + space.sample_many(4, gen):
        net = supernet.export(arch)
        for mode in (True, False):  # train mode updates the sliced running statistics; eval mode reads them
            supernet.train(mode)
            net.train(mode)
            torch.testing.assert_close(net(x), supernet(x, arch), rtol=0, atol=1e-6)
    # only the leading slice of each weight takes part
    supernet.train()
    supernet.zero_grad(set_to_none=True)
    arch = space.decode("2:6:4:4:6")
    supernet(x, arch).logsumexp(1).sum().backward()
    grad = supernet.get_submodule("body.2.edges.0.op.conv").weight.grad  # node 1 <- 0 of cell 2: 6 -> 4 channels
    assert grad.shape == (6, 6, 3, 3)
    assert grad[:4, :6].abs().sum() > 0 and grad[4:].abs().sum() == 0
    grad = supernet.get_submodule("body.0.edges.0.op.conv").weight.grad  # cell 0: 2 -> 2
    assert grad[:2, :2].abs().sum() > 0 and grad[2:].abs().sum() == 0 and grad[:, 2:].abs().sum() == 0


def test_skip_is_the_identity_at_equal_widths_and_a_1x1_conv_otherwise() -> None:
    space = small_space()
    equal, unequal = space.decode("4:4:4:4:4"), space.decode("4:4:6:6:2")
    keys_equal = set(space.build_network(equal).state_dict())
    keys_unequal = set(space.build_network(unequal).state_dict())
    assert not any(k.startswith(("body.2.edges.3.", "body.4.edges.3.")) for k in keys_equal)
    assert {"body.2.edges.3.adapter.conv.weight", "body.4.edges.3.adapter.conv.weight"} <= keys_unequal
    assert not any(k.startswith("body.0.edges.3.") for k in space.build_supernet().state_dict())  # c0 -> c0 always


def test_sliced_batchnorm_recalibrates_like_a_plain_one_on_its_channels() -> None:
    """Cumulative averages (momentum None) over the leading channels, as the evaluator's recalibration uses."""
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randn(5, 3, 4, 4, generator=gen) * 2 + 1 for _ in range(3)]
    sliced, plain = SlicedBatchNorm2d(6), nn.BatchNorm2d(3)
    for bn in (sliced, plain):
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
        for b in batches:
            bn(b)
    torch.testing.assert_close(sliced.running_mean[:3], plain.running_mean)
    torch.testing.assert_close(sliced.running_var[:3], plain.running_var)
    assert torch.equal(sliced.running_mean[3:], torch.zeros(3)) and int(sliced.num_batches_tracked) == 3
    # and through the evaluator's helper, on a whole network: equal to recalibrating the exported network
    space = small_space()
    supernet = space.build_supernet()
    arch = space.decode("4:2:6:4:2")
    calib = [(torch.randn(8, *space.input_shape, generator=gen), torch.zeros(8, dtype=torch.long))
             for _ in range(2)]
    net = supernet.export(arch)
    recalibrate_bn(supernet, lambda x: supernet(x, arch), calib)
    recalibrate_bn(net, net, calib)
    x = torch.randn(4, *space.input_shape, generator=gen)
    torch.testing.assert_close(net(x), supernet(x, arch), rtol=0, atol=1e-5)


def test_hypernet_offsets_the_convs_of_each_width_layer() -> None:
    space = small_space()
    supernet = space.build_supernet()
    hypernet = HyperNet(space, supernet, hidden=4, frozen=True)
    layers = {site.path: site.decision for site in hypernet.sites}
    assert layers["stem.conv"] == 0 and layers["body.0.edges.0.op.conv"] == 0
    assert layers["body.1.conv_a.conv"] == 1 and layers["body.4.edges.5.op.conv"] == 4
    assert "body.1.downsample" not in layers and not any("adapter" in p for p in layers)  # 1x1 convs
    install_hypernet(supernet, hypernet)
    x = torch.randn(4, *space.input_shape, generator=torch.Generator().manual_seed(3))
    for arch in space.sample_many(3, torch.Generator().manual_seed(4)):
        net = supernet.export(arch)
        with torch.no_grad():
            torch.testing.assert_close(net(x), supernet(x, arch), rtol=0, atol=1e-6)
