"""PC-NAS (arXiv:1910.02543): the pool shrinks as Algorithm 2 says (hand-worked, and on layers with
different choice counts), training draws every pool member equally often, the latency limit holds for
every completion, potentials (Algorithm 1) equal a plain per-completion evaluation and draw their batches
afresh from the whole val split, DDP ranks agree, a resumed run equals an uninterrupted one, and a short
fit writes the final pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

import nas_lightning.methods.pcnas as pcnas_module
from callbacks.pool_shrinking import PoolShrinking
from nas_lightning.data import SyntheticDataModule
from nas_lightning.evaluation import evaluate_archs
from nas_lightning.latency import FlopsProxy, LatencyModel, LatencyTable
from nas_lightning.methods import SPOS
from nas_lightning.methods.pcnas import PCNAS
from nas_lightning.methods.standalone import StandaloneModule
from nas_lightning.samplers.pool import LatencyLimit, PartialModelPool, PoolSampler
from nas_lightning.search.pool_shrink import next_pool, shrink_due, shrink_record
from nas_lightning.search.potential import PotentialResult, draw_completions, potentials
from nas_lightning.spaces import MOBILENET_SMALL_OPS, ChainSpace, MobileNetSpace, NB201Space
from nas_lightning.utils.arch_file import read_arch_file
from nas_lightning.utils.distributed import step_generator

OPS3 = ("nor_conv_1x1", "nor_conv_3x3", "skip_connect")


def chain3(**kw) -> ChainSpace:
    return ChainSpace(num_layers=3, ops=OPS3, C=4, num_classes=4, in_channels=1, input_size=8, **kw)


class OpCost(LatencyModel):
    """Additive latency: nor_conv_1x1 = 1, nor_conv_3x3 = 3, skip_connect = 0 per layer."""

    unit = "units"
    cost = {"nor_conv_1x1": 1.0, "nor_conv_3x3": 3.0, "skip_connect": 0.0}

    def __init__(self, space: ChainSpace) -> None:
        self.space = space

    def __call__(self, arch) -> float:
        return sum(self.cost[c] for c in self.space.choice_names(arch))


# --- (a) Algorithm 2 on a hand-worked case ----------------------------------------------------------

def test_pool_shrinks_as_algorithm_2_on_a_hand_worked_table() -> None:
    """3 layers x 3 ops, P = 2, potentials from a table. By hand:
    shrink 0: (0,)=50 (1,)=70 (2,)=60                      -> keep (1,), (2,)
    shrink 1: (1,0)=55 (1,1)=72 (1,2)=dropped (2,0)=72 (2,1)=40 (2,2)=61
              tie 72: (1,1) is extended from the better member -> keep (1,1), (2,0)
    shrink 2: (1,1,0)=80 (1,1,1)=65 (1,1,2)=74 (2,0,0)=90 (2,0,1)=10 (2,0,2)=74 -> keep (2,0,0), (1,1,0)
    """
    table = {(0,): 50, (1,): 70, (2,): 60,
             (1, 0): 55, (1, 1): 72, (1, 2): None, (2, 0): 72, (2, 1): 40, (2, 2): 61,
             (1, 1, 0): 80, (1, 1, 1): 65, (1, 1, 2): 74, (2, 0, 0): 90, (2, 0, 1): 10, (2, 0, 2): 74}
    space, pool = chain3(), PartialModelPool()
    expected_candidates = [[(0,), (1,), (2,)],
                           [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)],
                           [(1, 1, 0), (1, 1, 1), (1, 1, 2), (2, 0, 0), (2, 0, 1), (2, 0, 2)]]
    expected_pools = [[(1,), (2,)], [(1, 1), (2, 0)], [(2, 0, 0), (1, 1, 0)]]
    for k in range(3):
        assert shrink_due(1 + 2 * k, pool.num_fixed, 3, 1, 2) and not shrink_due(2 * k, pool.num_fixed, 3, 1, 2)
        cands = pool.candidates(space)
        assert cands == expected_candidates[k]
        kept, result = next_pool(pool.members, space, lambda c: PotentialResult(
            c, [table[x] for x in c], [[] for _ in c], [[] for _ in c], 0, 0), 2)
        assert result.candidates == cands
        record = shrink_record(pool, space, result, kept, epoch=1 + 2 * k)
        pool.advance(kept, record)
        assert pool.members == expected_pools[k] and record["layer"] == k
    assert pool.is_complete(space) and not shrink_due(100, 3, 3, 1, 2)
    assert [r["kept"] for r in pool.history] == [[list(m) for m in p] for p in expected_pools]
    restored = PartialModelPool()
    restored.load_state_dict(json.loads(json.dumps(pool.state_dict())))  # plain JSON state
    assert restored.members == pool.members and restored.history == pool.history


def test_extend_gives_each_layer_its_own_choices_when_choice_counts_differ() -> None:
    """MobileNet layers that open a stage have no Identity (9 choices), the others have it (10), as in the
    paper's space: extending layer l must use layer l's choices, not a neighbour's."""
    space = MobileNetSpace("small", width_mult=0.25, num_classes=4, in_channels=1, input_size=8, stem_stride=1,
                           depths=[1, 2, 1, 1, 1, 1])
    sizes = [len(d.choices) for d in space.decisions]
    assert sizes == [9, 9, 10, 9, 9, 9, 9]
    # Additive table (ms): Identity is free, the MBConvs cost 1..9 in registry order.
    cost = {op: 0.0 if op == "Identity" else 1.0 + MOBILENET_SMALL_OPS.index(op) for op in MOBILENET_SMALL_OPS}
    table = LatencyTable.from_dict(space, {"metadata": {"space": space.config()}, "fixed": {"stem": 0.5},
                                           "layers": [{op: cost[op] for op in d.choices} for d in space.decisions]})
    pool, generator = PartialModelPool(), torch.Generator().manual_seed(0)
    for layer, size in enumerate(sizes):
        cands = pool.candidates(space)
        assert cands == [(*m, c) for m in (pool.members or [()]) for c in range(size)]
        assert {space.decisions[layer].choices[c[layer]] for c in cands} == set(space.decisions[layer].choices)
        draws = draw_completions(space, cands, 3, 1, generator, LatencyLimit(table, 60.0))
        assert not draws.dropped
        assert all(a.indices[: layer + 1] == c for c, archs in zip(cands, draws.completions) for a in archs)
        kept, result = next_pool(pool.members, space, lambda c: PotentialResult(
            c, [float((7 * sum(x) + len(x)) % 11) for x in c], [[] for _ in c], [[] for _ in c], 0, 0), 2)
        record = shrink_record(pool, space, result, kept, epoch=layer + 1)
        assert record["decision"] == space.decisions[layer].name
        pool.advance(kept, record)
    assert pool.is_complete(space) and [len(r["candidates"]) for r in pool.history] == [9, 18, 20, 18, 18, 18, 18]
    assert all(space.arch(m) for m in pool.members)

    # The cheapest completion takes each free layer's own cheapest choice: Identity (free) only on layer 2.
    limit = LatencyLimit(table, 60.0)
    for prefix in [(), (3,), (3, 8), (3, 8, 9)]:
        free = sum(min(cost[op] for op in d.choices) for d in space.decisions[len(prefix):])
        fixed = sum(cost[space.decisions[d].choices[i]] for d, i in enumerate(prefix))
        assert limit.cheapest_completion(space, prefix)[1] == pytest.approx(0.5 + fixed + free)


# --- (b) the latency limit ----------------------------------------------------------------------------

def test_every_sampled_and_potential_completion_meets_the_limit() -> None:
    space = chain3()
    sampler = PoolSampler(space, seed=0, max_latency=4.0, latency_model=OpCost)
    model = sampler.limit.model
    sampler.pool.members = [(1,)]  # nor_conv_3x3 fixed: the other two layers may add at most 1
    archs = [sampler.sample(t) for t in range(150)]
    assert all(model(a) <= 4.0 for a in archs)
    # Uniform over the valid completions: exactly (1,0,2), (1,2,0), (1,2,2), each drawn.
    assert {a.indices for a in archs} == {(1, 0, 2), (1, 2, 0), (1, 2, 2)}
    assert [sampler.sample(t) for t in range(5)] == archs[:5]  # a function of the step alone

    limit = LatencyLimit(model, 4.0)
    draws = draw_completions(space, [(0,), (1,), (2,)], 40, 3, torch.Generator().manual_seed(0), limit)
    assert all(len(c) == 40 for c in draws.completions) and not draws.dropped
    assert all(model(a) <= 4.0 for c in draws.completions for a in c)
    assert all(a.indices[0] == i for i, c in enumerate(draws.completions) for a in c)
    assert draws.batch_ids[0] == [j % 3 for j in range(40)]


def test_training_draws_every_pool_member_equally_often_whatever_its_share_of_valid_completions() -> None:
    """Section 3.3: a pool member is drawn uniformly, then completed. Under max_latency 3 the members
    nor_conv_1x1 / nor_conv_3x3 / skip_connect have 4, 1 and 6 of 9 completions within the limit; drawing
    member and completion together until the limit holds would train them 36%, 9% and 55% of the steps."""
    space, members, steps = chain3(), [(0,), (1,), (2,)], 3000
    limited = PoolSampler(space, seed=3, max_latency=3.0, latency_model=OpCost)
    free = PoolSampler(space, seed=3, latency_model=OpCost)
    limited.pool.members = free.pool.members = members
    archs = [limited.sample(t) for t in range(steps)]
    assert all(limited.limit.ok(a) for a in archs)
    # Exact: the member of step t is a function of (seed, t) alone, the same with and without the limit.
    assert [a.indices[:1] for a in archs] == [free.sample(t).indices[:1] for t in range(steps)]
    # And uniform: chi-square with 2 degrees of freedom below its 0.1% quantile (13.8).
    counts = [sum(a.indices[:1] == m for a in archs) for m in members]
    assert sum((c - steps / 3) ** 2 / (steps / 3) for c in counts) < 13.8, counts
    # Each member's completion is uniform over its own valid completions: every one of them is drawn.
    valid = {m: {a.indices for a in space.enumerate() if a.indices[:1] == m and limited.limit.ok(a)} for m in members}
    assert [len(valid[m]) for m in members] == [4, 1, 6]
    assert all({a.indices for a in archs if a.indices[:1] == m} == valid[m] for m in members)
    # A member none of whose completions meets the limit is named in the error.
    limited.pool.members = [(2,), (1,)]
    limited.limit.max_latency = 2.0
    with pytest.raises(RuntimeError, match=r"pool member 2 of 2, \[layer0=nor_conv_3x3\], met max_latency=2.0"):
        for t in range(50):
            limited.sample(t)


def test_infeasible_candidates_are_dropped_and_an_impossible_limit_is_a_clear_error() -> None:
    space = chain3()
    limit = LatencyLimit(OpCost(space), 4.0)
    with pytest.warns(UserWarning, match=r"dropped candidate \[layer0=nor_conv_3x3, layer1=nor_conv_3x3\]"):
        draws = draw_completions(space, [(1, 0), (1, 1), (1, 2)], 10, 2, torch.Generator().manual_seed(0), limit)
    assert set(draws.dropped) == {1} and draws.completions[1] == []  # its cheapest completion costs 6
    with pytest.raises(ValueError, match=r"max_latency=-1.0.*raise max_latency above -1.0"), pytest.warns(UserWarning):
        draw_completions(space, [(0,), (1,), (2,)], 10, 2, torch.Generator(), LatencyLimit(OpCost(space), -1.0))
    sampler = PoolSampler(space, max_latency=2.0, latency_model=OpCost, max_tries=20)
    sampler.pool.members = [(1,)]
    with pytest.raises(RuntimeError, match="relax max_latency"):
        sampler.sample(0)


def test_cheapest_completion_is_the_exact_minimum_for_flops() -> None:
    space = chain3()
    limit = LatencyLimit(FlopsProxy(space), 0.0)
    for prefix in [(), (1,), (0, 1)]:
        brute = min(limit.model(a) for a in space.enumerate() if a.indices[: len(prefix)] == prefix)
        assert limit.cheapest_completion(space, prefix)[1] == brute


# --- Algorithm 1: batched potentials equal a plain loop -----------------------------------------------

def test_potentials_equal_a_plain_per_completion_evaluation() -> None:
    torch.manual_seed(0)
    space = NB201Space(C=4, N=1, num_classes=5, in_channels=1, input_size=8)
    supernet = space.build_supernet()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 5, (16,), generator=g)) for _ in range(3)]
    batches.append((torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 5, (8,), generator=g)))  # a short one
    cands = [(0, 3), (3, 3), (2, 4, 1, 0, 3, 3)]  # the last is a full arch: every completion repeats it
    result = potentials(supernet, cands, batches, 10, step_generator(0, "potential", 0),
                        LatencyLimit(FlopsProxy(space)), max_batches_per_forward=3)
    assert result.num_units < 30  # the full arch's repeats are evaluated once per batch
    for c, completions, accs in zip(cands, result.completions, result.accuracies):
        assert len(completions) == 10 and all(a.indices[: len(c)] == c for a in completions)
        plain = [float(evaluate_archs(supernet, [a], [batches[j % 4]]).accuracy[0]) for j, a in enumerate(completions)]
        assert accs == pytest.approx(plain, abs=1e-9)
    assert result.potentials == pytest.approx([sum(a) / 10 for a in result.accuracies])


# --- fits: short run to a full arch, crash-and-resume, DDP --------------------------------------------

def make_model(**kw) -> PCNAS:
    return PCNAS(chain3(), seed=1, optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), pool_size=2,
                 num_completions=12, num_eval_archs=0, num_val_batches=2, **kw)


def shrinking(out: Path) -> PoolShrinking:
    return PoolShrinking(warmup_epochs=1, interval_epochs=1, output_dir=str(out))


def make_data() -> SyntheticDataModule:
    return SyntheticDataModule(num_classes=4, in_channels=1, image_size=8, num_train=160, num_test=32, batch_size=16,
                               val_fraction=0.2, seed=0, noise=0.3)


def fit(model: PCNAS, root: Path, max_epochs: int, callbacks=(), ckpt_path: str | None = None) -> pl.Trainer:
    t = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, default_root_dir=root,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                   enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
                   callbacks=list(callbacks))
    t.fit(model, datamodule=make_data(), ckpt_path=ckpt_path)
    return t


def test_latency_table_file_errors_say_what_to_do(tmp_path: Path) -> None:
    space = MobileNetSpace("small", width_mult=0.25, num_classes=4, in_channels=1, input_size=8, depths=[1] * 6)
    with pytest.raises(FileNotFoundError, match="nas-lightning measure-latency --space"):
        PCNAS(space, sampler=partial(PoolSampler, latency_table=str(tmp_path / "missing.json")))
    with pytest.raises(ValueError, match="not both"):
        PoolSampler(space, latency_table=str(tmp_path / "missing.json"), latency_model=FlopsProxy)


def test_pool_shrinking_needs_a_pool_sampler(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="PoolShrinking needs a SupernetModule whose sampler is a PoolSampler"):
        fit(SPOS(chain3()), tmp_path, 1, callbacks=[PoolShrinking()])


def test_pcnas_without_its_callback_fails_at_setup_naming_it(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"PCNAS needs the callback\(s\) PoolShrinking.*callbacks.PoolShrinking"):
        fit(make_model(), tmp_path, 1)


def test_every_shrink_scores_on_batches_drawn_afresh_from_the_whole_val_split(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Algorithm 1 scores each completion on a random validation batch: each shrink draws its B batches
    from the whole supernet-val split (here 2 batches, B = 1), seeded by (seed, shrink), not the first B."""
    seen: list[list] = []

    def recording(supernet, candidates, batches, *args, **kwargs) -> PotentialResult:
        seen.append(list(batches))
        return potentials(supernet, candidates, batches, *args, **kwargs)

    monkeypatch.setattr(pcnas_module, "potentials", recording)
    model = PCNAS(chain3(), seed=1, optimizer=lambda p: torch.optim.SGD(p, lr=0.1), pool_size=2, num_completions=6,
                  num_eval_archs=0, num_val_batches=1)
    data = fit(model, tmp_path, 4, [shrinking(tmp_path)]).datamodule
    assert len(seen) == 3 and all(len(b) == 1 for b in seen)

    def images(batches) -> set[tuple[float, ...]]:
        return {tuple(x.flatten().tolist()) for b in batches for x in b[0]}

    split = images(data.val_dataloader())
    used = [images(b) for b in seen]
    assert len(split) == 32 and all(u <= split for u in used)  # supernet-val images only
    assert len({frozenset(u) for u in used}) == 3  # a fresh batch every shrink
    assert len(set.union(*used)) > len(images([next(iter(data.val_dataloader()))]))  # not only the first batch
    # A function of (seed, shrink) alone, whatever the weights: a resumed run and every DDP rank draw them again.
    for k, batches in enumerate(seen):
        again = model.potential_batches("potential", k)
        assert len(again) == 1 and all(torch.equal(a, b) for a, b in zip(batches[0], again[0]))


@pytest.mark.slow
def test_fit_reaches_a_full_arch_and_a_resumed_run_equals_the_uninterrupted_one(tmp_path: Path) -> None:
    pl.seed_everything(0)
    full = make_model()
    fit(full, tmp_path / "full", 4, [shrinking(tmp_path / "full")])  # T_w + L * T_i = 1 + 3 * 1 epochs
    space = full.space
    assert full.pool.is_complete(space) and len(full.pool.history) == 3
    assert [r["epoch"] for r in full.pool.history] == [1, 2, 3]
    # The kept members are the top-P candidates of every shrink, best first.
    for r in full.pool.history:
        ranked = sorted(range(len(r["candidates"])), key=lambda i: (-r["potentials"][i], i))
        assert r["kept"] == [r["candidates"][i] for i in ranked[:2]]
    rows = json.loads((tmp_path / "full" / "final_pool.json").read_text())
    assert [r["arch"] for r in rows] == [str(space.arch(m)) for m in full.pool.members]
    assert rows[0]["potential"] >= rows[1]["potential"] and "completed" not in rows[0]
    assert rows[0]["flops"] == space.flops(space.decode(rows[0]["arch"])) and rows[0]["latency_unit"] == "MFLOPs"
    assert [str(a) for a in read_arch_file(tmp_path / "full" / "final_pool.json", space)] == [r["arch"] for r in rows]
    assert StandaloneModule(space, arch=rows[0]["arch"]).arch == space.decode(rows[0]["arch"])
    csv_lines = (tmp_path / "full" / "pool_history.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 3 + 6 + 6

    # Killed after the first shrink (the epoch-end checkpoint holds it), then resumed.
    pl.seed_everything(0)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    first = make_model()
    fit(first, tmp_path / "a", 1, [ckpt, shrinking(tmp_path / "a")])
    assert len(first.pool.history) == 1
    partial = json.loads((tmp_path / "a" / "final_pool.json").read_text())
    assert "completed" in partial[0] and all(space.decode(r["arch"]).indices[:1] == tuple(r["partial"])
                                             for r in partial)
    pl.seed_everything(123)
    resumed = make_model()
    assert resumed.pool.members == []
    fit(resumed, tmp_path / "b", 4,
        [pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt2"), shrinking(tmp_path / "b")],
        ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed.pool.members == full.pool.members
    assert [(r["epoch"], r["candidates"], r["kept"]) for r in resumed.pool.history] == \
           [(r["epoch"], r["candidates"], r["kept"]) for r in full.pool.history]
    for a, b in zip(resumed.pool.history, full.pool.history):
        assert a["potentials"] == pytest.approx(b["potentials"], abs=1e-6)
    assert [r["arch"] for r in json.loads((tmp_path / "b" / "final_pool.json").read_text())] == \
           [r["arch"] for r in rows]


@pytest.mark.slow
def test_ddp_ranks_hold_the_same_pool_and_split_the_completions(tmp_path: Path) -> None:
    script = Path(__file__).parent / "scripts" / "ddp_pcnas.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["archs"] == r1["archs"] and len(set(r0["archs"])) > 1
    assert r0["pool"] == r1["pool"] and len(r0["pool"]["pool"]["history"]) == 3
    # Each rank evaluated a share of the distinct (arch, batch) pairs; together, all of them.
    assert len(r0["shares"]) == 3
    for (n0, total0), (n1, total1) in zip(r0["shares"], r1["shares"]):
        assert total0 == total1 and n0 + n1 == total0 and 0 < n0 < total0
    # One rank alone computes the potentials the two ranks computed together.
    assert r0["alone"] == pytest.approx(r0["pool"]["pool"]["history"][-1]["potentials"], abs=1e-9)
    assert len(set(r0["pool"]["pool"]["history"][0]["potentials"])) > 1, "all potentials tied: the test proves little"


@pytest.mark.slow
def test_pcnas_on_the_mobilenet_space_under_a_latency_table(tmp_path: Path) -> None:
    """The paper's setting in miniature: MobileNet layers (9 choices, or 10 with Identity) shrunk one at a
    time under a hard limit from a latency lookup table; every arch of the final pool meets the limit."""
    space = MobileNetSpace("small", width_mult=0.25, num_classes=4, in_channels=1, input_size=8, stem_stride=1,
                           depths=[1, 2, 1, 1, 1, 1])
    # A hand-made table (ms): the cost of an op grows with its expansion ratio and kernel, Identity is free.
    cost = {op: 0.0 if op == "Identity" else float(op.split("_")[1]) * int(op.split("_")[2]) / 9
            for op in MOBILENET_SMALL_OPS}
    table = {"metadata": {"space": space.config()}, "fixed": {"stem": 0.5, "head": 0.5},
             "layers": [{op: cost[op] for op in d.choices} for d in space.decisions]}
    (tmp_path / "table.json").write_text(json.dumps(table))
    latency = LatencyTable.from_dict(space, table)
    limit = 8.0
    model = PCNAS(space, partial(PoolSampler, max_latency=limit, latency_table=str(tmp_path / "table.json")),
                  seed=0, optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), pool_size=2,
                  num_completions=4, num_eval_archs=0, num_val_batches=1)
    fit(model, tmp_path, max_epochs=1 + space.num_decisions, callbacks=[shrinking(tmp_path / "pcnas")])
    rows = json.loads((tmp_path / "pcnas" / "final_pool.json").read_text())
    assert len(rows) == 2
    for row in rows:
        arch = space.decode(row["arch"])
        assert latency(arch) <= limit and row["latency"] == pytest.approx(latency(arch))
