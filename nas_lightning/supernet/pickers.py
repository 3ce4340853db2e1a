"""Copy pickers of reduced weight sharing (Zhang et al., "Deeper Insights into Weight Sharing in Neural
Architecture Search", arXiv:2001.01431, section 5): group sharing and prefix sharing, pure functions of the arch and
a seed (docs/design_choices.md, "Reduced sharing").

The parts are the supernet's ``stem``, each entry of its ``body`` (the searchable layers or cells, with any fixed
blocks between stages) and its ``head``.

- Group sharing g: the archs fall into g groups and each group is a fully shared supernet of its own: every part
  runs the copy of the arch's group. ``group_by="shuffle"``: a seeded permutation of the enumeration, then
  ``position % g`` (balanced groups, different per seed; a space of more than ``MAX_SHUFFLED_ARCHS`` archs is
  permuted by a seeded affine bijection of its indices instead); ``"contiguous"``: g blocks of the enumeration order;
  ``"decisions"``: the choices of the first decisions (g must be the number of their combinations).
- Prefix sharing k: the stem and ``body[:k]`` have one copy, shared by every arch; ``body[k:]`` and the head are
  private to each arch (g = 1) or to each group (g > 1). With k = len(body) nothing is private.

g = 1 with no prefix (or k = len(body)) is plain SPOS: no part gets a second copy. g = the number of archs is
stand-alone training of every arch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cached_property
from typing import Any, Literal

import torch
from typing_extensions import override

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.supernet.copies import CopyPicker
from nas_lightning.utils.distributed import step_generator

GroupBy = Literal["shuffle", "contiguous", "decisions"]

#: Most archs a space may have for a uniformly random shuffle of its enumeration (a permutation of that length is
#: built); a larger space is shuffled by a seeded affine bijection ``(a * index + b) mod N`` instead.
MAX_SHUFFLED_ARCHS = 1 << 24
#: Most copies a picker gives one part: more would not fit in memory for any network of this project.
MAX_COPIES = 1 << 16


def arch_index(space: SearchSpace, arch: Arch) -> int:
    """The position of ``arch`` in ``space.enumerate()`` order: the inverse of ``SearchSpace.arch_at`` (mixed
    radix, last decision fastest)."""
    index = 0
    for i, d in zip(arch.indices, space.decisions, strict=True):
        index = index * len(d.choices) + i
    return index


class ReducedSharingPicker(CopyPicker):
    """Group and prefix sharing (module docstring) for a supernet with ``num_body`` body parts.

    Args:
        space: the search space; its enumeration index numbers the archs.
        num_body: ``len(supernet.body)``.
        groups: g >= 1.
        group_by: how archs fall into groups: ``"shuffle"``, ``"contiguous"`` or ``"decisions"``.
        prefix: k in [0, num_body], body parts shared by every arch; None: no prefix sharing (g groups of whole
            supernets).
        seed: seed of the ``"shuffle"`` grouping.
    """

    def __init__(self, space: SearchSpace, num_body: int, groups: int = 1, group_by: GroupBy = "shuffle",
                 prefix: int | None = None, seed: int = 0) -> None:
        n = space.num_archs
        if isinstance(groups, bool) or not isinstance(groups, int) or not 1 <= groups <= n:
            raise ValueError(f"groups must be an int in [1, {n}] (the number of archs), got {groups!r}")
        if group_by not in ("shuffle", "contiguous", "decisions"):
            raise ValueError(f"group_by must be 'shuffle', 'contiguous' or 'decisions', got {group_by!r}")
        if prefix is not None and not 0 <= prefix <= num_body:
            raise ValueError(f"prefix must be None or in [0, {num_body}] (the supernet's body parts), got {prefix}")
        self.space, self.num_body, self.groups, self.group_by = space, num_body, groups, group_by
        self.prefix, self.seed = prefix, seed
        self._decisions = self._grouping_decisions() if group_by == "decisions" and groups > 1 else 0
        for part, m in self.num_copies.items():
            if m > MAX_COPIES:
                raise ValueError(f"{part!r} would need {m} copies (one per arch of {n}); limit {MAX_COPIES}: use "
                                 "groups (g > 1) with a prefix, or a smaller space")

    def _grouping_decisions(self) -> int:
        combos = 1
        for d, decision in enumerate(self.space.decisions):
            combos *= len(decision.choices)
            if combos == self.groups:
                return d + 1
        raise ValueError(f"group_by='decisions' needs g to be the number of choice combinations of the first "
                         f"decisions; got g={self.groups}")

    @cached_property
    def _permutation_position(self) -> torch.Tensor:
        """position[index] of each enumeration index in the seeded shuffle."""
        order = torch.randperm(self.space.num_archs, generator=step_generator(self.seed, "copy_groups", 0))
        position = torch.empty_like(order)
        position[order] = torch.arange(len(order))
        return position

    @cached_property
    def _affine_shuffle(self) -> tuple[int, int]:
        """(a, b) with a coprime to N, drawn from the seed: ``(a * index + b) mod N`` permutes the enumeration."""
        n = self.space.num_archs
        gen = step_generator(self.seed, "copy_groups", 1)
        draw = [int(v) for v in torch.randint(0, 2**62, (64,), generator=gen)]
        a = next((v % n for v in draw if math.gcd(v % n, n) == 1), 1)
        return a, draw[-1] % n

    def group(self, arch: Arch) -> int:
        """The group of ``arch``: a function of the arch and the seed alone."""
        g = self.groups
        if g == 1:
            return 0
        index = arch_index(self.space, arch)
        if self.group_by == "contiguous":
            return index * g // self.space.num_archs
        if self.group_by == "decisions":
            return arch_index_prefix(self.space, arch, self._decisions)
        if self.space.num_archs > MAX_SHUFFLED_ARCHS:
            a, b = self._affine_shuffle
            return (a * index + b) % self.space.num_archs % g
        return int(self._permutation_position[index]) % g

    @property
    def shared_parts(self) -> list[str]:
        """Parts with one copy for every arch."""
        if self.prefix is None:
            return [] if self.groups > 1 else self.parts
        if self.prefix == self.num_body:
            return self.parts
        return ["stem"] + [f"body.{i}" for i in range(self.prefix)]

    @property
    def parts(self) -> list[str]:
        return ["stem"] + [f"body.{i}" for i in range(self.num_body)] + ["head"]

    @property
    def private_copies(self) -> int:
        """Copies of a part that is not shared: one per group, or one per arch (a prefix with g = 1)."""
        return self.groups if self.groups > 1 or self.prefix is None else self.space.num_archs

    @cached_property
    def _num_copies(self) -> dict[str, int]:
        shared = set(self.shared_parts)
        return {p: 1 if p in shared else self.private_copies for p in self.parts}

    @property
    @override
    def num_copies(self) -> Mapping[str, int]:
        return self._num_copies

    def unit(self, arch: Arch) -> int:
        """The copy of ``arch`` in every part that is not shared: its group, or its own index."""
        if self.groups > 1 or self.prefix is None:
            return self.group(arch)
        return arch_index(self.space, arch)

    @override
    def __call__(self, arch: Arch) -> dict[str, int]:
        u = self.unit(arch)
        return {p: u for p, m in self._num_copies.items() if m > 1}

    def state_dict(self) -> dict[str, Any]:
        return {"groups": self.groups, "group_by": self.group_by, "prefix": self.prefix, "seed": self.seed,
                "num_body": self.num_body}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a checkpoint's grouping: its seed is adopted (as the samplers adopt theirs), and a checkpoint
        whose copies are laid out otherwise is refused, since its weights would land in the wrong archs."""
        mine = self.state_dict()
        diff = {k: (state.get(k), v) for k, v in mine.items() if k != "seed" and state.get(k) != v}
        if diff:
            raise ValueError("the checkpoint's reduced sharing differs from this run's (checkpoint vs run): "
                             + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in diff.items()))
        self.seed = int(state.get("seed", self.seed))
        for cached in ("_permutation_position", "_affine_shuffle"):  # the shuffle of the adopted seed
            self.__dict__.pop(cached, None)

def arch_index_prefix(space: SearchSpace, arch: Arch, decisions: int) -> int:
    """Mixed-radix index of ``arch``'s choices at its first ``decisions`` decisions."""
    index = 0
    for i, d in zip(arch.indices[:decisions], space.decisions[:decisions]):
        index = index * len(d.choices) + i
    return index
