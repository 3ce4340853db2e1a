"""Evolutionary architecture search over a trained supernet (SPOS).

Guo et al., "Single Path One-Shot Neural Architecture Search with Uniform Sampling", ECCV 2020,
arXiv:1904.00420, and the official code (megvii-model/SinglePathOneShot, ``evolution.py``).

The search is a pure function of a search space and a batched score function; it needs no Trainer
and no images, so the caller decides how an arch is scored (e.g. validation accuracy of the supernet
after BN recalibration). Higher scores are better.

Algorithm, as in the official code:

1. Generation 0: ``population`` distinct random archs that satisfy the constraint.
2. Every generation evaluates the archs not yet scored (one ``score_fn`` call with the whole list;
   every arch is scored at most once, memoised in ``scores`` like the official ``vis_dict``) and keeps
   the ``topk`` best archs scored so far.
3. Generations 1..``generations`` each get ``num_mutation`` children from mutating a random top-k
   parent (each decision resampled with ``mutation_prob``), ``num_crossover`` children from a uniform
   crossover of two random top-k parents, and random archs to refill the population. A candidate is
   skipped if it was seen before (scored or infeasible), is already in the population, or breaks the
   constraint; the constraint (``max_flops`` on ``space.flops``, ``max_params`` on ``space.params``,
   ``max_latency`` on a ``LatencyModel``: a measured ``LatencyTable`` or the ``FlopsProxy``, as PC-NAS's
   limit, arXiv:1910.02543 section 3.3) is checked before evaluation, so an arch over the limit is never
   scored.

Every candidate is replaced by ``space.canonical(arch)`` first, so of archs that compute the same
function (NAS-Bench-201's isomorphic cells) only one representative is scored and listed.

So a search makes at most ``generations + 1`` ``score_fn`` calls. Unlike the official code, the last
generation's children take part in the final top-k instead of being evaluated and then dropped.

Defaults (paper / official code): population 50, 20 generations, top-k 10, 25 mutations with
probability 0.1, 25 crossovers. Every sampling loop is bounded by ``max_tries_factor`` attempts per
wanted arch, so a tiny space or a very tight constraint cannot hang the search.

All randomness comes from one ``torch.Generator`` seeded with ``config.seed``: every DDP rank that
gets the same scores computes the same search. The state after each generation is a plain JSON-able
dict (``EvolutionResult.to_dict``), including the generator state, so a resumed search gives exactly
the result of an uninterrupted one. The state also records what it belongs to: its settings
(``search_settings``: the config and the latency model) and the caller's ``provenance`` (which supernet
and evaluation scored it, see ``nas_lightning.search.evolution_run``). A state resumes only under equal
settings (``generations`` may grow: more generations continue the same search) and equal provenance;
anything else is refused with ``EvolutionStateMismatch`` naming each difference, since its scores would
not be this search's.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from nas_lightning.latency.base import FlopsProxy, LatencyModel
from nas_lightning.latency.table import LatencyTable
from nas_lightning.spaces import Arch, SearchSpace
from nas_lightning.utils import atomic_write_json
from nas_lightning.utils.atomic import strict_json

# 2: the state records its settings' latency model and its provenance (version 1 recorded neither).
STATE_VERSION = 2

ScoreFn = Callable[[list[Arch]], Sequence[float]]


#: the hard limits of ``EvolutionConfig``, each checked before an arch is scored
LIMITS = ("max_flops", "max_params", "max_latency")


class EvolutionStateMismatch(ValueError):
    """A saved evolution state that belongs to another search (other settings, supernet or evaluation)."""


@dataclass
class EvolutionConfig:
    """SPOS evolution settings; defaults follow the paper and its official code."""

    population: int = 50
    generations: int = 20
    topk: int = 10  # parents
    num_mutation: int = 25
    num_crossover: int = 25
    mutation_prob: float = 0.1
    max_flops: float | None = None
    max_params: float | None = None
    max_latency: float | None = None  # in the latency model's unit (ms for a LatencyTable, MFLOPs for FlopsProxy)
    max_tries_factor: int = 10  # attempts per wanted arch before giving up on filling
    seed: int = 0

    def __post_init__(self) -> None:
        ints = {"population": 1, "generations": 0, "topk": 1, "num_mutation": 0, "num_crossover": 0,
                "max_tries_factor": 1}
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"EvolutionConfig.{name} must be an int >= {low}, got {value!r}")
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise ValueError(f"EvolutionConfig.mutation_prob must lie in [0, 1], got {self.mutation_prob}")
        for name in LIMITS:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"EvolutionConfig.{name} must be positive or None, got {value}")


# Fields that may differ between a saved state and the config it resumes under: more generations
# just continue the same search.
_RESUMABLE_CHANGES = frozenset({"generations"})
# Provenance entries that describe but do not identify: the same weights read from a moved file are the same
# supernet; the step is shown to help a reader, the weights' hash decides.
_DESCRIPTIVE = frozenset({"checkpoint.path", "checkpoint.global_step"})


def build_latency_model(space: SearchSpace, latency_model: Callable[[SearchSpace], LatencyModel] | None = None,
                        latency_table: str | os.PathLike[str] | None = None) -> LatencyModel:
    """The latency model of ``space`` from the arguments ``PoolSampler`` takes, so one set of values configures
    both: a factory ``space -> LatencyModel`` (default ``FlopsProxy``, MFLOPs), or a measured table file read
    as it is (``LatencyTable.load``, ms)."""
    if latency_table is not None and latency_model is not None:
        raise ValueError("give latency_model or latency_table, not both")
    if latency_table is not None:
        return LatencyTable.load(space, latency_table)
    return (latency_model or FlopsProxy)(space)


def latency_signature(model: LatencyModel) -> dict[str, Any]:
    """What identifies a latency model's numbers: its class and unit, a hash of its table where it has one
    (``LatencyTable``), and its plain settings (e.g. ``FlopsProxy.scale``); not where a table was read from."""
    sig: dict[str, Any] = {"class": f"{type(model).__module__}.{type(model).__qualname__}", "unit": model.unit}
    table = getattr(model, "table", None)
    if isinstance(table, dict):
        text = json.dumps(strict_json(table), sort_keys=True)
        sig["table_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    sig.update({k: v for k, v in sorted(vars(model).items())
                if not k.startswith("_") and k != "path" and isinstance(v, bool | int | float | str)})
    return sig


def search_settings(config: EvolutionConfig, latency_model: LatencyModel | None = None) -> dict[str, Any]:
    """The settings a state records and a resume must match: the config and, under ``max_latency``, the
    latency model's signature; as they read back from a JSON file."""
    settings = {**asdict(config),
                "latency_model": None if config.max_latency is None or latency_model is None
                else latency_signature(latency_model)}
    return json.loads(json.dumps(strict_json(settings)))


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj} if prefix else {}


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _checkpoint_text(checkpoint: Any) -> str:
    if not isinstance(checkpoint, dict):
        return "none recorded"
    digest = checkpoint.get("weights_sha256")
    return (f"{checkpoint.get('path') or '(no file)'} (global_step {checkpoint.get('global_step')}, "
            f"weights sha256 {str(digest)[:12]})")


def resume_mismatches(state: dict[str, Any], settings: dict[str, Any],
                      provenance: dict[str, Any] | None = None) -> list[str]:
    """Every difference between a saved state and the search about to resume it, one line each; empty if
    it may resume. ``settings`` is ``search_settings(...)``; ``provenance`` a JSON-able nested dict whose
    leaves must all be equal, except the descriptive ``checkpoint.path`` and ``checkpoint.global_step``."""
    version = state.get("version")
    if version != STATE_VERSION:
        return [f"state format: version {version!r}, this nas-lightning writes version {STATE_VERSION} (older "
                "states do not record the checkpoint and settings they belong to)"]
    saved = state.get("config") or {}
    problems = [f"{k}: saved {_short(saved.get(k))}, now {_short(v)}" for k, v in settings.items()
                if k not in _RESUMABLE_CHANGES and saved.get(k) != v]
    old = _flat(state.get("provenance") or {})
    new = _flat(json.loads(json.dumps(strict_json(provenance or {}))))
    keys = [k for k in dict.fromkeys([*new, *old]) if k not in _DESCRIPTIVE and old.get(k) != new.get(k)]
    if any(k.startswith("checkpoint.") for k in keys):
        problems.append(f"checkpoint: saved {_checkpoint_text((state.get('provenance') or {}).get('checkpoint'))}, "
                        f"now {_checkpoint_text((provenance or {}).get('checkpoint'))}")
    problems += [f"{k}: saved {_short(old.get(k))}, now {_short(new.get(k))}" for k in keys
                 if not k.startswith("checkpoint.")]
    return problems


@dataclass
class EvolutionResult:
    """Outcome (and resumable state) of ``evolution_search``."""

    top: list[tuple[Arch, float]]  # best first, the final top-k with scores
    history: list[dict]  # per generation: generation, best_score, mean_topk_score, num_evaluated, ...
    scores: dict[Arch, float]  # every arch evaluated, with its score
    infeasible: set[Arch] = field(default_factory=set)  # archs seen but over the constraint, never scored
    generation: int = -1  # last completed generation
    generator_state: list[int] | None = None  # torch.Generator state after ``generation``
    config: dict[str, Any] | None = None  # search_settings(config, latency_model)
    provenance: dict[str, Any] | None = None  # what the scores belong to (supernet, evaluation); the caller's

    @property
    def best(self) -> tuple[Arch, float]:
        if not self.top:
            raise ValueError("the search scored no arch")
        return self.top[0]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; archs as their canonical strings."""
        return {
            "version": STATE_VERSION,
            "generation": self.generation,
            "config": self.config,
            "top": [[str(a), s] for a, s in self.top],
            "history": [dict(h) for h in self.history],
            "scores": [[str(a), s] for a, s in self.scores.items()],
            "infeasible": sorted(str(a) for a in self.infeasible),
            "generator_state": self.generator_state,
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, space: SearchSpace, d: dict[str, Any]) -> EvolutionResult:
        """The inverse of ``to_dict``, also after a strict-JSON file turned NaN scores into null."""
        version = d.get("version")
        if version != STATE_VERSION:
            raise ValueError(f"evolution state version {version!r} is not supported (expected {STATE_VERSION})")
        state = d.get("generator_state")
        return cls(
            top=[(space.decode(a), _score(s)) for a, s in d["top"]],
            history=[dict(h) for h in d["history"]],
            scores={space.decode(a): _score(s) for a, s in d["scores"]},
            infeasible={space.decode(a) for a in d.get("infeasible", [])},
            generation=int(d["generation"]),
            generator_state=None if state is None else [int(x) for x in state],
            config=d.get("config"),
            provenance=d.get("provenance"),
        )


def _score(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _sort_key(item: tuple[Arch, float]) -> tuple[float, tuple[int, ...]]:
    # Best first; NaN ranks last; ties go to the smaller index tuple so every rank agrees.
    score = item[1]
    return (math.inf if math.isnan(score) else -score, item[0].indices)


def _top_k(scores: dict[Arch, float], k: int) -> list[tuple[Arch, float]]:
    return sorted(scores.items(), key=_sort_key)[:k]


def _randint(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(high, (1,), generator=generator).item())


class _Pool:
    """Collects new candidates for one generation: unseen, distinct and within the constraint."""

    def __init__(self, space: SearchSpace, config: EvolutionConfig, seen: set[Arch], infeasible: set[Arch],
                 latency_model: LatencyModel | None = None):
        self.space, self.config, self.seen, self.infeasible = space, config, seen, infeasible
        self.latency_model = latency_model
        self.archs: list[Arch] = []
        self._members: set[Arch] = set()

    def feasible(self, arch: Arch) -> bool:
        c = self.config
        if c.max_flops is not None and self.space.flops(arch) > c.max_flops:
            return False
        if c.max_params is not None and self.space.params(arch) > c.max_params:
            return False
        if c.max_latency is not None and self.latency_model is not None and self.latency_model(arch) > c.max_latency:
            return False
        return True

    def offer(self, arch: Arch) -> bool:
        arch = self.space.canonical(arch)  # isomorphic archs tie in every evaluation: score one of them
        if arch in self.seen or arch in self._members:
            return False
        if not self.feasible(arch):
            # Remember it, so the cost is never asked again and it never counts as new.
            self.infeasible.add(arch)
            self.seen.add(arch)
            return False
        self.archs.append(arch)
        self._members.add(arch)
        return True

    def fill(self, wanted: int, propose: Callable[[int], Iterable[Arch]]) -> int:
        """Add up to ``wanted`` archs from ``propose(n)`` batches, at most ``max_tries_factor * wanted`` tries."""
        added, tries = 0, self.config.max_tries_factor * wanted
        while added < wanted and tries > 0:
            n = min(wanted - added, tries)
            tries -= n
            for arch in propose(n):
                added += self.offer(arch)
                if added == wanted:
                    break
        return added


def _limits(config: EvolutionConfig, latency_model: LatencyModel | None) -> str:
    parts = [f"{n}={getattr(config, n)}" for n in ("max_flops", "max_params") if getattr(config, n) is not None]
    if config.max_latency is not None and latency_model is not None:
        parts.append(f"max_latency={config.max_latency} {latency_model.unit} ({type(latency_model).__name__})")
    return " and ".join(parts)


def evolution_search(
    space: SearchSpace,
    score_fn: ScoreFn,
    config: EvolutionConfig | None = None,
    progress: bool = True,
    state: dict[str, Any] | None = None,
    on_generation_end: Callable[[dict[str, Any]], None] | None = None,
    latency_model: LatencyModel | None = None,
    provenance: dict[str, Any] | None = None,
) -> EvolutionResult:
    """SPOS evolutionary search; see the module docstring.

    Args:
        space: the search space (sampling, mutation, crossover, cost).
        score_fn: called once per generation with the list of new archs; returns one score per arch,
            higher is better. Under DDP it must return the same scores on every rank.
        config: search settings, ``EvolutionConfig()`` by default.
        progress: show a tqdm bar, one tick per generation.
        state: a dict from ``EvolutionResult.to_dict`` (e.g. passed to ``on_generation_end`` and saved)
            to resume from; its settings must match except for ``generations``, and its provenance must match
            ``provenance`` (``EvolutionStateMismatch`` otherwise).
        on_generation_end: receives the state dict after every generation (write it atomically).
        latency_model: what ``config.max_latency`` limits; default ``FlopsProxy(space)`` (MFLOPs), as
            ``PoolSampler``'s. See ``build_latency_model``.
        provenance: JSON-able description of what scores the archs (the supernet's checkpoint, the
            evaluation settings), recorded in the state and compared on resume (``resume_mismatches``).
    """
    config = config or EvolutionConfig()
    if config.max_latency is not None and latency_model is None:
        latency_model = FlopsProxy(space)
    settings = search_settings(config, latency_model)
    generator = torch.Generator().manual_seed(config.seed)
    if state is not None:
        problems = resume_mismatches(state, settings, provenance)
        if problems:
            raise EvolutionStateMismatch("cannot resume this evolution state, it belongs to another search: "
                                         + "; ".join(problems) + " (only 'generations' may change)")
        result = EvolutionResult.from_dict(space, state)
        if result.generator_state is not None:
            generator.set_state(torch.tensor(result.generator_state, dtype=torch.uint8))
    else:
        result = EvolutionResult(top=[], history=[], scores={})
    result.config = settings
    result.provenance = None if provenance is None else json.loads(json.dumps(strict_json(provenance)))
    scores, infeasible = result.scores, result.infeasible
    seen = set(scores) | infeasible
    num_archs = space.num_archs

    bar = tqdm(total=config.generations + 1, initial=min(result.generation + 1, config.generations + 1),
               desc="evolution", disable=not progress)
    try:
        for gen in range(result.generation + 1, config.generations + 1):
            if len(seen) >= num_archs:
                break  # every arch was scored or ruled out: nothing new can be bred
            pool = _Pool(space, config, seen, infeasible, latency_model)
            if gen == 0:
                pool.fill(config.population, lambda n: space.sample_many(n, generator))
                if not pool.archs:
                    tries = config.max_tries_factor * config.population
                    raise ValueError(
                        f"no arch out of {tries} random tries meets {_limits(config, latency_model)}; raise the limit "
                        f"(or max_tries_factor, now {config.max_tries_factor}) so the initial population can be filled"
                    )
            else:
                parents = [a for a, _ in result.top]

                def mutants(n: int, parents: list[Arch] = parents) -> list[Arch]:
                    return [space.mutate(parents[_randint(len(parents), generator)], config.mutation_prob, generator)
                            for _ in range(n)]

                def crosses(n: int, parents: list[Arch] = parents) -> list[Arch]:
                    out = []
                    for _ in range(n):
                        a = parents[_randint(len(parents), generator)]
                        b = parents[_randint(len(parents), generator)]
                        out.append(space.crossover(a, b, generator))
                    return out

                pool.fill(config.num_mutation, mutants)
                pool.fill(config.num_crossover, crosses)
                pool.fill(config.population - len(pool.archs), lambda n: space.sample_many(n, generator))

            new = pool.archs
            if new:
                # One batched call per generation; scores are memoised so no arch is evaluated twice.
                got = list(score_fn(list(new)))
                if len(got) != len(new):
                    raise ValueError(f"score_fn returned {len(got)} scores for {len(new)} archs")
                for arch, s in zip(new, got, strict=True):
                    scores[arch] = float(s)
                    seen.add(arch)
            result.top = _top_k(scores, config.topk)
            best_arch, best = result.top[0] if result.top else (None, math.nan)
            result.history.append({
                "generation": gen,
                "best_score": best,
                "best_arch": None if best_arch is None else str(best_arch),
                "mean_topk_score": sum(s for _, s in result.top) / len(result.top) if result.top else math.nan,
                "num_new": len(new),
                "num_evaluated": len(scores),
            })
            result.generation = gen
            result.generator_state = [int(x) for x in generator.get_state().tolist()]
            bar.update(1)
            bar.set_postfix(best=f"{best:.4g}", evaluated=len(scores))
            if on_generation_end is not None:
                on_generation_end(result.to_dict())
    finally:
        bar.close()
    return result


def export_top_archs(path: str | os.PathLike[str], result: EvolutionResult, space: SearchSpace) -> Path:
    """Write the final top-k, best first, as JSON: ``arch``, ``score``, ``params``, ``flops`` (atomically)."""
    rows = []
    for arch, score in result.top:
        params, flops = space.cost(arch)
        rows.append({"arch": str(arch), "score": score, "params": params, "flops": flops})
    return atomic_write_json(path, rows)
