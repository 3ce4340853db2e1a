"""WPNAS (Lin et al., eqs. 1 and 4-7): the probabilistic sampler, the self-critical policy gradient on hand-worked
numbers and a known reward table, the baseline as the argmax arch's reward, clear errors for bad betas, the
exported arch, exact resume, and identical alphas and samples on two DDP ranks."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from callbacks.policy_step import PolicyStep
from nas_lightning.data import SyntheticDataModule
from nas_lightning.data.batch_source import seeded_batches
from nas_lightning.evaluation import evaluate_archs
from nas_lightning.methods import SPOS, WPNAS, StandaloneModule
from nas_lightning.methods.landmark import LandmarkRegularizer
from nas_lightning.samplers import ProbabilisticSampler, UniformSampler
from nas_lightning.search.policy_gradient import (
    FlopsScale,
    RewardError,
    SelfCriticalReward,
    policy_step,
    self_critical_gradient,
)
from nas_lightning.spaces import ChainSpace, DeeperInsightsSpace
from nas_lightning.spaces.arch import Arch
from nas_lightning.supernet.hypernet import HyperNet
from nas_lightning.utils.distributed import step_generator

SEED = 5
OPS3 = ("nor_conv_1x1", "nor_conv_3x3", "skip_connect")
SCRIPT = Path(__file__).parent / "scripts" / "ddp_wpnas.py"


def two_decisions() -> ChainSpace:
    return ChainSpace(num_layers=2, ops=OPS3, C=4, num_classes=4, in_channels=1, input_size=8)


def make_space() -> ChainSpace:
    return ChainSpace(num_layers=3, ops=OPS3, C=4, num_classes=4, in_channels=1, input_size=8)


def make_data() -> SyntheticDataModule:
    # 48 supernet-train images (3 steps of 16), 16 supernet-val (2 batches of 8).
    return SyntheticDataModule(num_classes=4, in_channels=1, image_size=8, num_train=64, num_test=8, noise=0.5,
                               batch_size=16, eval_batch_size=8, val_fraction=0.25, seed=0)


def write_gt(path: Path, space: ChainSpace, n: int = 6) -> str:
    """A made-up GT of the first n archs (accuracy falls with the index), for the landmark term."""
    rows = ["arch,accuracy"] + [f"{space.arch_at(i)},{90.0 - 3 * i}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def make_model(gt: str | None = None, **kw: Any) -> WPNAS:
    landmark = None if gt is None else partial(LandmarkRegularizer, ground_truth=gt, num_landmarks=4,
                                               max_weight=2.0, warmup_epochs=1)
    return WPNAS(make_space(), partial(ProbabilisticSampler, lr=0.2), seed=SEED, num_eval_archs=2, landmark=landmark,
                 optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), **kw)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- eq. 1 -----------------------------------------------------------------------------------------------------
def test_alphas_start_uniform_and_the_draws_follow_the_softmax() -> None:
    space = DeeperInsightsSpace(C=4, num_cells=1, num_classes=4, in_channels=1, input_size=8)
    sampler = ProbabilisticSampler(space, seed=SEED)
    assert sampler.alphas.dtype == torch.float32
    assert torch.equal(sampler.probs(), torch.full((3, 4), 0.25))
    # Before any update the draw is UniformSampler's: the warm-up trains SPOS's archs.
    uniform = UniformSampler(space, seed=SEED)
    assert [sampler.sample(t) for t in range(20)] == [uniform.sample(t) for t in range(20)]
    with torch.no_grad():
        sampler.alphas.copy_(torch.log(torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.25] * 4, [0.05, 0.05, 0.1, 0.8]])))
    archs = sampler.draw(20000, torch.Generator().manual_seed(0))
    freq = torch.stack([torch.bincount(space.to_tensor(archs)[:, d], minlength=4) for d in range(3)]) / 20000
    torch.testing.assert_close(freq, sampler.probs(), atol=0.015, rtol=0)
    # log p(A) is the sum of the per-decision log-probabilities (eq. 1), and the argmax is the joint mode.
    arch = space.arch([0, 2, 3])
    assert float(sampler.log_prob([arch]).detach()[0]) == pytest.approx(math.log(0.7 * 0.25 * 0.8), abs=1e-6)
    assert sampler.argmax_arch() == space.arch([0, 0, 3])


def test_decisions_of_different_sizes_never_draw_a_missing_choice() -> None:
    space = DeeperInsightsSpace(C=4, num_cells=1, num_classes=4, in_channels=1, input_size=8)
    sampler = ProbabilisticSampler(space)
    sampler.valid[1, 2:] = False  # pretend decision 1 has two choices: its padding must never be drawn
    sampler.num_choices[1] = 2
    archs = sampler.draw(2000, torch.Generator().manual_seed(1))
    assert set(space.to_tensor(archs)[:, 1].tolist()) == {0, 1}
    assert sampler.probs()[1, 2:].sum() == 0


# --- eqs. 4-7 --------------------------------------------------------------------------------------------------
def test_one_steps_gradient_is_the_hand_worked_one() -> None:
    """grad_alpha = -(r - r_hat) * (onehot(A) - softmax(alpha)) per decision (eq. 7 with eq. 1)."""
    space = two_decisions()
    sampler = ProbabilisticSampler(space)
    with torch.no_grad():
        sampler.alphas.copy_(torch.tensor([[0.5, 0.0, -0.3], [0.0, 1.0, 0.0]]))
    arch, r, r_hat = space.arch([2, 0]), 1.5, 0.25
    grad = self_critical_gradient(sampler, [arch], torch.tensor([r]), r_hat)
    e = math.exp
    p0 = [e(0.5) / (e(0.5) + 1 + e(-0.3)), 1 / (e(0.5) + 1 + e(-0.3)), e(-0.3) / (e(0.5) + 1 + e(-0.3))]
    p1 = [1 / (2 + e(1)), e(1) / (2 + e(1)), 1 / (2 + e(1))]
    expected = torch.tensor([[-(r - r_hat) * (onehot - p) for onehot, p in zip((0, 0, 1), p0)],
                             [-(r - r_hat) * (onehot - p) for onehot, p in zip((1, 0, 0), p1)]])
    torch.testing.assert_close(grad, expected, atol=1e-6, rtol=0)
    assert torch.equal(sampler.alphas.detach(), torch.tensor([[0.5, 0.0, -0.3], [0.0, 1.0, 0.0]]))  # not stepped


def test_the_policy_converges_to_the_best_arch_of_a_reward_table() -> None:
    space = two_decisions()
    table = torch.tensor([[0.1, 0.3, 0.0], [0.2, 0.5, 0.1], [0.4, 0.9, 0.2]])  # best: (2, 1); runner-up (1, 1)
    calls: list[list[Arch]] = []

    def reward(archs: list[Arch]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        calls.append(archs)
        r = torch.tensor([float(table[a.indices]) for a in archs], dtype=torch.float64)
        return r, {"ce": -r, "fsp": torch.zeros_like(r), "flops": torch.zeros_like(r)}

    sampler = ProbabilisticSampler(space, seed=SEED, lr=0.1)
    for step in range(300):
        stats = policy_step(sampler, reward, step, archs_per_step=2)
        # The baseline is the reward of the argmax arch, rewarded last on the same call (eq. 6).
        assert stats["baseline"] == float(table[calls[-1][-1].indices])
    assert all(len(c) == 3 for c in calls)
    assert sampler.argmax_arch() == space.arch([2, 1])
    assert float(sampler.log_prob([space.arch([2, 1])]).detach().exp()) > 0.9
    assert sampler.num_updates == 300 and sampler.last_update_step == 299


def test_bad_betas_give_a_clear_error_naming_them() -> None:
    space = make_space()
    with pytest.raises(RewardError, match=r"beta1=nan"):
        SelfCriticalReward(space, beta1=float("nan"))
    with pytest.raises(RewardError, match=r"beta2=inf"):
        WPNAS(space, beta2=float("inf"))
    with pytest.raises(ValueError, match=r"beta1=0.5 .*no predictor"):
        SelfCriticalReward(space, beta1=0.5)

    class Predictor:  # predicts 200 %: beta1 * FSP overflows to inf
        def predict(self, archs: Sequence[Arch]) -> torch.Tensor:
            return torch.full((len(archs),), 200.0)

    reward = SelfCriticalReward(space, beta1=1e308, beta2=0.0, predictor=Predictor())
    with pytest.raises(RewardError, match=r"beta1=1e\+308, beta2=0.0 .*not finite: beta1 \* FSP"):
        reward([space.arch_at(0)], torch.tensor([1.0]))
    with pytest.raises(RewardError, match=r"not finite: CE"):
        SelfCriticalReward(space)([space.arch_at(0)], torch.tensor([float("inf")]))


def test_the_reward_joins_ce_the_predictor_and_normalised_flops() -> None:
    space = make_space()

    class Predictor:
        def __init__(self) -> None:
            self.seen: list[int] = []

        def predict(self, archs: Sequence[Arch]) -> torch.Tensor:
            self.seen.append(len(archs))
            return torch.tensor([50.0 + a.indices[0] for a in archs])

    predictor = Predictor()
    reward = SelfCriticalReward(space, beta1=2.0, beta2=0.5, predictor=predictor)
    flops = [space.flops(a) for a in space.enumerate()]
    lo, hi = min(flops), max(flops)
    assert FlopsScale(space).bounds == (lo, hi)  # the cost table's bounds are the enumeration's
    archs = [space.arch([1, 0, 2]), space.arch([2, 1, 0]), space.arch([1, 0, 2])]
    r, _ = reward(archs, torch.tensor([0.7, 1.1, 0.7], dtype=torch.float64))
    for i, a in enumerate(archs):
        want = -[0.7, 1.1, 0.7][i] + 2.0 * (50 + a.indices[0]) / 100 - 0.5 * (space.flops(a) - lo) / (hi - lo)
        assert float(r[i]) == pytest.approx(want, abs=1e-12)
    assert predictor.seen == [2]  # distinct archs, predicted once
    reward(archs, torch.tensor([0.7, 1.1, 0.7], dtype=torch.float64))
    assert predictor.seen == [2]  # cached


# --- the method ---------------------------------------------------------------------------------------------
class Record(pl.Callback):
    def __init__(self) -> None:
        self.archs: list[str] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.archs.append(str(pl_module.current_arch))


def fit(root: Path, epochs: int, model: WPNAS | None = None, callbacks: Sequence[pl.Callback] = (),
        ckpt_path: Path | None = None, gt: str | None = None) -> tuple[WPNAS, pl.Trainer, Record]:
    model, record = model or make_model(gt), Record()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, default_root_dir=root,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         enable_checkpointing=bool(callbacks),
                         callbacks=[record, PolicyStep(start_epoch=1, output_dir=str(root / "wpnas")), *callbacks])
    trainer.fit(model, datamodule=make_data(), ckpt_path=ckpt_path)
    return model, trainer, record


def test_warm_up_then_policy_updates_and_the_argmax_arch_exported(tmp_path: Path) -> None:
    model, trainer, record = fit(tmp_path, 3)
    sampler = model.policy
    assert sampler.num_updates == 6 and sampler.last_update_step == 8  # after each step of epochs 1 and 2
    uniform = UniformSampler(make_space(), seed=SEED)
    assert record.archs[:4] == [str(uniform.sample(t)) for t in range(4)]  # epoch 0 and the first of epoch 1
    assert record.archs[4:] != [str(uniform.sample(t)) for t in range(4, 9)]
    exported = json.loads((tmp_path / "wpnas" / "wpnas_arch.json").read_text())
    assert exported[0]["arch"] == str(sampler.argmax_arch()) and exported[0]["num_updates"] == 6
    StandaloneModule(make_space(), exported[0]["arch"])  # ready to retrain
    rows = (tmp_path / "wpnas" / "alphas.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 3 * 3  # header + epochs x decisions x choices
    assert rows[-1].split(",")[:4] == ["2", "9", "6", "layer2"]

    # The baseline of an update is the reward of the argmax arch on the same batch (eq. 6): here -CE, recomputed
    # on the batch drawn for update 6 with the shared evaluator.
    argmax = sampler.argmax_arch()
    data = trainer.datamodule
    batch = next(seeded_batches(data.eval_dataloader("val"), 1, step_generator(SEED, "policy_batch", 6)))
    ce = evaluate_archs(model.supernet, [argmax], [batch]).mean_loss
    stats = model.update_policy(step=9)
    assert stats["baseline"] == pytest.approx(-float(ce[0]), abs=1e-9)


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_resume_gives_the_uninterrupted_runs_alphas_and_final_arch(tmp_path: Path) -> None:
    gt = write_gt(tmp_path / "gt.csv", make_space())
    ckpt = [pl.callbacks.ModelCheckpoint(tmp_path / "ckpt" / "step", every_n_train_steps=1, save_top_k=-1,
                                         enable_version_counter=False),
            pl.callbacks.ModelCheckpoint(tmp_path / "ckpt" / "epoch", save_on_train_epoch_end=True, save_top_k=-1,
                                         enable_version_counter=False)]
    pl.seed_everything(0)
    full, _, full_record = fit(tmp_path / "full", 3, callbacks=ckpt, gt=gt)
    assert full.policy.num_updates == 6
    expected = full.policy.state_dict()
    # Mid-epoch during the policy epochs, and the end of the warm-up epoch.
    for path in [tmp_path / "ckpt" / "step" / "epoch=1-step=5.ckpt",
                 tmp_path / "ckpt" / "epoch" / "epoch=0-step=3.ckpt"]:
        pl.seed_everything(99)
        resumed, _, record = fit(tmp_path / path.stem, 3, ckpt_path=path, gt=gt)
        assert record.archs == full_record.archs[-len(record.archs):], path.name
        got = resumed.policy.state_dict()
        assert torch.equal(got["alphas"], expected["alphas"]), path.name
        assert got["num_updates"] == expected["num_updates"] and got["last_update_step"] == expected["last_update_step"]
        assert str(resumed.policy.argmax_arch()) == str(full.policy.argmax_arch())
        for (name, a), b in zip(full.supernet.state_dict().items(), resumed.supernet.state_dict().values()):
            assert torch.equal(a, b), f"{name}, {path.name}"
        written = json.loads((tmp_path / path.stem / "wpnas" / "wpnas_arch.json").read_text())
        assert written == json.loads((tmp_path / "full" / "wpnas" / "wpnas_arch.json").read_text())
        assert (tmp_path / path.stem / "wpnas" / "alphas.csv").read_text() == \
            (tmp_path / "full" / "wpnas" / "alphas.csv").read_text()


@pytest.mark.parametrize("frozen", [False, True])
def test_the_hypernet_is_the_modules_and_trains_in_its_optimiser_unless_frozen(tmp_path: Path, frozen: bool) -> None:
    model = make_model(hypernet=partial(HyperNet, hidden=8, frozen=frozen))
    assert isinstance(model.hypernet, HyperNet)
    names = {n for n, _ in model.named_parameters()}
    assert {f"supernet.hypernet.{n}" for n, _ in model.hypernet.named_parameters()} <= names
    optimizer = model.configure_optimizers()
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in in_optimizer for p in model.hypernet.parameters())
    before = copy.deepcopy(model.hypernet.state_dict())
    fit(tmp_path, 1, model=model)
    changed = [n for n, v in model.hypernet.state_dict().items() if not torch.equal(v, before[n])]
    assert (changed == []) == frozen, changed


def test_init_weights_start_the_search_from_a_warm_up_checkpoint(tmp_path: Path) -> None:
    warm_up = SPOS(make_space(), seed=SEED, num_eval_archs=0)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(warm_up, datamodule=make_data())
    path = str(tmp_path / "warm_up.ckpt")
    trainer.save_checkpoint(path)
    model = make_model(init_weights=path, hypernet=partial(HyperNet, hidden=8))
    hypernet_keys = {k for k in model.supernet.state_dict() if k.startswith("hypernet.")}
    assert hypernet_keys and set(model.supernet.state_dict()) - hypernet_keys == set(warm_up.supernet.state_dict())
    for name, w in warm_up.supernet.state_dict().items():
        assert torch.equal(model.supernet.state_dict()[name], w), name
    other = ChainSpace(num_layers=2, ops=OPS3, C=4, num_classes=4, in_channels=1, input_size=8)
    with pytest.raises(ValueError, match=r"init_weights: the supernet of .*warm_up.ckpt does not fit"):
        WPNAS(other, init_weights=path)


def test_setup_names_the_missing_callback(tmp_path: Path) -> None:
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, default_root_dir=tmp_path,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(RuntimeError, match="PolicyStep"):
        trainer.fit(make_model(), datamodule=make_data())


@pytest.mark.slow
def test_two_ddp_ranks_hold_the_same_alphas_and_draw_the_same_archs(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert len(r0["archs"]) == 3 * 2 and r0["archs"] == r1["archs"]
    assert r0["sampler"]["num_updates"] == 4
    assert not torch.equal(r0["sampler"]["alphas"], torch.zeros_like(r0["sampler"]["alphas"]))
    assert torch.equal(r0["sampler"]["alphas"], r1["sampler"]["alphas"])
    assert r0["stats"] == r1["stats"] and r0["export"] == r1["export"]
    for name, p in r0["params"].items():
        assert torch.equal(p, r1["params"][name]), name
