"""The interference experiment (arXiv:2001.01431, finding (3)): with shared weights a step of one arch moves the
other's validation loss; with two copies it never does, exactly."""

from __future__ import annotations

import csv
import json
from functools import partial
from pathlib import Path

import pytest
import torch

import nas_lightning.supernet  # noqa: F401 - registers the networks
from nas_lightning.cli import main
from nas_lightning.metrics.interference import interference, interference_summary, save_interference
from nas_lightning.spaces import ChainSpace


@pytest.fixture
def setting() -> tuple:
    space = ChainSpace(num_layers=2, C=4, num_classes=3, in_channels=1, input_size=8)
    torch.manual_seed(0)
    supernet = space.build_supernet()
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 1, 8, 8, generator=gen), torch.randint(0, 3, (8,), generator=gen)) for _ in range(6)]
    # two archs that share the stem, the head and the first layer's op
    a, b = space.decode("|nor_conv_3x3|nor_conv_1x1|"), space.decode("|nor_conv_3x3|avg_pool_3x3|")
    return space, supernet, a, b, batches[:4], batches[4:]


def test_other_arch_loss_never_changes_without_sharing_and_does_with_it(setting: tuple) -> None:
    _, supernet, a, b, train, val = setting
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    rows = interference(supernet, [a], [b], train, val, partial(torch.optim.SGD, lr=0.1, momentum=0.9), steps=3)
    assert len(rows) == 2 * 2 * 3
    separate = [r for r in rows if r["mode"] == "separate"]
    shared = [r for r in rows if r["mode"] == "shared"]
    assert [r["trained"] for r in shared] == ["A", "B"] * 3 and [r["step"] for r in shared] == list(range(6))
    for r in separate:
        assert r["other_loss_after"] == r["other_loss_before"]  # exactly: the other copy is never touched
        assert r["other_loss_change"] == 0.0
    assert all(r["other_loss_change"] != 0.0 for r in shared)
    # the modes start from the same weights and train on the same batch: A's first step is identical
    assert shared[0]["own_loss_before"] == separate[0]["own_loss_before"]
    assert shared[0]["own_loss_after"] == separate[0]["own_loss_after"]
    assert shared[0]["other_loss_before"] == separate[0]["other_loss_before"]
    # B's loss before its own first step already moved in the shared run (A trained the stem, head, layer 0)
    assert shared[1]["own_loss_before"] == shared[0]["other_loss_after"]
    assert separate[1]["own_loss_before"] == separate[0]["other_loss_before"]
    # the caller's supernet is untouched
    for k, v in supernet.state_dict().items():
        assert torch.equal(v, before[k]), k
    summary = interference_summary(rows)
    assert summary["separate"]["other_loss_abs_change"] == 0.0
    assert summary["shared"]["other_loss_abs_change"] > 0.0


def test_groups_take_turns_and_bad_input_is_refused(setting: tuple) -> None:
    space, supernet, a, b, train, val = setting
    c = space.decode("|skip_connect|nor_conv_1x1|")
    rows = interference(supernet, [a, c], [b], train, val, partial(torch.optim.SGD, lr=0.1), steps=2,
                        modes=["separate"])
    assert [r["trained_arch"] for r in rows] == [str(a), str(b), str(c), str(b)]
    assert all(r["other_loss_change"] == 0.0 for r in rows)
    with pytest.raises(ValueError, match="both groups"):
        interference(supernet, [], [b], train, val, partial(torch.optim.SGD, lr=0.1), steps=1)
    with pytest.raises(ValueError, match="modes"):
        interference(supernet, [a], [b], train, val, partial(torch.optim.SGD, lr=0.1), steps=1, modes=["half"])


def test_csv_and_plot(setting: tuple, tmp_path: Path) -> None:
    _, supernet, a, b, train, val = setting
    rows = interference(supernet, [a], [b], train, val, partial(torch.optim.SGD, lr=0.1), steps=2)
    csv_path, png_path = save_interference(rows, tmp_path / "out" / "interference")
    with csv_path.open() as f:
        read = list(csv.DictReader(f))
    assert [r["mode"] for r in read] == ["shared"] * 4 + ["separate"] * 4
    assert {"step", "trained", "other_loss_before", "other_loss_after"} <= set(read[0])
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command(tmp_path: Path) -> None:
    out = tmp_path / "interference"
    main(["interference", "--space", "nas_lightning.spaces.ChainSpace", "--space.num_layers", "2", "--space.C", "4",
          "--data", "nas_lightning.data.SyntheticDataModule", "--data.num_classes", "3", "--data.image_size", "8",
          "--data.num_train", "96", "--data.num_test", "32", "--data.batch_size", "16",
          "--arch_a", '["|nor_conv_3x3|nor_conv_1x1|"]', "--arch_b", '["|nor_conv_1x1|avg_pool_3x3|"]',
          "--steps", "2", "--val_batches", "1", "--optimizer", "torch.optim.SGD", "--optimizer.lr", "0.1",
          "--output", str(out)])
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["separate"]["other_loss_abs_change"] == 0.0
    assert summary["shared"]["other_loss_abs_change"] > 0.0
    assert out.with_suffix(".png").exists() and out.with_suffix(".csv").exists()
