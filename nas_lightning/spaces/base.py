"""The search-space abstraction (docs/design_choices.md, "Shared vocabulary").

A space is an ordered list of decisions, each with named choices. It samples, encodes and decodes
archs, enumerates itself when small, mutates and crosses archs over for evolution, and counts params
and FLOPs per arch (cached; looked up in an additive cost table where the space has one). It owns its
grammar and knows nothing about modules or training: the network that runs its archs is registered for
its class in ``NETWORKS`` by ``nas_lightning.supernet`` (which imports the spaces, never the other way
round), and ``build_supernet`` / ``build_network`` look it up there.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nas_lightning.spaces.arch import Arch
from nas_lightning.utils.registry import Registry


class ArchFormatError(ValueError):
    """An arch string, dict or index list that does not belong to the space."""


#: Longest value an error message repeats in full (``short_repr``).
SHOWN_CHARS = 200


def short_repr(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message; a longer one (a multi-megabyte arch string, say) is cut to its
    start and its length, so the message stays one readable line."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(value)
    start = repr(text[:limit]) if isinstance(value, str) else text[:limit]
    return f"{start}... ({len(text):,} characters)"


@dataclass(frozen=True)
class Decision:
    name: str
    choices: tuple[str, ...]

    def index(self, choice: str, context: str) -> int:
        try:
            return self.choices.index(choice)
        except ValueError:
            raise ArchFormatError(
                f"unknown op {short_repr(choice)} for decision {self.name!r} in {short_repr(context)}; "
                f"choose one of {list(self.choices)}"
            ) from None


#: ``SearchSpace.cost`` keeps at most this many archs of a space with a cost table (lookups are cheap to redo).
TABLE_COST_CACHE_SIZE = 1 << 16


@dataclass(frozen=True)
class OpSite:
    """One place where a decision's op runs: built as ``build_candidate(op, c_in, c_out, stride)`` by the
    space's network class, it sees inputs of ``input_shape`` (channels, height, width)."""

    c_in: int
    c_out: int
    stride: int
    input_shape: tuple[int, int, int]


@dataclass(frozen=True)
class CostTable:
    """An additive cost model: (params, FLOPs) of an arch = ``fixed`` + the sum over decisions d of
    ``entries[d][choice_d]``."""

    fixed: tuple[int, int]
    entries: tuple[tuple[tuple[int, int], ...], ...]

    def __call__(self, indices: Sequence[int]) -> tuple[int, int]:
        params, flops = self.fixed
        for row, i in zip(self.entries, indices, strict=True):
            p, f = row[i]
            params, flops = params + p, flops + f
        return params, flops


def count_module_cost(module: nn.Module, input_shape: Sequence[int]) -> tuple[int, int]:
    """(params, FLOPs) of ``module`` in eval mode on one input of ``input_shape``, FLOPs counted by
    ``torch.utils.flop_counter`` (a multiply-add is 2)."""
    params = sum(p.numel() for p in module.parameters())
    module.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(torch.zeros(1, *input_shape))
    return params, int(counter.get_total_flops())


class SearchSpace(ABC):
    """Base class of every search space. Subclasses define the decisions and the string format."""

    #: channels, height, width of the input images; set by subclasses in ``__init__``.
    in_channels: int
    input_size: int
    num_classes: int
    #: whether the supernet's searchable BN layers learn affine parameters (stand-alone networks' always do).
    supernet_bn_affine: bool

    def __init__(self) -> None:
        self._cost_cache: dict[tuple[int, ...], tuple[int, int]] = {}
        self._cost_table: CostTable | None = None
        self._cost_table_known = False

    # --- structure -------------------------------------------------------------------------------
    @property
    @abstractmethod
    def decisions(self) -> list[Decision]: ...

    @property
    def num_decisions(self) -> int:
        return len(self.decisions)

    @property
    def num_archs(self) -> int:
        return math.prod(len(d.choices) for d in self.decisions)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.input_size, self.input_size)

    # --- encoding ----------------------------------------------------------------------------------
    @abstractmethod
    def format(self, choices: Sequence[str]) -> str:
        """Canonical string of one arch given its choice names (one per decision)."""

    @abstractmethod
    def parse(self, text: str) -> list[str]:
        """Choice names (one per decision) from an arch string; raises ``ArchFormatError``."""

    def arch(self, indices: Sequence[int]) -> Arch:
        indices = tuple(int(i) for i in indices)
        if len(indices) != self.num_decisions:
            raise ArchFormatError(
                f"{type(self).__name__} archs have {self.num_decisions} decisions, "
                f"got {len(indices)}: {short_repr(indices)}"
            )
        for i, d in zip(indices, self.decisions):
            if not 0 <= i < len(d.choices):
                raise ArchFormatError(
                    f"choice index {i} out of range for decision {d.name!r} ({len(d.choices)} choices)"
                )
        return Arch(indices, self.format([d.choices[i] for i, d in zip(indices, self.decisions)]))

    def decode(self, text: str | Arch) -> Arch:
        if isinstance(text, Arch):
            return self.arch(text.indices)
        names = self.parse(text.strip())
        if len(names) != self.num_decisions:
            raise ArchFormatError(
                f"{short_repr(text)} has {len(names)} choices but {type(self).__name__} has {self.num_decisions} "
                "decisions"
            )
        return self.arch([d.index(n, text) for n, d in zip(names, self.decisions)])

    def encode(self, arch: Arch) -> str:
        return arch.text

    def choice_names(self, arch: Arch) -> list[str]:
        return [d.choices[i] for i, d in zip(arch.indices, self.decisions)]

    def to_dict(self, arch: Arch) -> dict[str, str]:
        return {d.name: d.choices[i] for i, d in zip(arch.indices, self.decisions)}

    def from_dict(self, choices: dict[str, str]) -> Arch:
        missing = [d.name for d in self.decisions if d.name not in choices]
        extra = sorted(set(choices) - {d.name for d in self.decisions})
        if missing or extra:
            raise ArchFormatError(f"arch dict does not match {type(self).__name__}: missing {short_repr(missing)}, "
                                  f"unknown {short_repr(extra)}")
        return self.arch([d.index(choices[d.name], str(choices)) for d in self.decisions])

    def to_tensor(self, archs: Sequence[Arch]) -> torch.Tensor:
        """Index tensor of shape (len(archs), num_decisions)."""
        return torch.tensor([a.indices for a in archs], dtype=torch.long).reshape(len(archs), self.num_decisions)

    def from_tensor(self, indices: torch.Tensor) -> list[Arch]:
        return [self.arch(row) for row in indices.tolist()]

    # --- sampling and evolution ---------------------------------------------------------------------
    def sample_many(self, n: int, generator: torch.Generator) -> list[Arch]:
        """``n`` archs drawn uniformly, one independent choice per decision, from a seeded generator."""
        sizes = torch.tensor([len(d.choices) for d in self.decisions], dtype=torch.float64)
        u = torch.rand((n, self.num_decisions), generator=generator, dtype=torch.float64)
        return self.from_tensor((u * sizes).floor().long())

    def sample(self, generator: torch.Generator) -> Arch:
        return self.sample_many(1, generator)[0]

    def arch_at(self, index: int) -> Arch:
        """The ``index``-th arch in ``enumerate`` order (mixed radix, last decision fastest)."""
        if not 0 <= index < self.num_archs:
            raise IndexError(f"arch index {index} out of range for a space of {self.num_archs} archs")
        digits = []
        for d in reversed(self.decisions):
            index, digit = divmod(index, len(d.choices))
            digits.append(digit)
        return self.arch(digits[::-1])

    def enumerate(self) -> Iterator[Arch]:
        for indices in itertools.product(*(range(len(d.choices)) for d in self.decisions)):
            yield self.arch(indices)

    def canonical(self, arch: Arch) -> Arch:
        """One representative of the archs that compute the same function as ``arch`` (isomorphic cells, dead
        edges); searches evaluate it instead of every equivalent arch. Spaces without such a notion: ``arch``."""
        return arch

    def mutate(self, arch: Arch, prob: float, generator: torch.Generator) -> Arch:
        """Each decision is resampled uniformly with probability ``prob`` (SPOS evolution)."""
        flip = torch.rand(self.num_decisions, generator=generator) < prob
        fresh = self.sample(generator).indices
        return self.arch([f if m else a for a, f, m in zip(arch.indices, fresh, flip.tolist())])

    def crossover(self, a: Arch, b: Arch, generator: torch.Generator) -> Arch:
        """Uniform crossover: each decision comes from either parent with probability 1/2."""
        pick = torch.rand(self.num_decisions, generator=generator) < 0.5
        return self.arch([x if p else y for x, y, p in zip(a.indices, b.indices, pick.tolist())])

    # --- cost --------------------------------------------------------------------------------------
    def cost(self, arch: Arch) -> tuple[int, int]:
        """(params, FLOPs) of the stand-alone network, cached per arch.

        FLOPs are counted by ``torch.utils.flop_counter`` for one input image (a multiply-add is 2). A space with
        a cost table (``cost_table``) looks the pair up there, exactly; any other space counts each arch's
        network (``count_cost``).
        """
        cost = self._cost_cache.get(arch.indices)
        if cost is None:
            table = self.cost_table()
            if table is None:
                cost = self.count_cost(arch)
            else:
                if len(self._cost_cache) >= TABLE_COST_CACHE_SIZE:
                    self._cost_cache.clear()  # PC-NAS draws millions of completions: keep memory bounded
                cost = table(arch.indices)
            self._cost_cache[arch.indices] = cost
        return cost

    def params(self, arch: Arch) -> int:
        return self.cost(arch)[0]

    def flops(self, arch: Arch) -> int:
        return self.cost(arch)[1]

    def count_cost(self, arch: Arch) -> tuple[int, int]:
        """(params, FLOPs) counted on a stand-alone network of ``arch`` built for the purpose (not cached)."""
        return count_module_cost(self.build_network(arch), self.input_shape)

    def op_sites(self, decision: int) -> list[OpSite] | None:
        """Hook of additive spaces: every place where the op chosen at ``decision`` runs in the stand-alone network.

        A space returns the sites only where no choice changes anything but its own op's params and FLOPs: each
        site's input shape is fixed by the macro structure, whatever the other decisions choose. None (the
        default): not additive, and ``cost`` counts each arch's network.
        """
        return None

    def cost_table(self) -> CostTable | None:
        """The space's additive cost model, computed once; None where ``op_sites`` is None for some decision.

        The entry of (decision, choice) counts the op (built by the network class's ``build_candidate``, as its
        choice blocks build it) in isolation on the input shape of each of its sites; the fixed part is the count
        of the first arch's network (every decision at its first choice) less that arch's entries. The table must
        reproduce the count of the last arch's network (every decision at its last choice), or this raises.
        """
        if not self._cost_table_known:
            sites = [self.op_sites(d) for d in range(self.num_decisions)]
            known = [s for s in sites if s is not None]
            self._cost_table = self._additive_cost_table(known) if len(known) == len(sites) else None
            self._cost_table_known = True
        return self._cost_table

    def _additive_cost_table(self, sites: list[list[OpSite]]) -> CostTable:
        build = self.network_class.build_candidate  # type: ignore[attr-defined]
        counted: dict[tuple[str, OpSite], tuple[int, int]] = {}  # equal sites (cells, layers) are counted once

        def entry(op: str, op_sites: list[OpSite]) -> tuple[int, int]:
            params = flops = 0
            for site in op_sites:
                if (op, site) not in counted:
                    counted[op, site] = count_module_cost(build(op, site.c_in, site.c_out, site.stride),
                                                          site.input_shape)
                params, flops = params + counted[op, site][0], flops + counted[op, site][1]
            return params, flops

        entries = tuple(tuple(entry(op, s) for op in d.choices) for d, s in zip(self.decisions, sites))
        first = self.arch([0] * self.num_decisions)
        params, flops = self.count_cost(first)
        choice_params, choice_flops = CostTable((0, 0), entries)(first.indices)
        table = CostTable((params - choice_params, flops - choice_flops), entries)
        last = self.arch([len(d.choices) - 1 for d in self.decisions])
        if table(last.indices) != (counted_last := self.count_cost(last)):
            raise RuntimeError(
                f"{type(self).__name__}.op_sites does not describe its network: the cost table gives (params, FLOPs) "
                f"{table(last.indices)} for {last.text!r}, counting its network gives {counted_last}; fix "
                f"op_sites, or return None where a choice changes the cost of anything but its own op"
            )
        return table

    # --- builders ----------------------------------------------------------------------------------
    @property
    def network_class(self) -> type[nn.Module]:
        """The network registered for this space's class (or the nearest base class that has one)."""
        for cls in type(self).__mro__:
            if cls in NETWORKS:
                return NETWORKS.get(cls)
        raise LookupError(
            f"no network is registered for {type(self).__name__}: `import nas_lightning.supernet` registers "
            f"those of the built-in spaces; a new space registers its own with @NETWORKS.register(SpaceClass)"
        )

    def build_supernet(self) -> nn.Module:
        """A ``nas_lightning.supernet.Supernet`` holding the weights of every choice; ``forward(x, arch)`` runs
        one path."""
        return self.network_class(self, None, bn_affine=self.supernet_bn_affine)

    def build_network(self, arch: Arch) -> nn.Module:
        """A stand-alone network of one arch, trained from scratch or loaded from a supernet (``export``)."""
        return self.network_class(self, self.decode(arch), bn_affine=True)


#: The network class of each space class, called as ``network_class(space, fixed_arch, bn_affine=...)``
#: (``fixed_arch`` None: the supernet). Filled by ``nas_lightning.supernet`` when it is imported.
NETWORKS: Registry[type[SearchSpace], type[nn.Module]] = Registry("network of space")
