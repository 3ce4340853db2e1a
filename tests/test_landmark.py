"""Landmark regularisation (Yu et al., CVPR 2021): landmarks sorted by GT, the hinge on a constructed case against
hand-worked numbers, the weight schedule, and the term added in the same optimiser step as the arch's loss."""

from __future__ import annotations

import copy
import math
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from nas_lightning.data import SyntheticDataModule
from nas_lightning.data.batch_source import seeded_batches
from nas_lightning.methods.landmark import LandmarkRegularizer, LandmarkSPOS, landmark_weight
from nas_lightning.spaces import ChainSpace
from nas_lightning.spaces.arch import Arch
from nas_lightning.utils.distributed import step_generator

SEED = 4
LR = 0.1


def make_space() -> ChainSpace:
    return ChainSpace(num_layers=2, ops=("nor_conv_1x1", "nor_conv_3x3", "skip_connect"), C=4, num_classes=3,
                      in_channels=1, input_size=8)


def write_gt(path: Path, space: ChainSpace, accuracies: list[float]) -> str:
    path.write_text("arch,accuracy\n" + "".join(f"{space.arch_at(i)},{acc}\n" for i, acc in enumerate(accuracies)))
    return str(path)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_landmarks_are_sorted_worst_first_and_cut_to_a_seeded_subset(tmp_path: Path) -> None:
    space = make_space()
    gt = write_gt(tmp_path / "gt.csv", space, [70.0, 90.0, 60.0, 80.0, 75.0])
    reg = LandmarkRegularizer(space, SEED, ground_truth=gt, num_landmarks=10)
    assert reg.accuracy == [60.0, 70.0, 75.0, 80.0, 90.0]
    assert reg.landmarks == [space.arch_at(i) for i in (2, 0, 4, 3, 1)]
    few = LandmarkRegularizer(space, SEED, ground_truth=gt, num_landmarks=3)
    assert len(few.landmarks) == 3 and few.accuracy == sorted(few.accuracy)
    assert few.landmarks == LandmarkRegularizer(space, SEED, ground_truth=gt, num_landmarks=3).landmarks
    pairs = {reg.pair(step) for step in range(200)}
    assert all(i < j for i, j in pairs) and len(pairs) == 10  # every pair of 5, each ordered worse-first
    with pytest.raises(ValueError, match="num_landmarks >= 2"):
        LandmarkRegularizer(space, SEED, ground_truth=gt, num_landmarks=1)


def test_the_weight_is_zero_in_warm_up_then_a_cosine_to_the_maximum() -> None:
    assert landmark_weight(1.99, warmup_epochs=2, total_epochs=10, max_weight=10) == 0.0
    assert landmark_weight(2.0, 2, 10, 10) == 0.0
    assert landmark_weight(6.0, 2, 10, 10) == pytest.approx(5.0)  # half-way: (1 - cos(pi / 2)) / 2
    assert landmark_weight(4.0, 2, 10, 10) == pytest.approx(10 * (1 - math.cos(math.pi / 4)) / 2)
    assert landmark_weight(10.0, 2, 10, 10) == pytest.approx(10.0)
    assert landmark_weight(12.0, 2, 10, 10) == pytest.approx(10.0)


class TableNet(nn.Module):
    """A stand-in supernet whose logits depend only on the arch: every sample of arch a gets ``logits[a]``."""

    def __init__(self, logits: dict[Arch, list[float]]) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        return torch.tensor(self.logits[arch]).expand(len(x), -1)


def test_the_hinge_equals_the_hand_worked_value(tmp_path: Path) -> None:
    space = make_space()
    gt = write_gt(tmp_path / "gt.csv", space, [60.0, 80.0])  # arch 1 is the better landmark m_j
    reg = LandmarkRegularizer(space, SEED, ground_truth=gt)
    assert reg.pair(0) == (0, 1)
    worse, better = space.arch_at(0), space.arch_at(1)
    x, y = torch.zeros(2, 1, 8, 8), torch.tensor([0, 0])
    # L(m_i) = log(1 + e^-2), L(m_j) = log(1 + e^1): the better arch has the higher loss, so the hinge is their
    # difference, 1.313262 - 0.126928 = 1.186334.
    hinge, losses = reg.hinge(TableNet({worse: [2.0, 0.0], better: [0.0, 1.0]}), (x, y), step=0)
    assert float(hinge) == pytest.approx(math.log(1 + math.e) - math.log(1 + math.exp(-2)), abs=1e-6)
    assert float(hinge) == pytest.approx(1.186334, abs=1e-6)
    assert losses == pytest.approx({"loss_worse": 0.126928, "loss_better": 1.313262}, abs=1e-6)
    # Ranked the right way round, the hinge is zero.
    hinge, _ = reg.hinge(TableNet({worse: [0.0, 1.0], better: [2.0, 0.0]}), (x, y), step=0)
    assert float(hinge) == 0.0
    # batch_size keeps the first images only.
    reg.batch_size = 1
    hinge, _ = reg.hinge(TableNet({worse: [2.0, 0.0], better: [0.0, 1.0]}), (x, torch.tensor([0, 1])), step=0)
    assert float(hinge) == pytest.approx(1.186334, abs=1e-6)


# --- the same optimiser step -------------------------------------------------------------------------------------
def make_data() -> SyntheticDataModule:
    # 24 supernet-train images: one step of 24 per epoch; 8 supernet-val images, one batch of 8.
    return SyntheticDataModule(num_classes=3, in_channels=1, image_size=8, num_train=32, num_test=8, noise=0.5,
                               batch_size=24, eval_batch_size=8, val_fraction=0.25, seed=0)


class KeepWeights(pl.Callback):
    def __init__(self) -> None:
        self.after: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after.append(copy.deepcopy(pl_module.supernet.state_dict()))


def run(tmp_path: Path, landmark: object) -> tuple[LandmarkSPOS, KeepWeights]:
    pl.seed_everything(0)
    model = LandmarkSPOS(make_space(), landmark=landmark, seed=SEED, num_eval_archs=0,
                         optimizer=lambda p: torch.optim.SGD(p, lr=LR))
    keep = KeepWeights()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, default_root_dir=tmp_path, callbacks=[keep])
    trainer.fit(model, datamodule=make_data())
    return model, keep


def test_the_term_is_added_in_the_same_optimiser_step(tmp_path: Path) -> None:
    """Two epochs of one step each; lambda is 0 at step 0 and 5 at step 1 (half-way along the cosine to 10). The
    weights after step 1 with the term differ from those without it by exactly -lr * 5 * grad(hinge), the hinge's
    gradient taken at the weights after step 0 on step 1's landmark batch and pair."""
    gt = write_gt(tmp_path / "gt.csv", make_space(), [90.0, 80.0, 70.0, 60.0])
    landmark = partial(LandmarkRegularizer, ground_truth=gt, max_weight=10.0, warmup_epochs=0)
    with_term, kept = run(tmp_path / "with", landmark)
    _, plain = run(tmp_path / "plain", None)
    for name, w in kept.after[0].items():  # step 0: lambda 0, nothing added
        assert torch.equal(w, plain.after[0][name]), name

    supernet = make_space().build_supernet()
    supernet.load_state_dict(kept.after[0])
    supernet.train()
    data = make_data()
    data.setup("fit")
    batch = next(seeded_batches(data.eval_dataloader("val"), 1, step_generator(SEED, "landmark_batch", 1)))
    reg = with_term.landmark
    i, j = reg.pair(1)
    loss_i = F.cross_entropy(supernet(batch[0], reg.landmarks[i]), batch[1])
    loss_j = F.cross_entropy(supernet(batch[0], reg.landmarks[j]), batch[1])
    hinge = torch.relu(loss_j - loss_i)
    assert float(hinge.detach()) > 0, "the constructed case must have a non-zero hinge for the test to mean anything"
    params = dict(supernet.named_parameters())
    grads = torch.autograd.grad(5.0 * hinge, list(params.values()), allow_unused=True)
    moved = 0
    for (name, _), g in zip(params.items(), grads):
        diff = kept.after[1][name] - plain.after[1][name]
        expected = torch.zeros_like(diff) if g is None else -LR * g
        torch.testing.assert_close(diff, expected, atol=2e-6, rtol=1e-4, msg=name)
        moved += int(g is not None and bool(g.abs().max() > 1e-6))
    assert moved > 3, "the hinge moved no weights: the comparison would prove nothing"
