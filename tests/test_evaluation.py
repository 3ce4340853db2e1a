"""The inherited-weight evaluator against a by-hand evaluation of the exported stand-alone network; stacked
forward passes against one forward per batch on every space; sharding over archs and over data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nas_lightning.evaluation import (
    EvalTotals,
    assign_archs,
    default_batches_per_forward,
    evaluate_archs,
    evaluate_units,
)
from nas_lightning.spaces import NB201Space, SearchSpace


def batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 5, (16,), generator=g)) for _ in range(n)]


def setup() -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    space = NB201Space(C=4, N=1, num_classes=5, in_channels=1, input_size=8)
    supernet = space.build_supernet()
    supernet.train()
    for x, _ in batches(3, 9):  # give the shared running statistics some (arch-mixed) values
        supernet(x, space.sample(torch.Generator().manual_seed(int(x.sum().abs() * 100) % 1000)))
    return supernet, space.sample_many(4, torch.Generator().manual_seed(2))


def test_batch_statistics_mode_matches_exported_network_in_train_mode() -> None:
    supernet, archs = setup()
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    val = batches(3, 1)
    totals = evaluate_archs(supernet, archs, val)
    for i, arch in enumerate(archs):
        net = supernet.export(arch).train()
        with torch.no_grad():
            correct = sum(int((net(x).argmax(1) == y).sum()) for x, y in val)
        assert totals.correct[i] == correct and totals.count[i] == 48
    after = supernet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "evaluation changed the supernet's buffers"
    assert supernet.training


def test_recalibration_matches_exact_statistics_on_the_calibration_batches() -> None:
    supernet, archs = setup()
    val, calib = batches(3, 1), batches(2, 5)
    totals = evaluate_archs(supernet, archs, val, calib)
    for i, arch in enumerate(archs):
        net = supernet.export(arch)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        net.train()
        with torch.no_grad():
            for x, _ in calib:
                net(x)
            net.eval()
            logits = [net(x) for x, _ in val]
        correct = sum(int((lg.argmax(1) == y).sum()) for lg, (_, y) in zip(logits, val))
        loss = sum(float(nn.functional.cross_entropy(lg, y, reduction="sum")) for lg, (_, y) in zip(logits, val))
        assert totals.correct[i] == correct
        assert abs(float(totals.loss[i]) - loss) < 1e-3


# --- the unit evaluator: stacking, repeats, sharding ---------------------------------------------------

def space_batches(space: SearchSpace, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Four batches of 6 and a short one of 4, so stacking has to split by size."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, *space.input_shape, generator=g), torch.randint(0, space.num_classes, (b,), generator=g))
            for b in (6, 6, 4, 6, 6)]


def by_hand(supernet: nn.Module, units: list, batches: list, calibration: list) -> EvalTotals:
    """One exported stand-alone network per unit, BN by hand: the reference for ``evaluate_units``."""
    rows = []
    for arch, b in units:
        net = supernet.export(arch)
        with torch.no_grad():
            if calibration:
                for m in net.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.reset_running_stats()
                        m.momentum = None
                net.train()
                for x, _ in calibration:
                    net(x)
                net.eval()
            else:
                net.train()  # train-mode BN: the batch's own statistics
            x, y = batches[b]
            logits = net(x)
        loss = nn.functional.cross_entropy(logits, y, reduction="sum")
        rows.append([float((logits.argmax(1) == y).sum()), float(loss), float(len(y))])
    return EvalTotals.from_stacked(torch.tensor(rows, dtype=torch.float64).T)


@pytest.mark.parametrize("calibrate", [False, True], ids=["batch-statistics", "recalibrated"])
def test_stacked_forwards_equal_one_forward_per_batch_on_every_space(small_space: SearchSpace,
                                                                     calibrate: bool) -> None:
    torch.manual_seed(0)
    supernet = small_space.build_supernet()
    batches = space_batches(small_space, 1)
    calibration = space_batches(small_space, 2)[:2] if calibrate else []
    archs = small_space.sample_many(3, torch.Generator().manual_seed(3))
    units = [(a, b) for a in archs for b in range(len(batches))]
    stacked = evaluate_units(supernet, units, batches, calibration=calibration, max_batches_per_forward=3)
    single = evaluate_units(supernet, units, batches, calibration=calibration, max_batches_per_forward=1)
    reference = by_hand(supernet, units, batches, calibration)
    for got in (stacked, single):
        assert torch.equal(got.correct, reference.correct) and torch.equal(got.count, reference.count)
        torch.testing.assert_close(got.loss, reference.loss, rtol=1e-4, atol=1e-4)
    assert torch.equal(stacked.correct, single.correct)
    assert len(set(stacked.correct.tolist())) > 1, "every unit scored alike: the test proves little"


def test_repeated_units_are_evaluated_once_and_reported_everywhere() -> None:
    supernet, archs = setup()
    val = batches(3, 1)
    calls = []
    hook = supernet.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    units = [(archs[0], 0), (archs[1], 2), (archs[0], 0), (archs[0], 1), (archs[1], 2)]
    totals = evaluate_units(supernet, units, val, max_batches_per_forward=1)
    hook.remove()
    assert len(calls) == 3
    assert totals.correct[0] == totals.correct[2] and totals.correct[1] == totals.correct[4]
    alone = evaluate_units(supernet, [(archs[0], 1)], val)
    assert totals.correct[3] == alone.correct[0] and totals.count.tolist() == [16.0] * 5


def test_sharding_over_archs_splits_the_work_and_the_sum_over_ranks_is_the_whole() -> None:
    supernet, archs = setup()
    val = batches(3, 1)
    units = [(a, b) for a in archs for b in range(3)] + [(archs[0], 1)]
    whole = evaluate_units(supernet, units, val).stacked()
    owners = assign_archs(units, 2)
    assert owners == [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0]  # greedy: 3 batches per arch, lowest rank on ties
    shares = [evaluate_units(supernet, units, val, shard="archs", rank=r, world_size=2).stacked() for r in (0, 1)]
    for r, share in enumerate(shares):
        evaluated = share[2] > 0
        assert evaluated.tolist() == [o == r for o in owners]
    torch.testing.assert_close(shares[0] + shares[1], whole, rtol=0, atol=0)
    # ``reduce`` is a plain callable (an all-reduce sum under DDP); here it adds the other rank's share.
    reduced = evaluate_units(supernet, units, val, shard="archs", rank=0, world_size=2,
                             reduce=lambda t: t + shares[1])
    torch.testing.assert_close(reduced.stacked(), whole, rtol=0, atol=0)


def test_sharding_over_data_sums_the_shards_over_ranks() -> None:
    supernet, archs = setup()
    val, calib = batches(4, 1), batches(2, 5)
    for calibration in ([], calib):
        whole = evaluate_archs(supernet, archs, val, calibration)
        other = evaluate_archs(supernet, archs, val[3:], calibration)  # the shards may differ in length
        mine = evaluate_archs(supernet, archs, val[:3], calibration, reduce=lambda t, o=other: t + o.stacked())
        assert torch.equal(mine.correct, whole.correct) and torch.equal(mine.count, whole.count)
        torch.testing.assert_close(mine.loss, whole.loss)


def test_evaluation_restores_every_bn_setting() -> None:
    supernet, archs = setup()
    supernet.eval()
    bns = [m for m in supernet.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    bns[0].momentum = 0.3
    before = [(m.training, m.momentum, m.track_running_stats) for m in bns]
    for calibration in ([], batches(2, 5)):
        evaluate_units(supernet, [(archs[0], 0), (archs[1], 1)], batches(2, 1), calibration=calibration,
                       max_batches_per_forward=2)
        assert [(m.training, m.momentum, m.track_running_stats) for m in bns] == before


def test_stacking_default_and_argument_checks() -> None:
    assert default_batches_per_forward(torch.device("cpu"), 16) == 1
    assert [default_batches_per_forward(torch.device("cuda"), b) for b in (16, 64, 128, 256, 1024)] == [8, 8, 4, 2, 1]
    supernet, archs = setup()
    with pytest.raises(ValueError, match="shard must be"):
        evaluate_units(supernet, [(archs[0], 0)], batches(1, 1), shard="ranks")
    with pytest.raises(ValueError, match="max_batches_per_forward"):
        evaluate_units(supernet, [(archs[0], 0)], batches(1, 1), max_batches_per_forward=0)
