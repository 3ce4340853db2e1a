"""NAS-Bench-201 against the official benchmark's numbers."""

from __future__ import annotations

import pytest
import torch

from nas_lightning.spaces import NB201Space

# Official NATS-Bench TSS parameter counts (C=16, N=5, CIFAR-10, 32x32): count / 1e6 as published.
OFFICIAL_PARAMS = {
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|": 802_426,
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|": 1_531_546,
    "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|": 73_306,
}


@pytest.mark.parametrize("arch,params", sorted(OFFICIAL_PARAMS.items()))
def test_official_parameter_counts(arch: str, params: int) -> None:
    space = NB201Space(C=16, N=5, num_classes=10, in_channels=3, input_size=32)
    assert space.params(space.decode(arch)) == params


def test_parameter_count_is_linear_in_conv_edges() -> None:
    """Each nor_conv_3x3 edge adds 9C^2 + 2C per cell over N cells of each of C, 2C, 4C channels,
    and each nor_conv_1x1 C^2 + 2C: the benchmark's whole table follows from the three numbers above."""
    space = NB201Space()
    per3 = sum(5 * (9 * c * c + 2 * c) for c in (16, 32, 64))
    per1 = sum(5 * (c * c + 2 * c) for c in (16, 32, 64))
    gen = torch.Generator().manual_seed(1)
    for arch in space.sample_many(25, gen):
        names = space.choice_names(arch)
        expected = 73_306 + per3 * names.count("nor_conv_3x3") + per1 * names.count("nor_conv_1x1")
        assert space.params(arch) == expected, str(arch)


def test_all_15625_strings_round_trip() -> None:
    space = NB201Space()
    archs = list(space.enumerate())
    assert len(archs) == 15_625
    texts = {str(a) for a in archs}
    assert len(texts) == 15_625
    for arch in archs:
        assert space.decode(str(arch)) == arch


def test_official_string_format() -> None:
    space = NB201Space()
    text = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
    arch = space.decode(text)
    assert str(arch) == text
    assert space.to_dict(arch) == {
        "1<-0": "nor_conv_3x3", "2<-0": "nor_conv_3x3", "2<-1": "avg_pool_3x3",
        "3<-0": "skip_connect", "3<-1": "nor_conv_3x3", "3<-2": "skip_connect",
    }
    with pytest.raises(ValueError, match="~1"):
        space.decode(text.replace("avg_pool_3x3~1", "avg_pool_3x3~0"))


def test_flops_match_the_benchmark() -> None:
    """NATS-Bench lists 113.95 MFLOPs (multiply-adds) for this arch; flop_counter counts 2 per MAC."""
    space = NB201Space()
    arch = space.decode(next(iter(OFFICIAL_PARAMS)))
    assert space.flops(arch) / 2 / 1e6 == pytest.approx(113.95, abs=0.01)


def test_none_edges_cost_nothing_and_output_zero_node() -> None:
    space = NB201Space(C=4, N=1, in_channels=1, input_size=8)
    supernet = space.build_supernet().eval()
    arch = space.decode("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    x = torch.randn(2, 1, 8, 8)
    # Every cell outputs zeros, so nothing of the input reaches the classifier: the logits are the
    # same for any input (in eval mode, where BN maps zeros to zeros).
    out1 = supernet(x, arch)
    out2 = supernet(torch.randn(2, 1, 8, 8) * 5, arch)
    torch.testing.assert_close(out1, out2)
    assert not torch.equal(supernet(x, space.decode(str(arch).replace("none~0", "skip_connect~0"))), out1)


def test_isomorphism_classes_coarsen_the_benchmarks_6466_unique_topologies() -> None:
    space = NB201Space()
    archs = list(space.enumerate())
    benchmark = [space.benchmark_unique_str(a) for a in archs]
    assert len(set(benchmark)) == 6466  # NAS-Bench-201 (arXiv:2001.00326), section 2.1
    keys = [space.isomorphism_key(a) for a in archs]
    key_of_class: dict[str, str] = {}
    for b, k in zip(benchmark, keys):
        assert key_of_class.setdefault(b, k) == k  # every benchmark class lies inside one of ours
    assert len(set(keys)) == 4930
    canon = {space.canonical(a) for a in archs}
    assert len(canon) == 4930 and all(space.canonical(c) == c for c in canon)
    # The benchmark's artefact: node 2 is zero either way, yet its strings differ.
    a = space.decode("|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|")
    b = space.decode("|none~0|+|none~0|none~1|+|skip_connect~0|none~1|skip_connect~2|")
    assert space.benchmark_unique_str(a) != space.benchmark_unique_str(b)
    assert space.canonical(a) == space.canonical(b) == a


def test_dead_edges_and_symmetric_sums_are_isomorphic() -> None:
    space = NB201Space(C=4, N=1, in_channels=1, input_size=8)
    # Node 1 and node 2 feed nothing but zero edges: their convs are dead, the cell is one 3x3 conv.
    dead = space.decode("|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|nor_conv_3x3~0|none~1|none~2|")
    plain = space.decode("|none~0|+|none~0|none~1|+|nor_conv_3x3~0|none~1|none~2|")
    assert space.canonical(dead) == plain == space.canonical(plain)
    assert space.params(dead) > space.params(plain)  # same function, fewer weights: the representative
    # The sum is commutative: conv on the skip node + pool on the input, either way round.
    a = space.decode("|skip_connect~0|+|none~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|")
    b = space.decode("|skip_connect~0|+|none~0|none~1|+|nor_conv_1x1~0|avg_pool_3x3~1|none~2|")
    assert space.canonical(a) == space.canonical(b)
    assert space.canonical(a) != space.canonical(space.decode(
        "|skip_connect~0|+|none~0|none~1|+|nor_conv_1x1~0|nor_conv_1x1~1|none~2|"))
    # Equivalent archs compute the same function: equal supernet outputs.
    torch.manual_seed(0)
    supernet = space.build_supernet().eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(supernet(x, dead), supernet(x, plain))
    zero_node = space.decode("|none~0|+|none~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|")
    assert space.canonical(zero_node) == space.decode("|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|")
    torch.testing.assert_close(supernet(x, zero_node), supernet(x, space.canonical(zero_node)))
