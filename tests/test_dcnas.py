"""DC-NAS ("Distribution Consistent Neural Architecture Search"): local sharing states on weight copies.

Checked against numbers from outside the code: a plain SPOS run (M = 1, or before any split, is SPOS bit for bit),
hand-worked cosines and clusterings, the gradients autograd gives each arch (archs in different clusters touch
disjoint tensors), an uninterrupted run (resume), and a second DDP rank."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from typing_extensions import override

from callbacks.sharing_state_update import SharingStateUpdate
from nas_lightning.data import SyntheticDataModule
from nas_lightning.methods import DCNAS, SPOS
from nas_lightning.metrics.sharing_diagnostics import write_sharing_diagnostics
from nas_lightning.search.sharing_update import (
    apply_inference,
    assign_copies,
    consistency_scores,
    group_clusters,
    infer_sharing_state,
    kmeans,
    representative_gradients,
    representatives,
    sharing_update_due,
)
from nas_lightning.spaces import ChainSpace, SearchSpace
from nas_lightning.supernet.choice import ChoiceBlock
from nas_lightning.supernet.copies import weight_copies
from nas_lightning.supernet.sharing_state import SharingState, one_hot

DDP_SCRIPT = Path(__file__).parent / "scripts" / "ddp_dcnas.py"


def make_space() -> ChainSpace:
    return ChainSpace(num_layers=3, C=4, num_classes=4, in_channels=1, input_size=8)


def make_data() -> SyntheticDataModule:
    # 48 supernet-train images (3 steps of 16), 16 supernet-val (one eval batch of 16)
    return SyntheticDataModule(num_classes=4, in_channels=1, image_size=8, num_train=64, num_test=8, noise=0.5,
                               batch_size=16, eval_batch_size=16, val_fraction=0.25, seed=0)


def optimizer(params):
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)


def make_model(**kw) -> DCNAS:
    return DCNAS(make_space(), **{"seed": 3, "optimizer": optimizer, "num_eval_archs": 2, **kw})


def trainer(tmp_path: Path, max_epochs: int, callbacks=(), **kw) -> pl.Trainer:
    return pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      callbacks=list(callbacks), **kw)


def batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 4, (n,), generator=gen)


def split_everything(model: DCNAS, rounds: int = 1) -> None:
    """Inferences whose threshold (above any cosine) splits every site's clusters into their own copies."""
    for _ in range(rounds):
        apply_inference(model.supernet, model.sharing, infer_sharing_state(model.supernet, model.sharing, batch(),
                                                                           model.seed, 32, threshold=2.0))


# --- M = 1, and before any split: SPOS ------------------------------------------------------------------------
def test_m1_and_before_any_split_equal_spos_bit_for_bit(tmp_path: Path) -> None:
    def fit(model, callbacks=()) -> dict[str, torch.Tensor]:
        trainer(tmp_path, 3, callbacks, enable_checkpointing=False).fit(model, datamodule=make_data())
        return {k: v.clone() for k, v in model.supernet.state_dict().items() if not k.startswith("weight_copies.")}

    pl.seed_everything(0)
    spos = fit(SPOS(make_space(), seed=3, optimizer=optimizer, num_eval_archs=2))
    cases = [({"num_copies": 1, "partner_weight": 0.0}, SharingStateUpdate(warmup_epochs=1, every_n_epochs=1,
                                                                          num_archs=16)),
             ({"num_copies": 2, "partner_weight": 0.0}, SharingStateUpdate(warmup_epochs=9, num_archs=16))]
    for kw, callback in cases:
        pl.seed_everything(0)
        model = make_model(**kw)
        dcnas = fit(model, [callback])
        assert dcnas.keys() == spos.keys()
        assert all(torch.equal(dcnas[k], spos[k]) for k in spos), kw
        assert model.sharing.rounds == 0 and not bool(model.sharing.table.any())
    pl.seed_everything(0)  # the partner term is what differs: with it, the weights leave SPOS's
    with_partner = fit(make_model(num_copies=1, partner_weight=0.5), [SharingStateUpdate(warmup_epochs=9)])
    assert not all(torch.equal(with_partner[k], spos[k]) for k in spos)


def test_the_method_refuses_to_fit_without_its_callback_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="SharingStateUpdate"):
        trainer(tmp_path, 1).fit(make_model(), datamodule=make_data())
    with pytest.raises(ValueError, match="partner_weight"):
        make_model(partner_weight=-1.0)
    with pytest.raises(ValueError, match="num_copies"):
        make_model(num_copies=0)
    with pytest.raises(ValueError, match="every_n_epochs"):
        SharingStateUpdate(every_n_epochs=0)


def test_the_schedule_runs_after_the_warmup_then_every_n_epochs() -> None:
    assert [e for e in range(1, 15) if sharing_update_due(e, 5, 3)] == [5, 8, 11, 14]
    assert [e for e in range(1, 5) if sharing_update_due(e, 0, 2)] == [1, 3]


# --- clustering ---------------------------------------------------------------------------------------------------
def test_kmeans_finds_hand_made_clusters_and_is_a_pure_function_of_data_and_seed() -> None:
    points = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [10.0, 10.0], [10.0, 11.0], [11.0, 10.0]])
    centres, labels = kmeans(points, 2, torch.Generator().manual_seed(0))
    assert labels[:3].unique().numel() == 1 and labels[3:].unique().numel() == 1 and labels[0] != labels[3]
    expected = [(1 / 3, 1 / 3), (31 / 3, 31 / 3)]  # the means of the two blobs, by hand
    assert all(min(math.dist(c, e) for e in expected) < 1e-12 for c in centres.tolist())
    reps = representatives(points, centres, labels)  # the member nearest each centre: (0,0)-(1,0) tie -> lowest
    assert sorted(reps.tolist()) == [0, 3]

    sizes = torch.tensor([3, 4, 2, 5])
    gen = torch.Generator().manual_seed(1)
    contexts = one_hot((torch.rand(200, 4, generator=gen) * sizes).long(), sizes)
    runs = [kmeans(contexts, 3, torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][1], runs[2][1])  # another seed, another clustering of these points


def test_an_archs_cluster_is_the_cluster_kmeans_gave_it() -> None:
    model = make_model()
    split_everything(model)
    state = model.sharing
    for d in range(3):
        for o in range(len(state.choices[d])):
            if not bool(state.clustered[d, o]):
                continue
            for row, label in zip(state.samples[d, o][:20], state.labels[d, o][:20]):
                assert int(state.clusters(model.space.arch(row.long().tolist()))[d]) == int(label)


# --- consistency and inference ---------------------------------------------------------------------------------
def test_consistency_is_the_cosine_of_the_gradients() -> None:
    grads = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [-3.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    s = consistency_scores(grads)
    assert s[0, 1] == pytest.approx(1.0) and s[0, 2] == pytest.approx(-1.0)
    assert s[0, 3] == pytest.approx(1 / math.sqrt(2)) and s[2, 3] == pytest.approx(-1 / math.sqrt(2))
    assert s[0, 4] == 0.0 and s[4, 4] == 0.0  # a zero gradient pulls nowhere


def test_aligned_representatives_score_high_and_opposed_ones_low() -> None:
    """The same arch on the same batch: its loss scaled by 3 pulls the op's weights the same way (cosine 1), its
    negated loss the opposite way (cosine -1); the clusters of the first pair share, those of the second split."""
    model = make_model()
    arch = model.space.arch([1, 1, 1])  # nor_conv_3x3 everywhere
    xb = batch()
    grads = [representative_gradients(model.supernet, model.sharing, arch, 1, xb,
                                       lambda logits, y, w=w: w * F.cross_entropy(logits, y))[0][2]
             for w in (1.0, 3.0, -1.0)]
    s = consistency_scores(torch.stack(grads))
    assert s[0, 1] == pytest.approx(1.0, abs=1e-9) and s[0, 2] == pytest.approx(-1.0, abs=1e-9)
    assert group_clusters(s[:2, :2], [5, 3], 0.0, 2) == [0, 0]
    assert group_clusters(s[::2, ::2], [5, 3], 0.0, 2) == [0, 1]
    # copies: the larger group keeps the copy its members ran; the other takes a free one, split from the parent
    assert assign_copies([0, 1], [5, 3], [0, 0], set(), 2) == ([0, 1], [(0, 1)])
    assert assign_copies([0, 0], [5, 3], [0, 1], set(), 2) == ([0, 0], [])  # merged: both on the larger's copy
    assert assign_copies([1, 0], [3, 5], [1, 0], set(), 2) == ([1, 0], [])  # already apart: no weights move
    assert assign_copies([0, 1], [5, 3], [0, 0], {1}, 2) == ([0, 0], [])  # no free copy: keep sharing


def test_representative_gradients_leave_the_supernet_as_it_was() -> None:
    model = make_model()
    before = {k: v.clone() for k, v in model.supernet.state_dict().items()}
    representative_gradients(model.supernet, model.sharing, model.space.arch([1, 0, 1]), 0, batch(),
                             F.cross_entropy)
    after = model.supernet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running statistics included
    assert all(p.grad is None for p in model.supernet.parameters())


def test_archs_in_different_clusters_touch_disjoint_weight_tensors_at_the_layer() -> None:
    model = make_model()
    space, state = model.space, model.sharing
    x, _ = batch()

    def touched(arch, layer: int) -> set[str]:
        model.supernet.zero_grad(set_to_none=True)
        model.supernet(x, arch).sum().backward()
        names = {n for n, p in model.supernet.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
                 and (n.startswith(f"body.{layer}.") or n.startswith(f"weight_copies.body/{layer}/"))}
        model.supernet.zero_grad(set_to_none=True)
        return names

    def pair(layer: int, op: int):
        rows = [space.arch(r.long().tolist()) for r in state.samples[layer, op]]
        labels = state.labels[layer, op]
        return rows[int((labels == 0).nonzero()[0])], rows[int((labels == 1).nonzero()[0])]

    split_everything(model)
    a, b = pair(1, 1)  # two archs with nor_conv_3x3 at layer 1, in different clusters there
    assert a.indices[1] == b.indices[1] == 1
    assert int(state.clusters(a)[1]) != int(state.clusters(b)[1])
    ta, tb = touched(a, 1), touched(b, 1)
    assert ta and tb and ta.isdisjoint(tb)
    state.table.zero_()  # one shared copy again: the same two archs now touch the same tensors
    assert touched(a, 1) == touched(b, 1)


def test_a_split_copy_starts_from_its_parent_and_loses_its_momentum(tmp_path: Path) -> None:
    model = make_model()
    part = "body.1.candidates.nor_conv_3x3"
    copies = weight_copies(model.supernet)[part]
    with torch.no_grad():
        for p in copies.copy_module(1).parameters():
            p.add_(1.0)  # copy 1 drifted from its parent
    result = infer_sharing_state(model.supernet, model.sharing, batch(), model.seed, 32, threshold=2.0)
    assert (part, 0, 1) in result.splits
    apply_inference(model.supernet, model.sharing, result)
    for p0, p1 in zip(copies.copy_module(0).parameters(), copies.copy_module(1).parameters(), strict=True):
        assert torch.equal(p0, p1)
    opt = optimizer(model.parameters())
    for p in model.parameters():
        opt.state[p] = {"momentum_buffer": torch.ones_like(p)}
    model.trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    model.trainer.strategy._lightning_optimizers = []
    model.trainer.strategy.optimizers = [opt]
    model._clear_optimizer_state([(part, 1)])
    cleared = {id(p) for p in copies.copy_module(1).parameters()}
    assert all((id(p) in cleared) == (p not in opt.state) for p in model.parameters())


# --- every space -----------------------------------------------------------------------------------------------
def test_the_sites_are_the_blocks_that_run_each_decisions_op(small_space: SearchSpace) -> None:
    """The parts the picker names for an arch are exactly the candidates with weights that its forward runs."""
    net = small_space.build_supernet()
    state = SharingState(small_space, net, 2)
    ran: set[str] = set()
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: ran.add(f"{name}.candidates.{args[1]}"))
             for name, m in net.named_modules() if isinstance(m, ChoiceBlock)]
    x = torch.randn(2, 1, 8, 8)
    for seed in range(4):
        arch = small_space.sample(torch.Generator().manual_seed(seed))
        ran.clear()
        with torch.no_grad():
            net.eval()(x, arch)
        named = {part for _, _, part, _ in state.site_copies(arch)}
        assert named == {p for p in ran if p in set(state.parts)}, seed
    for h in hooks:
        h.remove()


# --- checkpoints, resume, diagnostics ------------------------------------------------------------------------------
class StepLog(pl.Callback):
    def __init__(self) -> None:
        self.steps: list[tuple[int, str]] = []

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append((trainer.global_step - 1, str(pl_module.current_arch)))


def update_callback() -> SharingStateUpdate:
    return SharingStateUpdate(warmup_epochs=1, every_n_epochs=1, num_archs=16, threshold=0.5)


def sharing_equal(a: DCNAS, b: DCNAS) -> None:
    sa, sb = a.sharing.state_dict(), b.sharing.state_dict()
    for k, v in sa.items():
        assert torch.equal(v, sb[k]) if isinstance(v, torch.Tensor) else v == sb[k], k


@pytest.mark.slow
@pytest.mark.parametrize("where", ["epoch_end_after_reclustering", "mid_epoch"])
def test_resume_restores_the_sharing_state_exactly(tmp_path: Path, where: str) -> None:
    """3 epochs of 3 steps; inferences after epochs 1, 2 and 3. Resumed from the checkpoint taken at the end of
    epoch 1 right after the first inference (ModelCheckpoint runs after SharingStateUpdate), or from step 5."""
    pl.seed_everything(0)
    full, full_log = make_model(), StepLog()
    trainer(tmp_path / "full", 3, [update_callback(), full_log], enable_checkpointing=False).fit(
        full, datamodule=make_data())
    assert full.sharing.rounds == 3 and bool(full.sharing.table.any()), "no split: the test would prove little"

    pl.seed_everything(0)
    if where == "mid_epoch":
        ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
        start = 5
    else:
        ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, save_top_k=-1,
                                            save_on_train_epoch_end=True)
        start = 3
    first = make_model()
    trainer(tmp_path / "a", 3, [update_callback(), ckpt]).fit(first, datamodule=make_data())
    (path,) = (tmp_path / "ckpt").glob(f"*step={start}.ckpt")
    saved = torch.load(path, weights_only=False)["nas_sharing_state"]
    assert saved["rounds"] == 1

    pl.seed_everything(1)
    resumed, resumed_log = make_model(), StepLog()
    trainer(tmp_path / "b", 3, [update_callback(), resumed_log]).fit(resumed, datamodule=make_data(),
                                                                      ckpt_path=str(path))
    assert [s for s, _ in resumed_log.steps] == list(range(start, 9))
    assert full_log.steps[start:] == resumed_log.steps
    sharing_equal(full, resumed)
    full_state, resumed_state = full.supernet.state_dict(), resumed.supernet.state_dict()
    for name, p in full_state.items():
        torch.testing.assert_close(resumed_state[name], p, rtol=1e-5, atol=1e-6, msg=name)

    other = make_model(num_copies=3)  # copies laid out otherwise
    with pytest.raises(ValueError, match="num_copies=2"):
        other.on_load_checkpoint(torch.load(path, weights_only=False))


def test_diagnostics_files_and_the_parameter_count_as_copies_split(tmp_path: Path) -> None:
    model = make_model()
    before = model.copies_in_use_params()
    assert before == model.copy_count.supernet
    result = infer_sharing_state(model.supernet, model.sharing, batch(), model.seed, 32, threshold=2.0)
    apply_inference(model.supernet, model.sharing, result)
    in_use = model.copies_in_use_params()
    metrics = write_sharing_diagnostics(tmp_path, model.sharing, result, model.copy_count, in_use, epoch=1)
    split_numel = sum(numel for part, (m, numel) in model.copy_count.parts.items()
                      if model.sharing.copies_in_use()[part] == 2)
    assert in_use == before + split_numel and in_use <= model.copy_count.total
    assert metrics["dcnas/params_in_use"] == in_use and metrics["dcnas/splits"] == len(result.splits)
    rows = (tmp_path / "consistency_scores.csv").read_text().splitlines()
    assert rows[0].startswith("round,epoch,layer") and len(rows) == 1 + 3 * len(result.records)  # K=2: 3 pairs
    assert (tmp_path / "params.csv").read_text().splitlines()[1].startswith(f"1,1,{in_use},")
    state_csv = list(csv.DictReader((tmp_path / "sharing_state.csv").open()))
    clustered = model.sharing.clustered.nonzero().tolist()
    assert clustered and len(state_csv) == sum(len(model.sharing.layout.reach[d]) for d, _ in clustered) * 2
    for r in state_csv:  # every row is the table's entry
        d, j, k = int(r["layer"]), int(r["site"]), int(r["cluster"])
        o = model.sharing.choices[d].index(r["op"])
        assert int(r["copy"]) == int(model.sharing.table[d, j, o, k]) and r["round"] == "1"
    pngs = sorted(p.name for p in tmp_path.glob("sharing_state_layer*.png"))
    assert pngs == [f"sharing_state_layer{d}.png" for d in range(3)]
    assert (tmp_path / pngs[0]).read_bytes()[:4] == b"\x89PNG"
    site = (1, 0, 1)  # layer 1, its one site, nor_conv_3x3: both clusters on copy 1 use one copy, not two
    model.sharing.table[site] = torch.tensor([1, 1])
    assert model.sharing.copies_in_use()["body.1.candidates.nor_conv_3x3"] == 1
    model.sharing.table[site] = torch.tensor([1, 0])
    assert model.sharing.copies_in_use()["body.1.candidates.nor_conv_3x3"] == 2
    # the next round keeps round 1's rows; a redone round 1 (after a resume) replaces them
    write_sharing_diagnostics(tmp_path, model.sharing, result, model.copy_count, in_use, epoch=1)
    assert (tmp_path / "params.csv").read_text().count("\n") == 2


@pytest.mark.slow
def test_two_ddp_ranks_infer_and_hold_the_same_sharing_state(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(DDP_SCRIPT), str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["rounds"] == r1["rounds"] == 2
    assert r0["splits"] > 0, "nothing split: the comparison would prove little"
    for key in ("local_tables", "local_scores"):  # each rank's own inference, before rank 0's is broadcast
        for a, b in zip(r0[key], r1[key], strict=True):
            assert torch.equal(a, b), key
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]) if isinstance(v, torch.Tensor) else v == r1["state"][k], k
    assert r0["archs"] == r1["archs"] and r0["partners"] == r1["partners"]
    rows = (tmp_path / "diag" / "params.csv").read_text().splitlines()  # rank 0 wrote one row per round
    assert [r.split(",")[:2] for r in rows[1:]] == [["1", "1"], ["2", "2"]]
    for name, p in r0["params"].items():
        torch.testing.assert_close(r1["params"][name], p, rtol=0, atol=0, msg=name)
