"""The search-space contract, for every space (registry-driven, like timm's model tests)."""

from __future__ import annotations

import pytest
import torch

from nas_lightning.spaces import ArchFormatError, SearchSpace


def test_round_trip_string_dict_tensor(small_space: SearchSpace, generator: torch.Generator) -> None:
    archs = small_space.sample_many(20, generator)
    for arch in archs:
        assert small_space.decode(str(arch)) == arch
        assert str(small_space.decode(str(arch))) == str(arch)
        assert small_space.from_dict(small_space.to_dict(arch)) == arch
    assert small_space.from_tensor(small_space.to_tensor(archs)) == archs


def test_enumerate_and_arch_at_agree(small_space: SearchSpace) -> None:
    if small_space.num_archs > 100_000:
        pytest.skip(f"{small_space.num_archs} archs are too many to enumerate")
    archs = list(small_space.enumerate())
    assert len(archs) == len(set(archs)) == small_space.num_archs
    for i in (0, 1, small_space.num_archs // 2, small_space.num_archs - 1):
        assert small_space.arch_at(i) == archs[i]


def test_sampling_is_seeded_and_covers_every_choice(small_space: SearchSpace) -> None:
    a = small_space.sample_many(300, torch.Generator().manual_seed(3))
    b = small_space.sample_many(300, torch.Generator().manual_seed(3))
    c = small_space.sample_many(300, torch.Generator().manual_seed(4))
    assert a == b and a != c
    counts = torch.zeros(small_space.num_decisions, max(len(d.choices) for d in small_space.decisions))
    for arch in a:
        for d, i in enumerate(arch.indices):
            counts[d, i] += 1
    for d, decision in enumerate(small_space.decisions):
        share = counts[d, : len(decision.choices)] / 300
        assert torch.all((share - 1 / len(decision.choices)).abs() < 0.1), share


def test_mutate_and_crossover(small_space: SearchSpace, generator: torch.Generator) -> None:
    a, b = small_space.sample(generator), small_space.sample(generator)
    assert small_space.mutate(a, 0.0, generator) == a
    mutated = [small_space.mutate(a, 1.0, generator) for _ in range(20)]
    assert any(m != a for m in mutated)
    for _ in range(20):
        child = small_space.crossover(a, b, generator)
        assert all(c in (x, y) for c, x, y in zip(child.indices, a.indices, b.indices))


def test_bad_arch_strings_name_the_problem(small_space: SearchSpace, generator: torch.Generator) -> None:
    good = str(small_space.sample(generator))
    op = small_space.choice_names(small_space.decode(good))[0]
    with pytest.raises(ArchFormatError, match="conv_9x9"):
        small_space.decode(good.replace(op, "conv_9x9", 1))
    with pytest.raises(ArchFormatError):
        small_space.decode("not an arch")
    with pytest.raises(ArchFormatError, match="out of range"):
        small_space.arch([99] * small_space.num_decisions)


def test_supernet_equals_exported_network(small_space: SearchSpace, generator: torch.Generator) -> None:
    """Weight-sharing correctness: the supernet on an arch computes what the exported net computes."""
    supernet = small_space.build_supernet()
    x = torch.randn(6, *small_space.input_shape, generator=generator)
    for _ in range(5):
        arch = small_space.sample(generator)
        net = supernet.export(arch)
        for mode in (True, False):
            supernet.train(mode)
            net.train(mode)
            torch.testing.assert_close(net(x), supernet(x, arch), rtol=0, atol=1e-6)


def test_forward_backward_no_nan_and_unselected_ops_get_no_gradient(
    small_space: SearchSpace, generator: torch.Generator
) -> None:
    supernet = small_space.build_supernet()
    arch = small_space.sample(generator)
    x = torch.randn(4, *small_space.input_shape, generator=generator)
    out = supernet(x, arch)
    assert out.shape == (4, small_space.num_classes) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    selected = set(small_space.build_network(arch).state_dict())
    for name, p in supernet.named_parameters():
        if name in selected:
            continue
        assert p.grad is None, f"unselected parameter {name} received a gradient"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in supernet.parameters())


def test_cost_is_cached_and_counts_parameters(small_space: SearchSpace, generator: torch.Generator) -> None:
    arch = small_space.sample(generator)
    params, flops = small_space.cost(arch)
    net = small_space.build_network(arch)
    assert params == sum(p.numel() for p in net.parameters())
    assert flops > 0
    assert small_space.cost(arch) is small_space.cost(arch)
