"""NAS-Bench-201 / NATS-Bench topology search space (arXiv:2001.00326, arXiv:2009.00437).

Grammar of an arch string (the official one): three node groups joined by ``+``; group i lists the
edges into node i as ``|op~j|`` (input from node j), for j = 0..i-1::

    |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|

Decisions are the six edges in that order, each among the five ops of ``NB201_OPS``.

Isomorphism (``isomorphism_key``, ``canonical``): two cells are equivalent when they compute the same
sum of terms. A node is the multiset of its edges' terms; a ``none`` edge, and any op on a zero node, adds
nothing; a ``skip_connect`` passes its input node's terms on; another op is one term, op(input node).
The benchmark's own string (xautodl's ``CellStructure.to_unique_str(consider_zero=True)``,
``benchmark_unique_str`` here), under which the 15,625 cells are the 6,466 "unique topologies" of
arXiv:2001.00326 section 2.1, keeps a node whose inputs are all zero as the non-zero string ``#+#``; so
``|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|`` and the same cell with ``skip_connect~2``
count as two topologies although node 2 is zero. Without that artefact there are 4,930 classes, each a
union of the benchmark's (tests check both).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

from typing_extensions import override

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import Decision, OpSite, SearchSpace
from nas_lightning.spaces.cell_string import format_cell, parse_cell

NB201_OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: (to_node, from_node) of the six edges of a cell, in arch-string (and decision) order.
NB201_EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))


class NB201Space(SearchSpace):
    """The 15,625-arch cell space with its macro net.

    Args:
        C: channels of the first stage (16 in the benchmark).
        N: cells per stage (5 in the benchmark).
        num_classes: classifier outputs.
        in_channels: image channels (3 for CIFAR, 1 for Fashion-MNIST).
        input_size: image side, used for FLOPs.
        supernet_bn_affine: whether the supernet's cell BN layers learn affine parameters
            (SPOS practice: no). Stand-alone networks always have them, as in the benchmark.
    """

    def __init__(self, C: int = 16, N: int = 5, num_classes: int = 10, in_channels: int = 3,
                 input_size: int = 32, supernet_bn_affine: bool = False) -> None:
        super().__init__()
        if C < 1 or N < 1:
            raise ValueError(f"NB201Space needs C >= 1 and N >= 1, got C={C}, N={N}")
        self.C, self.N = C, N
        self.num_classes, self.in_channels, self.input_size = num_classes, in_channels, input_size
        self.supernet_bn_affine = supernet_bn_affine

    @cached_property
    @override
    def decisions(self) -> list[Decision]:  # type: ignore[override]
        return [Decision(f"{to}<-{src}", NB201_OPS) for to, src in NB201_EDGES]

    @override
    def format(self, choices: Sequence[str]) -> str:
        return format_cell(choices, NB201_EDGES)

    @override
    def parse(self, text: str) -> list[str]:
        return parse_cell(text, NB201_EDGES, "NAS-Bench-201",
                          "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|")

    @override
    def op_sites(self, decision: int) -> list[OpSite]:
        """Every cell runs the edge's op on the cell's shape: ``N`` sites per stage, of ``C``, ``2C`` and ``4C``
        channels at sides ``input_size``, halved (rounded up) by each stride-2 reduction block. The cost is
        additive (``SearchSpace.cost_table``): a ``none`` edge adds nothing, and a node whose inputs are all
        ``none`` is zeros of the same shape, on which the network still runs the ops leaving it."""
        sites, size = [], self.input_size
        for stage, c in enumerate((self.C, 2 * self.C, 4 * self.C)):
            size = size if stage == 0 else (size - 1) // 2 + 1
            sites += [OpSite(c, c, 1, (c, size, size))] * self.N
        return sites

    def benchmark_unique_str(self, arch: Arch) -> str:
        """xautodl's ``to_unique_str(consider_zero=True)``: the benchmark's 6,466 unique topologies."""
        nodes = {0: "0"}
        choices = self.choice_names(self.decode(arch))
        for node in (1, 2, 3):
            terms = []
            for op, (to, src) in zip(choices, NB201_EDGES):
                if to != node:
                    continue
                if op == "none" or nodes[src] == "#":
                    terms.append("#")
                elif op == "skip_connect":
                    terms.append(nodes[src])
                else:
                    terms.append(f"({nodes[src]})@{op}")
            nodes[node] = "+".join(sorted(terms))
        return nodes[3]

    def isomorphism_key(self, arch: Arch) -> str:
        """The sum of terms the cell computes (see the module docstring); equal keys, equal functions."""
        nodes: dict[int, list[str]] = {0: ["x"]}
        choices = self.choice_names(self.decode(arch))
        for node in (1, 2, 3):
            terms: list[str] = []
            for op, (to, src) in zip(choices, NB201_EDGES):
                if to != node or op == "none" or not nodes[src]:
                    continue  # adds zero
                if op == "skip_connect":
                    terms += nodes[src]
                else:
                    terms.append(f"{op}({'+'.join(nodes[src])})")
            nodes[node] = sorted(terms)
        return "+".join(nodes[3]) or "0"

    @cached_property
    def _representatives(self) -> dict[str, Arch]:
        # The first arch in enumeration order of each class: 'none' is choice 0, so dead edges read 'none'.
        reps: dict[str, Arch] = {}
        for arch in self.enumerate():
            reps.setdefault(self.isomorphism_key(arch), arch)
        return reps

    @override
    def canonical(self, arch: Arch) -> Arch:
        """The first arch (in ``enumerate`` order) equivalent to ``arch``; 4,930 distinct ones in all."""
        return self._representatives[self.isomorphism_key(arch)]
