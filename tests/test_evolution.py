"""SPOS evolutionary search: optimum, constraints (FLOPs, params, latency), determinism, resume, tiny spaces,
export, and the resumable run with its files (``EvolutionRun``), which resumes only the state of its own
checkpoint and settings; the last test runs the ``EvolutionSearch`` callback under ``validate``."""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from callbacks import EvolutionSearch
from nas_lightning.cli import NASLightningCLI
from nas_lightning.data import SyntheticDataModule
from nas_lightning.latency import FlopsProxy, LatencyModel, LatencyTable
from nas_lightning.methods import SPOS
from nas_lightning.search import (
    EvolutionConfig,
    EvolutionResult,
    EvolutionRun,
    evolution_search,
    export_top_archs,
    format_top_archs,
)
from nas_lightning.search.evolution import EvolutionStateMismatch, build_latency_model
from nas_lightning.search.evolution_run import search_provenance, weights_sha256
from nas_lightning.spaces import Arch, ChainSpace, MobileNetSpace, NB201Space, SearchSpace
from nas_lightning.utils.atomic import atomic_write_json, strict_json

# ChainSpace ops in order: nor_conv_1x1, nor_conv_3x3, skip_connect, avg_pool_3x3.
OP_VALUE = (2, 3, 0, 1)  # per-layer score digit of each op: conv3x3 best, then conv1x1
OP_FLOPS = (3, 9, 0, 1)  # analytic cost: the good ops are the expensive ones


class AnalyticChainSpace(ChainSpace):
    """ChainSpace with a closed-form cost, so tests can brute-force 256 archs without building networks."""

    def cost(self, arch: Arch) -> tuple[int, int]:
        flops = 1 + sum(OP_FLOPS[i] for i in arch.indices)
        return 10 * flops, flops


def score(arch: Arch) -> float:
    # Base-4 number with permuted digits: every arch has a distinct score, the optimum is all conv3x3.
    return float(sum(OP_VALUE[i] * 4**layer for layer, i in enumerate(arch.indices)))


class Spy:
    """Batched score function that records every call."""

    def __init__(self) -> None:
        self.calls: list[list[Arch]] = []

    def __call__(self, archs: list[Arch]) -> list[float]:
        self.calls.append(list(archs))
        return [score(a) for a in archs]

    @property
    def all_archs(self) -> list[Arch]:
        return [a for call in self.calls for a in call]


# Small enough that the search sees well under half of the 256 archs: finding the optimum is real work.
SMALL = dict(population=16, generations=6, topk=4, num_mutation=6, num_crossover=6, mutation_prob=0.25)


@pytest.fixture
def space() -> AnalyticChainSpace:
    return AnalyticChainSpace(num_layers=4)


def test_defaults_follow_spos():
    c = EvolutionConfig()
    assert (c.population, c.generations, c.topk, c.num_mutation, c.num_crossover, c.mutation_prob) == (
        50, 20, 10, 25, 25, 0.1)


def test_finds_global_optimum_with_batched_unique_calls(space):
    spy = Spy()
    config = EvolutionConfig(**SMALL, seed=0)
    result = evolution_search(space, spy, config, progress=False)

    optimum = max(space.enumerate(), key=score)
    assert optimum.indices == (1, 1, 1, 1)
    assert result.top[0] == (optimum, score(optimum))
    assert len(result.top) == config.topk
    assert [s for _, s in result.top] == sorted((s for _, s in result.top), reverse=True)
    # top-k is the k best of everything scored
    assert result.top == sorted(result.scores.items(), key=lambda kv: -kv[1])[: config.topk]

    assert 1 <= len(spy.calls) <= config.generations + 1
    seen = spy.all_archs
    assert len(seen) == len(set(seen)), "an arch was scored twice"
    assert len(seen) < space.num_archs // 2, "the search enumerated the space instead of searching it"
    assert set(result.scores) == set(seen)
    assert all(result.scores[a] == score(a) for a in seen)
    assert len(spy.calls[0]) == config.population

    hist = result.history
    assert [h["generation"] for h in hist] == list(range(config.generations + 1))
    assert [h["num_evaluated"] for h in hist] == sorted(h["num_evaluated"] for h in hist)
    assert hist[-1]["num_evaluated"] == len(seen)
    assert all(b["best_score"] >= a["best_score"] for a, b in itertools.pairwise(hist))
    assert hist[-1]["best_score"] == score(optimum)


def test_children_come_from_topk_not_only_random(space):
    # With no random refill (num_mutation + num_crossover == population) the search still finds the optimum.
    spy = Spy()
    config = EvolutionConfig(population=12, generations=8, topk=4, num_mutation=6, num_crossover=6,
                             mutation_prob=0.25, seed=1)
    result = evolution_search(space, spy, config, progress=False)
    assert result.top[0][0].indices == (1, 1, 1, 1)
    assert len(spy.all_archs) == len(set(spy.all_archs))


def test_constraint_is_checked_before_scoring(space):
    max_flops = 21
    spy = Spy()
    config = EvolutionConfig(**{**SMALL, "generations": 10}, max_flops=max_flops, seed=0)
    result = evolution_search(space, spy, config, progress=False)

    assert spy.all_archs, "nothing was scored"
    assert all(space.flops(a) <= max_flops for a in spy.all_archs)
    feasible = [a for a in space.enumerate() if space.flops(a) <= max_flops]
    assert 0 < len(feasible) < space.num_archs
    best_feasible = max(feasible, key=score)
    # the unconstrained optimum is far over the limit; the best feasible one is unique
    assert space.flops(max(space.enumerate(), key=score)) > max_flops
    assert result.top[0] == (best_feasible, score(best_feasible))
    assert all(space.flops(a) > max_flops for a in result.infeasible)


def test_max_params_constraint(space):
    spy = Spy()
    result = evolution_search(space, spy, EvolutionConfig(**SMALL, max_params=150), progress=False)
    assert spy.all_archs and all(space.params(a) <= 150 for a in spy.all_archs)
    assert all(space.params(a) <= 150 for a, _ in result.top)


def test_constraint_with_real_flop_counts():
    space = ChainSpace(num_layers=2, C=4, input_size=8)  # 16 archs, costs from built networks
    flops = {a: space.flops(a) for a in space.enumerate()}
    limit = sorted(set(flops.values()))[len(set(flops.values())) // 2]
    spy = Spy()
    result = evolution_search(space, spy, EvolutionConfig(max_flops=limit, seed=3), progress=False)
    feasible = [a for a in space.enumerate() if flops[a] <= limit]
    assert 0 < len(feasible) < space.num_archs
    assert sorted(spy.all_archs) == sorted(feasible)  # a 16-arch space gets searched exhaustively
    assert result.top[0][0] == max(feasible, key=score)


@pytest.mark.parametrize("limit", ["max_flops", "max_params"])
def test_impossible_constraint_raises(space, limit):
    spy = Spy()
    with pytest.raises(ValueError, match=limit):
        evolution_search(space, spy, EvolutionConfig(**SMALL, **{limit: 0.5}), progress=False)
    assert spy.calls == []


def test_determinism(space):
    def run(seed: int) -> EvolutionResult:
        return evolution_search(space, Spy(), EvolutionConfig(**SMALL, seed=seed), progress=False)

    a, b, c = run(0), run(0), run(1)
    assert a.to_dict() == b.to_dict()
    assert a.history != c.history
    assert set(a.scores) != set(c.scores)


def _assert_same(resumed: EvolutionResult, full: EvolutionResult) -> None:
    assert resumed.top == full.top
    assert resumed.history == full.history
    assert resumed.scores == full.scores
    assert resumed.to_dict() == full.to_dict()


@pytest.mark.parametrize("max_flops", [None, 30])
def test_resume_from_generation_end_state(space, max_flops):
    config = EvolutionConfig(**SMALL, max_flops=max_flops, seed=5)
    states: list[dict] = []
    full = evolution_search(space, Spy(), config, progress=False, on_generation_end=states.append)
    assert len(states) == config.generations + 1
    assert states[-1] == full.to_dict()

    saved = json.loads(json.dumps(states[2]))  # after 3 generations (0, 1, 2), through a JSON file
    assert saved["generation"] == 2
    spy = Spy()
    resumed = evolution_search(space, spy, config, progress=False, state=saved)
    _assert_same(resumed, full)
    assert len(spy.calls) <= config.generations - 2
    already = {space.decode(a) for a, _ in saved["scores"]}
    assert not already & set(spy.all_archs), "the resumed search re-scored an arch"


def test_resume_with_more_generations_matches_uninterrupted(space):
    config = EvolutionConfig(**SMALL, seed=2)
    short = evolution_search(space, Spy(), EvolutionConfig(**{**SMALL, "generations": 2}, seed=2), progress=False)
    assert short.generation == 2 and len(short.history) == 3
    resumed = evolution_search(space, Spy(), config, progress=False, state=short.to_dict())
    _assert_same(resumed, evolution_search(space, Spy(), config, progress=False))


def test_resume_rejects_a_different_config(space):
    state = evolution_search(space, Spy(), EvolutionConfig(**SMALL, seed=2), progress=False).to_dict()
    with pytest.raises(ValueError, match="seed"):
        evolution_search(space, Spy(), EvolutionConfig(**SMALL, seed=3), progress=False, state=state)


def test_result_round_trips_through_dict(space):
    result = evolution_search(space, Spy(), EvolutionConfig(**SMALL, max_flops=30), progress=False)
    d = json.loads(json.dumps(result.to_dict()))
    assert isinstance(d["top"][0][0], str)
    back = EvolutionResult.from_dict(space, d)
    assert back.top == result.top and back.scores == result.scores and back.infeasible == result.infeasible
    assert back.to_dict() == result.to_dict()


def test_tiny_space_smaller_than_population_terminates():
    space = ChainSpace(num_layers=2, ops=("skip_connect", "avg_pool_3x3"))
    assert space.num_archs == 4
    spy = Spy()
    result = evolution_search(space, spy, EvolutionConfig(), progress=False)  # population 50
    assert sorted(spy.all_archs) == sorted(space.enumerate())
    assert len(spy.all_archs) == 4
    assert len(result.top) == 4
    assert result.top[0][0] == max(space.enumerate(), key=score)


def test_score_fn_must_return_one_score_per_arch(space):
    with pytest.raises(ValueError, match="scores for"):
        evolution_search(space, lambda archs: [0.0], EvolutionConfig(**SMALL), progress=False)


def test_invalid_config():
    with pytest.raises(ValueError, match="topk"):
        EvolutionConfig(topk=0)
    with pytest.raises(ValueError, match="mutation_prob"):
        EvolutionConfig(mutation_prob=1.5)


def test_progress_bar_runs(space, capsys):
    result = evolution_search(space, Spy(), EvolutionConfig(**{**SMALL, "generations": 1}), progress=True)
    assert len(result.history) == 2


def test_export_top_archs(tmp_path):
    space = ChainSpace(num_layers=2, C=4, input_size=8)
    result = evolution_search(space, Spy(), EvolutionConfig(topk=3, seed=0), progress=False)
    path = export_top_archs(tmp_path / "out" / "top.json", result, space)
    rows = json.loads(path.read_text())
    assert len(rows) == 3
    assert [r["score"] for r in rows] == [s for _, s in result.top]
    for row, (arch, _) in zip(rows, result.top, strict=True):
        assert set(row) == {"arch", "score", "params", "flops"}
        assert space.decode(row["arch"]) == arch
        assert (row["params"], row["flops"]) == space.cost(arch)
    assert rows[0]["score"] == max(r["score"] for r in rows)
    assert not [p for p in path.parent.iterdir() if p.name != "top.json"], "temporary file left behind"


def test_a_nan_score_survives_a_strict_json_state_file(space, tmp_path):
    """State files are strict JSON (NaN is written as null), and reading one gives the NaN back."""
    result = evolution_search(space, Spy(), EvolutionConfig(**SMALL), progress=False)
    arch = next(iter(result.scores))
    result.scores[arch] = math.nan
    path = atomic_write_json(tmp_path / "state.json", result.to_dict())
    text = path.read_text()
    assert "NaN" not in text and "null" in text
    back = EvolutionResult.from_dict(space, json.loads(text))
    assert math.isnan(back.scores[arch]) and len(back.scores) == len(result.scores)
    assert strict_json({"a": [1.0, math.inf, (-math.inf, "x")], "b": math.nan}) == {"a": [1.0, None, [None, "x"]],
                                                                                     "b": None}


def test_isomorphic_nb201_archs_are_scored_once():
    """A NAS-Bench-201 search scores one representative per isomorphism class: no two scored archs compute
    the same function, and the search still finds the best class."""
    nb201 = NB201Space(C=4, N=1, in_channels=1, input_size=8)
    keys = sorted({nb201.isomorphism_key(a) for a in nb201.enumerate()})
    value = {k: float(i) for i, k in enumerate(keys)}  # one score per class

    def class_score(archs: list[Arch]) -> list[float]:
        return [value[nb201.isomorphism_key(a)] for a in archs]

    result = evolution_search(nb201, class_score, EvolutionConfig(population=50, generations=10, topk=10, seed=0),
                              progress=False)
    scored = list(result.scores)
    assert all(nb201.canonical(a) == a for a in scored)
    assert len({nb201.isomorphism_key(a) for a in scored}) == len(scored) > 300
    assert len({nb201.isomorphism_key(a) for a, _ in result.top}) == 10


# --- EvolutionRun: the search with its state and result files ---------------------------------------------


class Crash(Exception):
    pass


def test_run_killed_mid_search_resumes_from_its_state_file(space, tmp_path):
    config = EvolutionConfig(**SMALL, seed=5)
    full_logs: list[str] = []
    full = EvolutionRun(tmp_path / "full", config, log=full_logs.append).search(space, Spy(), progress=False)

    calls = 0

    def dies_in_generation_3(archs: list[Arch]) -> list[float]:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise Crash
        return [score(a) for a in archs]

    run_dir = tmp_path / "run"
    with pytest.raises(Crash):
        EvolutionRun(run_dir, config).search(space, dies_in_generation_3, progress=False)
    saved = json.loads((run_dir / "evolution_state.json").read_text())
    assert saved["generation"] == 2 and not (run_dir / "top_archs.json").exists()

    logs: list[str] = []
    spy = Spy()
    resumed = EvolutionRun(run_dir, config, log=logs.append).search(space, spy, progress=False)
    _assert_same(resumed, full)
    already = {space.decode(a) for a, _ in saved["scores"]}
    assert spy.calls and not already & set(spy.all_archs), "the resumed run re-scored an arch"
    assert logs[0].startswith("resuming the evolution from generation 2")
    assert f"best arch: {full.best[0]}" in logs[-1] and full_logs[-1] == logs[-1].replace(str(run_dir), str(
        tmp_path / "full"))
    top = json.loads((run_dir / "top_archs.json").read_text())
    assert [r["arch"] for r in top] == [str(a) for a, _ in full.top]
    assert json.loads((run_dir / "evolution_state.json").read_text()) == json.loads(json.dumps(full.to_dict()))

    # resume=False ignores the state file and searches from generation 0 again.
    fresh = Spy()
    again = EvolutionRun(run_dir, config, resume=False).search(space, fresh, progress=False)
    _assert_same(again, full)
    assert len(fresh.all_archs) == len(full.scores)


def test_non_writer_takes_the_broadcast_state_and_writes_nothing(space, tmp_path):
    config = EvolutionConfig(**SMALL, seed=2)
    short = evolution_search(space, Spy(), EvolutionConfig(**{**SMALL, "generations": 2}, seed=2), progress=False)
    shared = json.loads(json.dumps(short.to_dict()))
    asked: list[object] = []

    def broadcast(obj: object) -> dict:
        asked.append(obj)  # a non-writer offers nothing of its own
        return shared

    result = EvolutionRun(tmp_path / "rank1", config, writer=False, broadcast=broadcast).search(space, Spy(),
                                                                                                progress=False)
    assert asked == [None]
    _assert_same(result, evolution_search(space, Spy(), config, progress=False))
    assert not (tmp_path / "rank1").exists()


def test_format_top_archs_lists_rank_score_and_cost(space):
    result = evolution_search(space, Spy(), EvolutionConfig(**SMALL), progress=False)
    lines = format_top_archs(space, result.top).splitlines()
    assert len(lines) == len(result.top) + 1 and lines[0].split()[:2] == ["rank", "arch"]
    for i, (line, (arch, value)) in enumerate(zip(lines[1:], result.top, strict=True), start=1):
        params, flops = space.cost(arch)
        assert line.split() == [str(i), str(arch), f"{value:.2f}", f"{params / 1e6:.4f}", f"{flops / 1e6:.2f}"]


# --- latency limit (PC-NAS's hard limit, arXiv:1910.02543 section 3.3, in the SPOS search) --------------------


class AdditiveLatency(LatencyModel):
    """A lookup-table latency for ChainSpace: fixed 1 ms plus a per-op cost, so tests know every arch's value."""

    unit = "ms"
    OP_MS = (2.0, 5.0, 0.5, 1.0)  # again the good ops (conv3x3, conv1x1) are the slow ones

    def __init__(self, space: SearchSpace, fixed: float = 1.0) -> None:
        self.space, self.fixed = space, fixed

    def __call__(self, arch: Arch) -> float:
        return self.fixed + sum(self.OP_MS[i] for i in arch.indices)


def test_latency_constraint_is_checked_before_scoring(space):
    latency = AdditiveLatency(space)
    max_latency = 9.0
    spy = Spy()
    config = EvolutionConfig(**{**SMALL, "generations": 10}, max_latency=max_latency, seed=0)
    result = evolution_search(space, spy, config, progress=False, latency_model=latency)

    feasible = [a for a in space.enumerate() if latency(a) <= max_latency]
    assert 0 < len(feasible) < space.num_archs and latency(max(space.enumerate(), key=score)) > max_latency
    assert spy.all_archs and all(latency(a) <= max_latency for a in spy.all_archs), "an arch over the limit was scored"
    assert result.top and all(latency(a) <= max_latency for a, _ in result.top)
    assert result.top[0] == (max(feasible, key=score), score(max(feasible, key=score)))
    assert result.infeasible and all(latency(a) > max_latency for a in result.infeasible)
    assert result.config["latency_model"]["class"].endswith("AdditiveLatency")


def test_max_latency_without_a_model_limits_the_flops_proxy(space):
    """The default latency model is ``FlopsProxy`` in MFLOPs, as PoolSampler's: the same search as max_flops."""
    by_flops = evolution_search(space, Spy(), EvolutionConfig(**SMALL, max_flops=21), progress=False)
    by_latency = evolution_search(space, Spy(), EvolutionConfig(**SMALL, max_latency=21.5e-6), progress=False)
    assert by_latency.top == by_flops.top and by_latency.scores == by_flops.scores
    assert by_latency.config["latency_model"]["class"] == "nas_lightning.latency.base.FlopsProxy"


def test_impossible_latency_limit_names_the_limit(space):
    spy = Spy()
    with pytest.raises(ValueError, match=r"max_latency=2\.5 ms \(AdditiveLatency\)"):  # the fastest arch takes 3 ms
        evolution_search(space, spy, EvolutionConfig(**SMALL, max_latency=2.5), progress=False,
                         latency_model=AdditiveLatency(space))
    assert spy.calls == []


def test_latency_table_limits_the_search(tmp_path):
    """A measured table file configures the evolution as it configures PoolSampler (``latency_table``)."""
    mobile = MobileNetSpace(width_mult=0.25, num_classes=5, input_size=16, depths=[2, 1, 1, 1, 1, 1])
    ms = {op: 0.1 * (i + 1) for i, op in enumerate(sorted({op for d in mobile.decisions for op in d.choices}))}
    table = {"metadata": {"space": mobile.config()}, "fixed": {"stem": 1.0, "head": 0.5},
             "layers": [{op: ms[op] for op in d.choices} for d in mobile.decisions]}
    path = atomic_write_json(tmp_path / "latency.json", table)
    model = build_latency_model(mobile, latency_table=str(path))
    assert isinstance(model, LatencyTable)
    sample = mobile.sample_many(200, torch.Generator().manual_seed(0))
    max_latency = sorted(model(a) for a in sample)[20]  # about a tenth of the space meets it
    scored: list[Arch] = []

    def fast_score(archs: list[Arch]) -> list[float]:
        scored.extend(archs)
        return [float(sum(a.indices)) for a in archs]

    result = evolution_search(mobile, fast_score, EvolutionConfig(population=20, generations=3, topk=5,
                                                                   num_mutation=8, num_crossover=8,
                                                                   max_latency=max_latency),
                              progress=False, latency_model=model)
    assert scored and all(model(a) <= max_latency for a in scored)
    assert all(model(a) <= max_latency for a, _ in result.top)
    assert result.config["latency_model"]["unit"] == "ms" and "table_sha256" in result.config["latency_model"]
    with pytest.raises(FileNotFoundError, match="measure-latency"):
        build_latency_model(mobile, latency_table=str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="not both"):
        build_latency_model(mobile, FlopsProxy, str(path))


def test_callback_latency_arguments_mirror_the_pool_sampler():
    with pytest.raises(ValueError, match="no max_latency"):
        EvolutionSearch(latency_table="table.json")
    with pytest.raises(ValueError, match="max_latency"):
        EvolutionConfig(max_latency=0.0)
    configs = Path(__file__).parents[1] / "configs"
    cli = NASLightningCLI(["-c", str(configs / "spos" / "chain_synthetic.yaml"), "-c",
                           str(configs / "search" / "evolution.yaml"), "--trainer.callbacks.max_latency=5",
                           "--trainer.callbacks.latency_model=nas_lightning.latency.FlopsProxy",
                           "--trainer.callbacks.latency_model.scale=1000"], run=False)
    (search,) = [c for c in cli.trainer.callbacks if isinstance(c, EvolutionSearch)]
    assert search.config.max_latency == 5
    model = search.latency_model(cli.model.space)
    assert isinstance(model, FlopsProxy) and model.scale == 1000


# --- a state belongs to one search: checkpoint and settings (resume rule: evolution_run's docstring) --------


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def _provenance(space: SearchSpace, net: torch.nn.Module, path: str = "a.ckpt", step: int = 10,
                bn_recalibration: int = 0) -> dict:
    return search_provenance(space, net, path, step, {"method": "SPOS", "bn_recalibration": bn_recalibration})


def test_weights_sha256_identifies_the_weights():
    a = _net(0)
    assert weights_sha256(a) == weights_sha256(copy.deepcopy(a)) == weights_sha256(_net(0))
    assert weights_sha256(a) != weights_sha256(_net(1))
    b = copy.deepcopy(a)
    with torch.no_grad():
        b[0].weight[0, 0] += 1e-6
    assert weights_sha256(b) != weights_sha256(a)
    c = copy.deepcopy(a)
    c[1].running_mean[0] = 1.0  # buffers count too
    assert weights_sha256(c) != weights_sha256(a)
    assert weights_sha256(a.to(torch.bfloat16)) != weights_sha256(_net(0))  # dtype and bytes, not values


@pytest.mark.parametrize("change", ["checkpoint", "bn_recalibration", "population", "space", "latency_model"])
def test_run_refuses_the_state_of_another_search(space, tmp_path, change):
    config = EvolutionConfig(**SMALL, max_latency=12.0, seed=4)
    EvolutionRun(tmp_path, config, latency_model=AdditiveLatency(space),
                 provenance=_provenance(space, _net(0))).search(space, Spy(), progress=False)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    other_space = AnalyticChainSpace(num_layers=4, ops=("nor_conv_1x1", "nor_conv_3x3", "skip_connect", "none"))
    now = {"checkpoint": (_provenance(space, _net(1), path="b.ckpt", step=20), config, AdditiveLatency(space)),
           "bn_recalibration": (_provenance(space, _net(0), bn_recalibration=5), config, AdditiveLatency(space)),
           "population": (_provenance(space, _net(0)), EvolutionConfig(**{**SMALL, "population": 20}, max_latency=12.0,
                                                                       seed=4), AdditiveLatency(space)),
           "space": (_provenance(other_space, _net(0)), config, AdditiveLatency(space)),
           "latency_model": (_provenance(space, _net(0)), config, AdditiveLatency(space, fixed=2.0))}[change]
    expected = {"checkpoint": r"checkpoint: saved a\.ckpt \(global_step 10, weights sha256 \w{12}\), now b\.ckpt "
                              r"\(global_step 20, weights sha256 \w{12}\)",
                "bn_recalibration": "evaluation.bn_recalibration: saved 0, now 5",
                "population": "population: saved 16, now 20",
                "space": r"space.decisions.layer0: saved \['nor_conv_1x1', 'nor_conv_3x3', 'skip_connect', "
                         r"'avg_pool_3x3'\], now \['nor_conv_1x1', 'nor_conv_3x3', 'skip_connect', 'none'\]",
                "latency_model": "latency_model: saved .*'fixed': 1.0.*, now .*'fixed': 2.0"}[change]
    provenance, config_now, latency = now
    spy = Spy()
    with pytest.raises(EvolutionStateMismatch, match=expected) as error:
        EvolutionRun(tmp_path, config_now, latency_model=latency, provenance=provenance).search(space, spy,
                                                                                                progress=False)
    message = str(error.value)
    assert str(tmp_path / "evolution_state.json") in message
    assert "another output directory" in message and "resume: false" in message
    assert spy.calls == [], "the refused search evaluated archs"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files, "the refused search touched the files"


def test_run_resumes_the_same_weights_from_a_moved_checkpoint(space, tmp_path):
    config = EvolutionConfig(**SMALL, seed=6)
    first = EvolutionRun(tmp_path, config, provenance=_provenance(space, _net(0))).search(space, Spy(), progress=False)
    logs: list[str] = []
    spy = Spy()
    again = EvolutionRun(tmp_path, config, log=logs.append,
                         provenance=_provenance(space, _net(0), path="moved/a.ckpt")).search(space, spy,
                                                                                            progress=False)
    _assert_same_search(again, first)
    assert spy.calls == [] and "it is complete" in logs[0]


def _assert_same_search(a: EvolutionResult, b: EvolutionResult) -> None:
    assert a.top == b.top and a.history == b.history and a.scores == b.scores


def test_a_killed_run_with_provenance_resumes(space, tmp_path):
    config = EvolutionConfig(**SMALL, seed=5)
    provenance = _provenance(space, _net(0))
    full = EvolutionRun(tmp_path / "full", config, provenance=provenance).search(space, Spy(), progress=False)
    calls = 0

    def dies_in_generation_2(archs: list[Arch]) -> list[float]:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise Crash
        return [score(a) for a in archs]

    with pytest.raises(Crash):
        EvolutionRun(tmp_path / "run", config, provenance=provenance).search(space, dies_in_generation_2,
                                                                             progress=False)
    saved = json.loads((tmp_path / "run" / "evolution_state.json").read_text())
    assert saved["provenance"]["checkpoint"] == {"path": "a.ckpt", "global_step": 10,
                                                 "weights_sha256": weights_sha256(_net(0))}
    spy = Spy()
    resumed = EvolutionRun(tmp_path / "run", config, provenance=provenance).search(space, spy, progress=False)
    _assert_same(resumed, full)
    assert spy.calls and len(spy.calls) == config.generations - 1


def test_resume_false_starts_afresh_over_another_search_and_says_so(space, tmp_path):
    config = EvolutionConfig(**SMALL, seed=7)
    EvolutionRun(tmp_path, config, provenance=_provenance(space, _net(0))).search(space, Spy(), progress=False)
    logs: list[str] = []
    other = _provenance(space, _net(1), path="b.ckpt")
    fresh = EvolutionRun(tmp_path, config, resume=False, log=logs.append, provenance=other).search(space, Spy(),
                                                                                                   progress=False)
    assert logs[0].startswith("resume is off: starting the evolution afresh")
    _assert_same_search(fresh, evolution_search(space, Spy(), config, progress=False))
    saved = json.loads((tmp_path / "evolution_state.json").read_text())
    assert saved["provenance"]["checkpoint"]["path"] == "b.ckpt"


def test_run_refuses_an_old_or_unreadable_state(space, tmp_path):
    config = EvolutionConfig(**SMALL)
    state = evolution_search(space, Spy(), config, progress=False).to_dict()
    atomic_write_json(tmp_path / "evolution_state.json", {**state, "version": 1})
    with pytest.raises(EvolutionStateMismatch, match="version 1"):
        EvolutionRun(tmp_path, config).search(space, Spy(), progress=False)
    (tmp_path / "evolution_state.json").write_text('{"generation": ')
    with pytest.raises(ValueError, match=r"evolution_state\.json is not a readable evolution state"):
        EvolutionRun(tmp_path, config).search(space, Spy(), progress=False)


def test_validate_refuses_to_reuse_the_search_of_another_checkpoint(tmp_path):
    """End to end through the callback: ``validate`` with checkpoint A searches; with checkpoint B into the same
    output folder it is refused (naming both); with A again, even copied elsewhere, it reports A's search."""
    space = ChainSpace(num_layers=2, C=4, num_classes=4, in_channels=1, input_size=8)

    def data() -> SyntheticDataModule:
        return SyntheticDataModule(num_classes=4, in_channels=1, image_size=8, num_train=128, num_test=32,
                                   batch_size=32, val_fraction=0.25, seed=0)

    def trainer(callbacks: list[pl.Callback], **kw: Any) -> pl.Trainer:
        return pl.Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path,
                          enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                          callbacks=callbacks, **kw)

    def model() -> SPOS:
        return SPOS(space, seed=0, num_eval_archs=0, optimizer=lambda p: torch.optim.SGD(p, lr=0.05))

    ckpts = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, filename="{epoch}")
    trainer([ckpts], max_epochs=2).fit(model(), datamodule=data())
    a, b = tmp_path / "ckpt" / "epoch=0.ckpt", tmp_path / "ckpt" / "epoch=1.ckpt"
    limit = 0.6 * max(space.flops(x) for x in space.enumerate()) / 1e6  # MFLOPs, FlopsProxy's unit

    def search(ckpt: Path) -> EvolutionSearch:
        cb = EvolutionSearch(population=4, generations=2, topk=2, num_mutation=2, num_crossover=2,
                             max_latency=limit, output_dir=str(tmp_path / "search"), progress=False)
        trainer([cb], enable_checkpointing=False).validate(model(), datamodule=data(), ckpt_path=str(ckpt))
        return cb

    first = search(a).result
    assert first is not None and all(space.flops(x) / 1e6 <= limit for x in first.scores)
    state = json.loads((tmp_path / "search" / "evolution_state.json").read_text())
    assert state["provenance"]["checkpoint"]["path"] == str(a)
    assert state["provenance"]["checkpoint"]["global_step"] == 3  # 96 train images, batch 32: 3 steps an epoch
    assert state["provenance"]["evaluation"]["val_samples"] == 32
    with pytest.raises(EvolutionStateMismatch, match=rf"saved {re.escape(str(a))} \(global_step 3, .*now "
                                                     rf"{re.escape(str(b))} \(global_step 6"):
        search(b)
    moved = tmp_path / "elsewhere.ckpt"
    shutil.copy(a, moved)
    again = search(moved).result
    assert again is not None and again.top == first.top and again.scores == first.scores
