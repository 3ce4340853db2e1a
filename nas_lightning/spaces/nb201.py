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
from nas_lightning.spaces.base import ArchFormatError, Decision, SearchSpace

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
        groups = []
        for node in (1, 2, 3):
            edges = [f"{c}~{src}" for c, (to, src) in zip(choices, NB201_EDGES) if to == node]
            groups.append("|" + "|".join(edges) + "|")
        return "+".join(groups)

    @override
    def parse(self, text: str) -> list[str]:
        groups = text.split("+")
        if len(groups) != 3:
            raise ArchFormatError(
                f"NAS-Bench-201 arch {text!r} must have 3 node groups joined by '+', e.g. "
                "'|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|'"
            )
        choices: list[str] = []
        for node, group in enumerate(groups, start=1):
            edges = [e for e in group.split("|") if e]
            if not (group.startswith("|") and group.endswith("|")) or len(edges) != node:
                raise ArchFormatError(f"node {node} of {text!r} must list {node} edges as '|op~j|', got {group!r}")
            for src, edge in enumerate(edges):
                op, sep, j = edge.partition("~")
                if not sep or j != str(src):
                    raise ArchFormatError(f"edge {edge!r} of node {node} in {text!r} must read '{op or 'op'}~{src}'")
                choices.append(op)
        return choices

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
