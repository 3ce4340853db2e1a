"""The partial-model pool of PC-NAS and the sampler that trains from it.

Li et al., "Improving One-Shot NAS by Suppressing the Posterior Fading", CVPR 2020, arXiv:1910.02543,
section 3.3 ("Partial model pool", "Training based on partial model pool") and Algorithm 2.

A *partial model* fixes the choices of decisions ``0..l-1`` (a prefix of choice indices); the pool
holds at most P of them, all of the same length. Before the first shrink the pool is empty and
training samples uniformly (the warm-up of Algorithm 2); afterwards each step samples a pool member
uniformly and completes the missing decisions ``o_{l+1}..o_L`` uniformly (section 3.3). The pool
and the history of every shrink are plain JSON-able state, checkpointed through the sampler: the
sampler owns the search state, the ``PoolShrinking`` callback only decides when to shrink.

The hard latency limit (section 3.3, "Candidate evaluation with latency constraint") is a
``LatencyLimit``: a completion counts only if ``latency_model(arch) <= max_latency``. Training draws
the member uniformly first, then one of its completions by rejection sampling with a bounded number of
tries, so the limit does not bias which member trains (the paper's text leaves
training unconstrained; we keep the trained archs inside the limit the pool is searched under:
docs/design_choices.md, "PC-NAS"). The warm-up samples uniformly from the whole space, as
Algorithm 2's ``Warm-up`` does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from typing_extensions import override

from nas_lightning.latency.base import FlopsProxy, LatencyModel
from nas_lightning.latency.table import LatencyTable
from nas_lightning.samplers.base import ArchSampler
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.distributed import step_generator

Prefix = tuple[int, ...]


def complete(space: SearchSpace, prefix: Sequence[int], n: int, generator: torch.Generator) -> list[Arch]:
    """``n`` uniform completions of ``prefix``: the missing decisions drawn independently and uniformly."""
    sizes = torch.tensor([len(d.choices) for d in space.decisions], dtype=torch.float64)
    u = torch.rand((n, space.num_decisions), generator=generator, dtype=torch.float64)
    indices = (u * sizes).floor().long()
    if prefix:
        indices[:, : len(prefix)] = torch.tensor(prefix, dtype=torch.long)
    return space.from_tensor(indices)


@dataclass
class LatencyLimit:
    """The hard limit ``latency_model(arch) <= max_latency``; no limit when ``max_latency`` is None."""

    model: LatencyModel
    max_latency: float | None = None

    @property
    def active(self) -> bool:
        return self.max_latency is not None

    def ok(self, arch: Arch) -> bool:
        return self.max_latency is None or self.model(arch) <= self.max_latency

    def cheapest_completion(self, space: SearchSpace, prefix: Sequence[int]) -> tuple[Arch, float]:
        """The completion of ``prefix`` that one sweep of coordinate descent finds cheapest.

        Starting from the first choice everywhere, each free decision in turn takes the choice that
        minimises the latency of the whole arch. For an additive model (a per-decision cost table,
        FLOPs of a space whose layer shapes do not depend on the choices) one sweep finds the exact
        minimum, so "cheapest completion over the limit" proves that no completion meets it.
        """
        current = list(prefix) + [0] * (space.num_decisions - len(prefix))
        best = self.model(space.arch(current))
        for d in range(len(prefix), space.num_decisions):
            for c in range(1, len(space.decisions[d].choices)):
                trial = current.copy()
                trial[d] = c
                cost = self.model(space.arch(trial))
                if cost < best:
                    best, current = cost, trial
        return space.arch(current), best

    def describe(self) -> str:
        return f"max_latency={self.max_latency} {self.model.unit} ({type(self.model).__name__})"


def valid_completions(space: SearchSpace, prefix: Sequence[int], n: int, generator: torch.Generator,
                      limit: LatencyLimit, max_tries: int) -> list[Arch]:
    """Up to ``n`` uniform completions of ``prefix`` within ``limit``, by rejection sampling.

    Draws come in chunks of ``n`` from ``generator`` until ``n`` are valid or ``max_tries`` draws are
    spent, so the result is uniform over the valid completions and a deterministic function of the
    generator's state. Without a limit, exactly ``n`` draws are made.
    """
    if not limit.active:
        return complete(space, prefix, n, generator)
    found: list[Arch] = []
    tries = 0
    while len(found) < n and tries < max_tries:
        chunk = min(n, max_tries - tries)
        tries += chunk
        found += [a for a in complete(space, prefix, chunk, generator) if limit.ok(a)]
    return found[:n]


def prefix_text(space: SearchSpace, prefix: Sequence[int]) -> str:
    """``prefix`` with decision names, for messages: ``[layer0=nor_conv_3x3, layer1=skip_connect]``."""
    return "[" + ", ".join(f"{d.name}={d.choices[i]}" for d, i in zip(space.decisions, prefix)) + "]"


class PartialModelPool:
    """The pool of Algorithm 2: P partial models of equal length, best first, and the shrink history.

    ``members`` are prefixes of choice indices (empty list before the first shrink, the warm-up).
    ``history`` holds one plain dict per shrink: ``shrink``, ``epoch``, ``layer`` (the decision fixed),
    ``decision`` (its name), ``candidates`` (index lists), ``potentials`` (percent; None for a
    candidate dropped as infeasible), ``num_valid`` (completions evaluated per candidate) and ``kept``.
    """

    def __init__(self) -> None:
        self.members: list[Prefix] = []
        self.history: list[dict[str, Any]] = []

    @property
    def num_fixed(self) -> int:
        """Decisions fixed so far (l), i.e. shrinks done."""
        return len(self.members[0]) if self.members else 0

    def is_complete(self, space: SearchSpace) -> bool:
        return self.num_fixed == space.num_decisions

    def candidates(self, space: SearchSpace) -> list[Prefix]:
        """Algorithm 2's ``Extend`` of this pool (see ``extend``)."""
        return extend(self.members, space)

    def advance(self, kept: Sequence[Prefix], record: dict[str, Any]) -> None:
        """Replace the members by ``kept`` (the top P candidates of a shrink) and append its record."""
        if kept and len(kept[0]) != self.num_fixed + 1:
            raise ValueError(f"a shrink fixes one more decision: the pool has {self.num_fixed} fixed, the new members "
                             f"{len(kept[0])}")
        self.members = [tuple(k) for k in kept]
        self.history.append(copy.deepcopy(record))

    def state_dict(self) -> dict[str, Any]:
        return {"members": [list(m) for m in self.members], "history": copy.deepcopy(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.members = [tuple(int(i) for i in m) for m in state["members"]]
        self.history = copy.deepcopy(list(state["history"]))


def extend(members: Sequence[Prefix], space: SearchSpace) -> list[Prefix]:
    """``Extend`` of Algorithm 2: each member extended by every choice of the next decision, member-major;
    with no members (the warm-up is over), every choice of the first decision."""
    layer = len(members[0]) if members else 0
    if layer >= space.num_decisions:
        raise RuntimeError(f"every one of the {space.num_decisions} decisions is fixed already; nothing to extend")
    return [(*m, c) for m in (members or [()]) for c in range(len(space.decisions[layer].choices))]


def top_partial_models(candidates: Sequence[Prefix], potentials: Sequence[float | None],
                       pool_size: int) -> list[Prefix]:
    """``Top(ExtendedPartialModels, P)`` of Algorithm 2: the ``pool_size`` best candidates, best first.

    Candidates with potential None (no completion meets the limit) are dropped. Ties keep candidate
    order (member order, best member first, then choice index), so every rank and every rerun agrees.
    """
    if len(candidates) != len(potentials):
        raise ValueError(f"{len(candidates)} candidates but {len(potentials)} potentials")
    scored = [i for i, p in enumerate(potentials) if p is not None]
    scored.sort(key=lambda i: (-float(potentials[i]), i))
    return [tuple(candidates[i]) for i in scored[:pool_size]]


class PoolSampler(ArchSampler):
    """Arch of step t: uniform during the warm-up; then a pool member drawn uniformly, and a completion
    of it drawn uniformly among those within the latency limit (section 3.3). The member is drawn first and
    alone, so it does not depend on the limit (a joint draw of member and completion, retried until the
    limit holds, would train members with more valid completions more often); the completion is then
    drawn by rejection sampling over that member's completions only. Every draw comes from
    ``step_generator(seed, "pool", t)``, so all DDP ranks train the same arch and a resumed run draws
    what an uninterrupted one would.

    Args:
        space: the search space.
        seed: seed of the arch sequence.
        max_latency: hard limit on the latency model's value; None for no limit.
        latency_model: ``space -> LatencyModel`` (a class, e.g. ``nas_lightning.latency.FlopsProxy``, the
            default, in MFLOPs).
        latency_table: instead of ``latency_model``, a measured lookup table file (``nas-lightning
            measure-latency``, ms), read as it is so every rank has the same numbers.
        max_tries: completions of the drawn member tried before its limit is declared impossible to meet.
    """

    def __init__(self, space: SearchSpace, seed: int = 0, max_latency: float | None = None,
                 latency_model: Callable[[SearchSpace], LatencyModel] | None = None,
                 latency_table: str | None = None, max_tries: int = 1000) -> None:
        super().__init__(space, seed)
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        if latency_table is not None and latency_model is not None:
            raise ValueError("give latency_model or latency_table, not both")
        self.max_tries = max_tries
        model = (LatencyTable.load(space, latency_table) if latency_table is not None
                 else (latency_model or FlopsProxy)(space))
        self.limit = LatencyLimit(model, max_latency)
        self.pool = PartialModelPool()

    @override
    def sample(self, step: int) -> Arch:
        generator = step_generator(self.seed, "pool", step)
        if not self.pool.members:
            return self.space.sample(generator)
        # The member is the step's first draw, whatever the limit: every member trains equally often, however
        # few of its completions meet the limit (section 3.3 samples a partial model, then completes it).
        n = len(self.pool.members)
        i = int(torch.randint(n, (1,), generator=generator))
        member = self.pool.members[i]
        found = valid_completions(self.space, member, 1, generator, self.limit, self.max_tries)
        if not found:
            raise RuntimeError(
                f"no completion of pool member {i + 1} of {n}, {prefix_text(self.space, member)}, met "
                f"{self.limit.describe()} in {self.max_tries} tries at step {step}; relax max_latency (raise it "
                f"above {self.limit.max_latency}) or raise max_tries"
            )
        return found[0]

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "pool": self.pool.state_dict()}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "pool" in state:
            self.pool.load_state_dict(state["pool"])
