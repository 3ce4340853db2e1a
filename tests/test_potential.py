"""PC-NAS potentials (arXiv:1910.02543, eq. 11, Algorithm 1) through the shared evaluator: on every space they
equal a plain per-completion evaluation (timm's BN-with-activation layers included), and archs split over
two ranks give the potentials of one process."""

from __future__ import annotations

import pytest
import torch

from nas_lightning.evaluation import evaluate_archs
from nas_lightning.latency import FlopsProxy
from nas_lightning.samplers.pool import LatencyLimit
from nas_lightning.search.potential import potentials
from nas_lightning.spaces import SearchSpace
from nas_lightning.utils.distributed import step_generator


def val_batches(space: SearchSpace) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(b, *space.input_shape, generator=g), torch.randint(0, space.num_classes, (b,), generator=g))
            for b in (8, 8, 8, 4)]


def candidates(space: SearchSpace) -> list[tuple[int, ...]]:
    """Two one-decision prefixes and a full arch, whose completions all repeat it (so batches get stacked)."""
    full = space.sample(torch.Generator().manual_seed(5)).indices
    return [(0,), (len(space.decisions[0].choices) - 1,), tuple(full)]


@pytest.mark.parametrize("stack", [1, 3])
def test_potentials_equal_a_plain_per_completion_evaluation_on_every_space(small_space: SearchSpace,
                                                                           stack: int) -> None:
    torch.manual_seed(0)
    supernet = small_space.build_supernet()
    batches = val_batches(small_space)
    cands = candidates(small_space)
    result = potentials(supernet, cands, batches, 8, step_generator(0, "potential", 0),
                        LatencyLimit(FlopsProxy(small_space)), max_batches_per_forward=stack)
    assert result.num_units < 24 and result.evaluated_here == result.num_units  # the full arch: 4 units, not 8
    for completions, accs in zip(result.completions, result.accuracies):
        plain = [float(evaluate_archs(supernet, [a], [batches[j % 4]]).accuracy[0]) for j, a in enumerate(completions)]
        assert accs == pytest.approx(plain, abs=1e-9)
    assert result.potentials == pytest.approx([sum(a) / 8 for a in result.accuracies])


def test_archs_split_over_two_ranks_give_the_potentials_of_one_process(small_space: SearchSpace) -> None:
    torch.manual_seed(0)
    supernet = small_space.build_supernet()
    batches = val_batches(small_space)
    cands = candidates(small_space)
    limit = LatencyLimit(FlopsProxy(small_space))

    def run(rank: int, world_size: int, reduce=None):
        return potentials(supernet, cands, batches, 8, step_generator(0, "potential", 0), limit, rank=rank,
                          world_size=world_size, reduce=reduce)

    alone = run(0, 1)
    # A stand-in for the all-reduce: rank 0's counts plus what rank 1 evaluated, recorded on its own run.
    shares: list[torch.Tensor] = []
    r1 = run(1, 2, reduce=lambda t: shares.append(t.clone()) or t)
    r0 = run(0, 2, reduce=lambda t: t + shares[0])
    assert r0.potentials == pytest.approx(alone.potentials, abs=1e-9)
    assert r0.evaluated_here + r1.evaluated_here == alone.num_units == r0.num_units
    assert 0 < r0.evaluated_here < alone.num_units
