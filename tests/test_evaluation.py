"""The inherited-weight evaluator against a by-hand evaluation of the exported stand-alone network."""

from __future__ import annotations

import torch
from torch import nn

from nas_lightning.evaluation import evaluate_archs
from nas_lightning.spaces import NB201Space


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
