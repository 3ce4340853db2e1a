"""SPOS evolutionary search: optimum, constraint, determinism, resume, tiny spaces, export, and the
resumable run with its files (``EvolutionRun``), all without a Trainer."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from nas_lightning.search import (
    EvolutionConfig,
    EvolutionResult,
    EvolutionRun,
    evolution_search,
    export_top_archs,
    format_top_archs,
)
from nas_lightning.spaces import Arch, ChainSpace, NB201Space
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
