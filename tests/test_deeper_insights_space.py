"""The Deeper-Insights space (arXiv:2001.01431): its grammar, its 64 archs in the authors' order, and its macro
network (stem of two 3x3 convs, 4 cells without reductions, a cell of 2 nodes and 3 edges, concatenated output).
The contract every space meets (export equals the supernet, no gradient to unselected ops, exact cost table) is
checked for it in tests/test_space_contract.py."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import nas_lightning.supernet  # noqa: F401 - registers the networks
from nas_lightning.spaces import DEEPER_INSIGHTS_OPS, ArchFormatError, DeeperInsightsSpace
from nas_lightning.supernet.deeper_insights import DeeperInsightsCell, DeeperInsightsNetwork


@pytest.fixture
def space() -> DeeperInsightsSpace:
    return DeeperInsightsSpace(in_channels=1, input_size=28)


def test_the_space_has_the_papers_64_archs_in_the_authors_order(space: DeeperInsightsSpace) -> None:
    assert DEEPER_INSIGHTS_OPS == ("max_pool_3x3", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_5x5")
    assert [d.name for d in space.decisions] == ["1<-0", "2<-0", "2<-1"]
    assert space.num_archs == 64
    archs = list(space.enumerate())
    # the authors' ``select`` lists: edge (1<-0), (2<-0), (2<-1), the last one fastest
    assert [a.indices for a in archs] == list(itertools.product(range(4), repeat=3))
    assert [space.arch_at(i) for i in range(64)] == archs
    assert len({a.text for a in archs}) == 64


def test_arch_strings_round_trip_and_read_as_documented(space: DeeperInsightsSpace) -> None:
    arch = space.arch([1, 0, 3])
    assert arch.text == "|sep_conv_3x3~0|+|max_pool_3x3~0|dil_conv_5x5~1|"
    assert space.to_dict(arch) == {"1<-0": "sep_conv_3x3", "2<-0": "max_pool_3x3", "2<-1": "dil_conv_5x5"}
    for a in space.enumerate():
        assert space.parse(space.format(space.choice_names(a))) == space.choice_names(a)
        assert space.decode(a.text) == a


@pytest.mark.parametrize("text", [
    "|sep_conv_3x3~0|",  # one node group
    "|sep_conv_3x3~0|+|max_pool_3x3~0|+|max_pool_3x3~0|",  # three
    "|sep_conv_3x3~0|+|max_pool_3x3~0|",  # node 2 lists one edge
    "|sep_conv_3x3~1|+|max_pool_3x3~0|dil_conv_5x5~1|",  # wrong input node
    "|sep_conv_3x3~0|+|max_pool_3x3~0|dil_conv_5x5~2|",
    "sep_conv_3x3~0|+|max_pool_3x3~0|dil_conv_5x5~1|",  # missing bar
    "|avg_pool_3x3~0|+|max_pool_3x3~0|dil_conv_5x5~1|",  # not one of the four ops
    "|sep_conv_3x3|+|max_pool_3x3|dil_conv_5x5|",  # no input nodes
])
def test_malformed_arch_strings_are_refused(space: DeeperInsightsSpace, text: str) -> None:
    with pytest.raises(ArchFormatError):
        space.decode(text)


def test_macro_network_follows_the_authors_code(space: DeeperInsightsSpace) -> None:
    net = space.build_network(space.arch([0, 0, 0]))
    assert isinstance(net, DeeperInsightsNetwork)
    convs = [m for m in net.stem if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (1, 48, (3, 3), (1, 1)), (48, 48, (3, 3), (1, 1))]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.stem) == 2
    assert len(net.body) == 4 and all(isinstance(c, DeeperInsightsCell) for c in net.body)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.head)  # pooling and linear only
    # no reduction: every cell keeps the resolution and outputs 2C = 32 channels
    x = net.stem(torch.randn(2, 1, 28, 28))
    for cell in net.body:
        x = cell(x, space.choice_names(space.arch([0, 0, 0])))
        assert x.shape == (2, 32, 28, 28)
    # hand count of the all-max-pool arch: stem 1*48*9 + 48*48*9 + 2 BNs of 48; the 1x1 input convs 48*16 and
    # 3 * 32*16, each with a BN of 16; a linear 32 -> 10; max pooling has no weights
    assert space.params(space.arch([0, 0, 0])) == 432 + 20736 + 2 * 96 + (768 + 32) + 3 * (512 + 32) + 330


def test_a_cell_sums_its_edges_into_nodes_and_concatenates_them(space: DeeperInsightsSpace) -> None:
    torch.manual_seed(0)
    arch = space.arch([1, 2, 3])
    cell = space.build_network(arch).body[1].eval()
    choices = space.choice_names(arch)
    x = torch.randn(2, 32, 6, 6)
    n0 = cell.preprocess(x)
    n1 = cell.edges[0](n0, choices[0])
    n2 = cell.edges[1](n0, choices[1]) + cell.edges[2](n1, choices[2])
    torch.testing.assert_close(cell(x, choices), torch.cat([n1, n2], dim=1), rtol=0, atol=0)


def test_cost_is_additive_over_the_three_edges(space: DeeperInsightsSpace) -> None:
    table = space.cost_table()
    assert table is not None
    for arch in space.enumerate():
        assert table(arch.indices) == space.count_cost(arch)


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="num_cells"):
        DeeperInsightsSpace(num_cells=0)
