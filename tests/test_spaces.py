"""The search-space grammar contract, for every space: encoding, enumeration, sampling, evolution operators.

Spaces own their grammar and build no modules here; the networks' contract is in ``test_space_contract.py``.
"""

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
