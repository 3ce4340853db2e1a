"""Reduced weight sharing (arXiv:2001.01431, section 5) on the weight-copies mechanism: the group of an arch is a
pure function of (arch, seed); archs of different groups touch disjoint weights; g = 1 (and k = all) is SPOS bit for
bit; g = the number of archs is stand-alone training; export runs the picked copies; resume and 2-process DDP keep
groups and private weights; round-robin sampling visits every arch once per cycle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from typing_extensions import override

from nas_lightning.data import SyntheticDataModule
from nas_lightning.methods import SPOS, ReducedSharing
from nas_lightning.samplers import RoundRobinSampler
from nas_lightning.spaces import ChainSpace, SearchSpace
from nas_lightning.supernet.copies import CopyPicker, count_copies, install_copies, weight_copies
from nas_lightning.supernet.pickers import ReducedSharingPicker, arch_index
from tests.conftest import SMALL_SPACES

DDP_SCRIPT = Path(__file__).parent / "scripts" / "ddp_reduced_sharing.py"


def make_space(**kw) -> ChainSpace:
    return ChainSpace(**{"num_layers": 3, "C": 8, "num_classes": 4, "in_channels": 1, "input_size": 12, **kw})


def make_data(**kw) -> SyntheticDataModule:
    return SyntheticDataModule(num_classes=4, in_channels=1, image_size=12, num_train=256, num_test=64,
                               batch_size=32, val_fraction=0.25, seed=0, noise=0.5, **kw)


def optimizer(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)


def make_model(**kw) -> ReducedSharing:
    return ReducedSharing(make_space(), seed=3, optimizer=optimizer, num_eval_archs=4, **kw)


class ArchLog(pl.Callback):
    def __init__(self) -> None:
        self.steps: list[tuple[int, str]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append((trainer.global_step - 1, str(pl_module.current_arch)))


def trainer(tmp_path: Path, max_epochs: int, callbacks=(), **kw) -> pl.Trainer:
    return pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=list(callbacks), **kw)


def grad_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def touched(supernet: torch.nn.Module, arch, x: torch.Tensor) -> set[str]:
    supernet.zero_grad(set_to_none=True)
    supernet(x, arch).sum().backward()
    names = grad_names(supernet)
    supernet.zero_grad(set_to_none=True)
    return names


# --- the picker ----------------------------------------------------------------------------------------------
def test_arch_index_inverts_arch_at(small_space: SearchSpace) -> None:
    n = min(small_space.num_archs, 300)
    assert [arch_index(small_space, small_space.arch_at(i)) for i in range(n)] == list(range(n))


def test_the_group_of_an_arch_is_a_pure_function_of_the_arch_and_the_seed() -> None:
    space = make_space()  # 4**3 = 64 archs
    archs = list(space.enumerate())
    torch.manual_seed(0)
    a = ReducedSharingPicker(space, 3, groups=4, seed=5)
    first = [a.group(x) for x in archs]
    torch.manual_seed(1)  # the global RNG plays no part
    b = ReducedSharingPicker(space, 3, groups=4, seed=5)
    assert [b.group(x) for x in reversed(archs)] == first[::-1]  # nor does the order of the questions
    assert [a(x) for x in archs] == [b(x) for x in archs]
    assert sorted(first.count(g) for g in range(4)) == [16] * 4  # a shuffle of index % g: balanced groups
    other = [ReducedSharingPicker(space, 3, groups=4, seed=6).group(x) for x in archs]
    assert other != first, "another seed must give another split"
    contiguous = ReducedSharingPicker(space, 3, groups=4, group_by="contiguous")
    assert [contiguous.group(x) for x in archs] == [i // 16 for i in range(64)]
    by_first = ReducedSharingPicker(space, 3, groups=4, group_by="decisions")
    assert all(by_first.group(x) == x.indices[0] for x in archs)
    by_two = ReducedSharingPicker(space, 3, groups=16, group_by="decisions")
    assert all(by_two.group(x) == 4 * x.indices[0] + x.indices[1] for x in archs)
    with pytest.raises(ValueError, match="number of choice combinations"):
        ReducedSharingPicker(space, 3, groups=8, group_by="decisions")


def test_a_space_too_large_to_permute_is_grouped_by_a_seeded_bijection() -> None:
    space = SMALL_SPACES["darts"]()  # about 9e18 archs
    archs = space.sample_many(400, torch.Generator().manual_seed(0))
    groups = [ReducedSharingPicker(space, 3, groups=4, seed=2).group(a) for a in archs]
    assert groups == [ReducedSharingPicker(space, 3, groups=4, seed=2).group(a) for a in archs]
    assert groups != [ReducedSharingPicker(space, 3, groups=4, seed=3).group(a) for a in archs]
    assert min(groups.count(g) for g in range(4)) > 60  # about 100 each


def test_copy_counts_of_group_and_prefix_sharing() -> None:
    space = make_space()
    assert set(ReducedSharingPicker(space, 3).num_copies.values()) == {1}  # SPOS
    assert set(ReducedSharingPicker(space, 3, prefix=3).num_copies.values()) == {1}  # k = all: SPOS
    assert dict(ReducedSharingPicker(space, 3, groups=4).num_copies) == dict.fromkeys(
        ["stem", "body.0", "body.1", "body.2", "head"], 4)
    prefix = ReducedSharingPicker(space, 3, prefix=1)  # private to each arch
    assert dict(prefix.num_copies) == {"stem": 1, "body.0": 1, "body.1": 64, "body.2": 64, "head": 64}
    assert all(prefix(x) == dict.fromkeys(["body.1", "body.2", "head"], i) for i, x in enumerate(space.enumerate()))
    both = ReducedSharingPicker(space, 3, groups=4, prefix=2)  # private to each group
    assert dict(both.num_copies) == {"stem": 1, "body.0": 1, "body.1": 1, "body.2": 4, "head": 4}

    supernet = space.build_supernet()
    plain = sum(p.numel() for p in supernet.parameters())
    install_copies(supernet, ReducedSharingPicker(space, 3, groups=4))
    count = count_copies(supernet)
    assert count.supernet == plain and count.total == 4 * plain and count.extra == 3 * plain


# --- weights ----------------------------------------------------------------------------------------------------
def test_archs_in_different_groups_touch_disjoint_parameter_tensors() -> None:
    torch.manual_seed(0)
    space = make_space()
    supernet = space.build_supernet()
    picker = ReducedSharingPicker(space, 3, groups=4, seed=1)
    install_copies(supernet, picker)
    x = torch.randn(8, 1, 12, 12)
    a = space.decode("|nor_conv_3x3|nor_conv_1x1|nor_conv_3x3|")
    # an arch of another group with the same first op: in one supernet the two would share it
    b = next(z for z in space.enumerate() if z.indices[0] == a.indices[0] and picker.group(z) != picker.group(a))
    grads = {z: touched(supernet, z, x) for z in (a, b)}
    assert grads[a] and grads[b]
    assert not grads[a] & grads[b], "archs of different groups must not touch the same tensor"
    # ... while the same two archs share their common ops in one supernet (so the test can fail).
    plain = space.build_supernet()
    assert touched(plain, a, x) & touched(plain, b, x)


def test_prefix_sharing_shares_the_prefix_and_privatises_the_rest() -> None:
    torch.manual_seed(0)
    space = make_space()
    supernet = space.build_supernet()
    install_copies(supernet, ReducedSharingPicker(space, 3, prefix=1))
    x = torch.randn(8, 1, 12, 12)
    a = space.decode("|nor_conv_3x3|nor_conv_1x1|nor_conv_3x3|")
    b = space.decode("|nor_conv_3x3|nor_conv_1x1|nor_conv_1x1|")
    ga, gb = touched(supernet, a, x), touched(supernet, b, x)
    common = ga & gb
    assert any(n.startswith("stem.") for n in common) and any(n.startswith("body.0.") for n in common)
    assert all(n.startswith(("stem.", "body.0.")) for n in common), "only the prefix may be shared"


def test_g1_and_k_all_equal_spos_bit_for_bit(tmp_path: Path) -> None:
    def fit(model) -> dict[str, torch.Tensor]:
        trainer(tmp_path, 2, enable_checkpointing=False).fit(model, datamodule=make_data())
        return {k: v.clone() for k, v in model.supernet.state_dict().items()}

    pl.seed_everything(0)
    spos = fit(SPOS(make_space(), seed=3, optimizer=optimizer, num_eval_archs=4))
    for kw in ({"groups": 1}, {"prefix": 3}, {"groups": 4, "prefix": 3}):
        pl.seed_everything(0)
        model = make_model(**kw)
        assert not weight_copies(model.supernet)
        reduced = fit(model)
        assert reduced.keys() == spos.keys()
        assert all(torch.equal(reduced[k], spos[k]) for k in spos), kw


def test_g_equal_to_the_number_of_archs_is_stand_alone_training() -> None:
    """Every arch of a 4-arch space has its own copy of every part: training the supernet on a sequence of
    (arch, batch) steps leaves each arch's exported network equal to that network trained alone on its steps."""
    torch.manual_seed(0)
    space = ChainSpace(num_layers=2, ops=("nor_conv_1x1", "nor_conv_3x3"), C=4, num_classes=3, in_channels=1,
                       input_size=8, supernet_bn_affine=True)
    supernet = space.build_supernet()
    install_copies(supernet, ReducedSharingPicker(space, 2, groups=space.num_archs))
    archs = list(space.enumerate())
    alone = {a: supernet.export(a) for a in archs}
    opts = {a: optimizer(net.parameters()) for a, net in alone.items()}
    opt = optimizer(supernet.parameters())
    gen = torch.Generator().manual_seed(0)
    sampler = RoundRobinSampler(space, seed=0)
    for step in range(3 * len(archs) + 2):
        a = sampler.sample(step)
        x, y = torch.randn(6, 1, 8, 8, generator=gen), torch.randint(0, 3, (6,), generator=gen)
        for o, logits in ((opt, lambda: supernet(x, a)), (opts[a], lambda: alone[a](x))):  # noqa: B023 (called now)
            o.zero_grad(set_to_none=True)
            F.cross_entropy(logits(), y).backward()
            o.step()
    for a in archs:
        exported = supernet.export(a).state_dict()
        for k, v in alone[a].state_dict().items():
            torch.testing.assert_close(exported[k], v, rtol=1e-5, atol=1e-6, msg=f"{a} {k}")
    assert not torch.equal(supernet.export(archs[0]).head.classifier.weight,
                           supernet.export(archs[1]).head.classifier.weight)


@pytest.mark.parametrize("name", sorted(SMALL_SPACES))
def test_export_runs_the_picked_copies(name: str) -> None:
    """For every space, the stand-alone network of an arch holds that arch's copies: it computes the supernet's
    path, and two archs of different groups export different weights."""
    torch.manual_seed(0)
    space = SMALL_SPACES[name]()
    supernet = space.build_supernet()
    picker = ReducedSharingPicker(space, len(supernet.body), groups=3, seed=0)
    install_copies(supernet, picker)
    with torch.no_grad():  # copies that differ from copy 0, as after training
        for p in supernet.weight_copies.parameters():
            p.add_(0.1 * torch.randn_like(p))
    gen = torch.Generator().manual_seed(1)
    archs = space.sample_many(12, gen)
    x = torch.randn(4, *space.input_shape)
    supernet.train()
    for a in archs:
        net = space.build_network(a).train()
        net.load_state_dict(supernet.export(a).state_dict())
        torch.testing.assert_close(net(x), supernet(x, a), rtol=1e-4, atol=1e-5, msg=str(a))
    by_group = {picker.group(a): a for a in archs}
    assert len(by_group) > 1
    a, b = list(by_group.values())[:2]
    head_a, head_b = (dict(supernet.export(z).named_parameters()) for z in (a, b))
    key = next(k for k in head_a if k.startswith("head.") and k.endswith("weight"))
    assert not torch.equal(head_a[key], head_b[key])


class TwoCopiesOfOneOp(CopyPicker):
    """A DC-NAS-shaped picker: two copies of one candidate op; archs choosing it at layer 0 with layer 1's op 0
    run copy 1."""

    def __init__(self, part: str) -> None:
        self.part = part

    @property
    @override
    def num_copies(self) -> dict[str, int]:
        return {self.part: 2}

    @override
    def __call__(self, arch) -> dict[str, int]:
        return {self.part: int(arch.indices[1] == 0)}


def test_a_copy_of_one_op_and_copy_from_its_parent() -> None:
    torch.manual_seed(0)
    space = make_space()
    supernet = space.build_supernet().train()
    part = "body.0.candidates.nor_conv_3x3"
    install_copies(supernet, TwoCopiesOfOneOp(part))
    copies = weight_copies(supernet)[part]
    a = space.decode("|nor_conv_3x3|nor_conv_1x1|skip_connect|")  # copy 1
    b = space.decode("|nor_conv_3x3|nor_conv_3x3|skip_connect|")  # copy 0
    x = torch.randn(4, 1, 12, 12)
    before = supernet(x, a)
    grads = touched(supernet, a, x)
    assert any(n.startswith("weight_copies.") for n in grads) and not any(n.startswith(part + ".") for n in grads)
    assert any(n.startswith(part + ".") for n in touched(supernet, b, x))
    with torch.no_grad():
        for p in copies.copy_module(1).parameters():
            p.add_(1.0)
    changed = supernet(x, a)
    assert not torch.allclose(changed, before)
    copies.copy_(0, 1)  # a newly split copy starts from its parent's weights
    torch.testing.assert_close(supernet(x, a), before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="may not nest"):
        install_copies(space.build_supernet(), type("P", (TwoCopiesOfOneOp,), {
            "num_copies": property(lambda self: {"body.0": 2, "body.0.candidates.nor_conv_3x3": 2})})(part))


def test_fresh_copies_are_seeded_and_leave_the_global_rng_alone() -> None:
    def build(seed: int) -> ReducedSharing:
        return ReducedSharing(make_space(), seed=seed, groups=3, copy_init="fresh", num_eval_archs=0)

    torch.manual_seed(0)
    model = build(1)
    after = torch.rand(1)
    torch.manual_seed(0)
    ReducedSharing(make_space(), seed=1, groups=3, num_eval_archs=0)
    assert torch.equal(torch.rand(1), after), "fresh copies must not draw from the global RNG"
    torch.manual_seed(5)
    again, other = build(1), build(2)
    copies = weight_copies(model.supernet)["body.0"]
    first, second = copies.copy_module(1), copies.copy_module(2)
    w = "candidates.nor_conv_3x3.1.weight"
    assert not torch.equal(first.get_parameter(w), copies.copy_module(0).get_parameter(w))
    assert not torch.equal(first.get_parameter(w), second.get_parameter(w))
    assert torch.equal(weight_copies(again.supernet)["body.0"].copy_module(1).get_parameter(w), first.get_parameter(w))
    assert not torch.equal(weight_copies(other.supernet)["body.0"].copy_module(1).get_parameter(w),
                           first.get_parameter(w))
    std = copies.copy_module(0).get_parameter(w).std().item()
    assert first.get_parameter(w).std().item() == pytest.approx(std, rel=0.3)  # the same initialiser


# --- the method ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_resume_from_a_mid_epoch_checkpoint_keeps_groups_and_private_weights(tmp_path: Path) -> None:
    kw = {"groups": 4, "prefix": 1, "sampler": RoundRobinSampler}
    pl.seed_everything(0)
    full, full_log = make_model(**kw), ArchLog()
    trainer(tmp_path / "full", 3, [full_log], enable_checkpointing=False).fit(full, datamodule=make_data())

    pl.seed_everything(0)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=9, save_top_k=-1)
    trainer(tmp_path / "a", 3, [ckpt], max_steps=9).fit(make_model(**kw), datamodule=make_data())
    (path,) = (tmp_path / "ckpt").glob("*step=9.ckpt")
    pl.seed_everything(1)
    resumed, resumed_log = make_model(**kw), ArchLog()
    trainer(tmp_path / "b", 3, [resumed_log]).fit(resumed, datamodule=make_data(), ckpt_path=str(path))

    assert [s for s, _ in resumed_log.steps] == list(range(9, 18))
    assert full_log.steps[9:] == resumed_log.steps
    archs = list(resumed.space.enumerate())
    assert [resumed.picker(a) for a in archs] == [full.picker(a) for a in archs]
    full_state, resumed_state = full.supernet.state_dict(), resumed.supernet.state_dict()
    assert any(k.startswith("weight_copies.") for k in full_state)
    for name, p in full_state.items():
        torch.testing.assert_close(resumed_state[name], p, rtol=1e-5, atol=1e-6, msg=name)

    other = make_model(groups=2, prefix=1, sampler=RoundRobinSampler)  # the copies laid out otherwise
    with pytest.raises(ValueError, match="groups=4 vs 2"):
        other.on_load_checkpoint(torch.load(path, weights_only=False))


@pytest.mark.slow
def test_the_method_trains_each_group_and_logs_what_it_costs(tmp_path: Path) -> None:
    pl.seed_everything(0)
    model = make_model(groups=4, sampler=RoundRobinSampler)
    initial = {k: v.clone() for k, v in model.supernet.state_dict().items()}
    logger = pl.loggers.CSVLogger(tmp_path, name="logs")
    t = pl.Trainer(max_epochs=1, limit_train_batches=6, accelerator="cpu", logger=logger, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    t.fit(model, datamodule=make_data())
    trained = {model.picker.group(model.sampler.sample(s)) for s in range(6)}
    state = model.supernet.state_dict()
    for g in range(4):  # a group trains exactly when one of its archs was sampled
        key = "head.classifier.weight" if g == 0 else f"weight_copies.head.extra.{g - 1}.classifier.weight"
        assert (not torch.equal(state[key], initial[key])) == (g in trained), g
    metrics = Path(logger.log_dir, "metrics.csv").read_text()
    assert "params/total" in metrics and "params/copies_ratio" in metrics and "memory/peak_mib" in metrics
    assert model.copy_count.total == 4 * model.copy_count.supernet
    assert model.archs_per_weight() == 16.0  # 64 archs over 4 copies of everything
    assert make_model().archs_per_weight() == 64.0  # SPOS
    prefix = make_model(prefix=2)  # stem and 2 layers shared by all 64 archs, the last layer and head by 1 each
    count = prefix.copy_count
    private = sum(numel for _, numel in count.parts.values())
    assert prefix.archs_per_weight() == pytest.approx(((count.supernet - private) * 64 + private) / count.supernet)
    assert "archs_per_weight" in metrics and "arch_mean" in metrics


@pytest.mark.slow
def test_two_process_ddp_keeps_the_groups_and_the_private_weights(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    for mode in ("ddp", "single"):
        proc = subprocess.run([sys.executable, str(DDP_SCRIPT), mode, str(tmp_path)], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"ddp_rank{r}.pt") for r in (0, 1))
    single = torch.load(tmp_path / "single_rank0.pt")
    assert r0["archs"] == r1["archs"] and single["archs"][::2] == r0["archs"]
    assert r0["groups"] == r1["groups"] == single["groups"]
    assert len({g for _, g in r0["trained_groups"]}) > 1, "the steps must train more than one group"
    moved = [n for n, p in single["params"].items() if n.startswith("weight_copies.")
             and not torch.equal(p, single["initial"][n])]
    assert moved, "no private copy trained: the comparison would prove nothing"
    for name, p in single["params"].items():
        torch.testing.assert_close(r0["params"][name], p, rtol=1e-4, atol=1e-5, msg=name)
        torch.testing.assert_close(r1["params"][name], r0["params"][name], rtol=0, atol=0, msg=name)


# --- round robin -----------------------------------------------------------------------------------------------
def test_round_robin_visits_every_arch_once_per_cycle() -> None:
    space = ChainSpace(num_layers=2, ops=("nor_conv_1x1", "nor_conv_3x3", "skip_connect"), C=4)
    n = space.num_archs
    sampler = RoundRobinSampler(space, seed=4)
    cycles = [[sampler.sample(c * n + i) for i in range(n)] for c in range(3)]
    for cycle in cycles:
        assert sorted(cycle) == sorted(space.enumerate())
    assert cycles[0] != cycles[1], "each cycle is shuffled afresh"
    fresh = RoundRobinSampler(space, seed=4)
    assert [fresh.sample(s) for s in reversed(range(3 * n))] == [a for c in cycles for a in c][::-1]
    assert [RoundRobinSampler(space, seed=5).sample(s) for s in range(n)] != cycles[0]
    restored = RoundRobinSampler(space, seed=0)
    restored.load_state_dict(sampler.state_dict())
    assert [restored.sample(s) for s in range(n, 2 * n)] == cycles[1]
    in_order = RoundRobinSampler(space, seed=4, shuffle=False)
    assert [in_order.sample(s) for s in range(2 * n)] == list(space.enumerate()) * 2
