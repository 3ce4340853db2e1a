"""The DARTS cell search space (Liu et al., DARTS, arXiv:1806.09055, section 2.1), sampled as in WPNAS
(Lin et al., papers/wpnas, section 4.2).

Each of the normal and the reduction cell has intermediate nodes 2..5; node j picks two distinct
parents among nodes 0..j-1 and one of the 8 ``DARTS_PRIMITIVES`` per input edge. Following WPNAS,
the parent pair and the two ops are separate, independent decisions, so uniform sampling draws the
pair uniformly among the C(j, 2) pairs and each op uniformly among the 8. Decisions, in order: for
``normal`` then ``reduce``, for node 2..5: ``{cell}.{node}.op_a`` (op on the edge from parent a),
``{cell}.{node}.op_b`` (op on the edge from parent b), ``{cell}.{node}.parents`` (``"a,b"`` with
a < b, the pairs in lexicographic order): 24 decisions, (8^8 * 1 * 3 * 6 * 10)^2 ~ 9.1e18 archs.
The choice names are strings (the arch string is the official format); the network gets the typed
values: ``genotype(arch)`` gives per cell type one ``Gene`` (two ``Edge(op, parent)``) per node, and
``cell_edges`` the ops each ``(node, parent)`` edge holds.

Grammar of an arch string: the DARTS ``Genotype`` repr (the authors' ``genotypes.py``)::

    Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ...], normal_concat=[2, 3, 4, 5],
             reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ...], reduce_concat=[2, 3, 4, 5])

(on one line). ``normal`` and ``reduce`` list 8 ``(op, parent)`` pairs, two per node 2..5 in node
order; the concat lists are always ``[2, 3, 4, 5]``. Canonical form: exactly the repr above, the two
edges of a node listed with the smaller parent first. ``decode`` also accepts the published variants
(edges of a node in either order, ``range(2, 6)`` for the concat, and the nested ``[[edge, edge], ...]``
lists of the ``pt.darts`` code) and returns the canonical arch. Parsing uses ``ast`` and never
evaluates the text.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Sequence
from functools import cache, cached_property
from typing import Any, NamedTuple

from typing_extensions import override

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import ArchFormatError, Decision, SearchSpace, short_repr

#: The DARTS ``PRIMITIVES``, in the authors' order.
DARTS_PRIMITIVES: tuple[str, ...] = (
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)
#: The two cell genotypes, in arch order.
DARTS_CELL_TYPES: tuple[str, ...] = ("normal", "reduce")
#: Intermediate nodes of a cell; nodes 0 and 1 are the (preprocessed) outputs of the two previous cells.
DARTS_NODES: tuple[int, ...] = (2, 3, 4, 5)
#: Decisions per node, in arch order: op on the edge from the smaller parent, op on the edge from the
#: larger parent (in the order the genotype string lists them), then the parent pair.
DECISIONS_PER_NODE = 3


class ParentPair(NamedTuple):
    """The two distinct parents ``a < b`` of a node; ``str`` gives the choice name ``"a,b"``."""

    a: int
    b: int

    @override
    def __str__(self) -> str:
        return f"{self.a},{self.b}"


class Edge(NamedTuple):
    """One input edge of a node: its op and the node it reads (0 and 1 are the cell's inputs)."""

    op: str
    parent: int


class Gene(NamedTuple):
    """One intermediate node of a genotype: its two input edges, the smaller parent's first."""

    a: Edge
    b: Edge


@cache
def parent_pairs(node: int) -> tuple[ParentPair, ...]:
    """All unordered pairs of distinct predecessors of ``node``, in lexicographic order (the choice order)."""
    return tuple(ParentPair(a, b) for a, b in itertools.combinations(range(node), 2))

#: The DARTS (second order) CIFAR-10 cell, as published in the authors' ``genotypes.py`` (``DARTS_V2``).
DARTS_V2_GENOTYPE = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
    "normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), "
    "('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], "
    "reduce_concat=[2, 3, 4, 5])"
)

_CONCAT = list(DARTS_NODES)
_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
_EXAMPLE = "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ...], normal_concat=[2, 3, 4, 5], reduce=..."


class DartsSpace(SearchSpace):
    """The DARTS cell space with the DARTS CIFAR macro network.

    Args:
        C: channels of the first cells (16 for DARTS search, 36 for DARTS evaluation).
        layers: cells (8 for search, 20 for evaluation); reduction cells at layers//3 and 2*layers//3.
        num_classes: classifier outputs.
        in_channels: image channels (3 for CIFAR, 1 for Fashion-MNIST).
        input_size: image side; must be divisible by 2 for each reduction cell (FactorizedReduce).
        stem_multiplier: stem channels are ``stem_multiplier * C`` (3 in DARTS).
        supernet_bn_affine: whether the supernet's cell BN layers (ops and preprocessing) learn affine
            parameters (the DARTS search network and SPOS: no). Stand-alone networks always have them,
            as in the DARTS evaluation network.

    No cost table (``SearchSpace.op_sites`` stays None): the cost is not additive over the decisions. In a
    reduction cell an edge from node 0 or 1 runs its op at stride 2 and one from a later node at stride 1,
    so the cost of ``op_a`` / ``op_b`` depends on the ``parents`` decision (a ``skip_connect`` is a
    ``FactorizedReduce`` or nothing); ``cost`` counts each arch's network.
    """

    def __init__(self, C: int = 16, layers: int = 8, num_classes: int = 10, in_channels: int = 3,
                 input_size: int = 32, stem_multiplier: int = 3, supernet_bn_affine: bool = False) -> None:
        super().__init__()
        if C < 1 or layers < 1 or stem_multiplier < 1:
            raise ValueError(
                f"DartsSpace needs C, layers and stem_multiplier >= 1, got C={C}, layers={layers}, "
                f"stem_multiplier={stem_multiplier}"
            )
        self.C, self.layers, self.stem_multiplier = C, layers, stem_multiplier
        self.num_classes, self.in_channels, self.input_size = num_classes, in_channels, input_size
        self.supernet_bn_affine = supernet_bn_affine
        factor = 2 ** len(self.reduction_layers)
        if input_size < factor or input_size % factor:
            raise ValueError(
                f"input_size={input_size} must be a multiple of {factor}: the {len(self.reduction_layers)} "
                f"reduction cells of a {layers}-layer DARTS network each halve it exactly (FactorizedReduce)"
            )

    @property
    def reduction_layers(self) -> frozenset[int]:
        return frozenset({self.layers // 3, 2 * self.layers // 3})

    @cached_property
    @override
    def decisions(self) -> list[Decision]:  # type: ignore[override]
        decisions = []
        for cell in DARTS_CELL_TYPES:
            for node in DARTS_NODES:
                decisions.append(Decision(f"{cell}.{node}.op_a", DARTS_PRIMITIVES))
                decisions.append(Decision(f"{cell}.{node}.op_b", DARTS_PRIMITIVES))
                decisions.append(Decision(f"{cell}.{node}.parents", tuple(str(p) for p in parent_pairs(node))))
        return decisions

    def genotype(self, arch: Arch) -> dict[str, tuple[Gene, ...]]:
        """Per cell type, the genes of its nodes 2..5 in order, typed from the arch's choice indices."""
        return self._genotype(arch.indices)

    def cell_edges(self, cell_type: str, arch: Arch | None = None) -> dict[tuple[int, int], tuple[str, ...]]:
        """The ops that a cell of ``cell_type`` holds on each ``(node, parent)`` edge: every op on every edge
        (``arch`` None, the supernet) or the arch's op on each of its two edges per node. Ordered by node,
        then parent."""
        if arch is None:
            return {(node, src): DARTS_PRIMITIVES for node in DARTS_NODES for src in range(node)}
        genes = self.genotype(arch)[cell_type]
        return {(node, e.parent): (e.op,) for node, gene in zip(DARTS_NODES, genes) for e in gene}

    def _genotype(self, indices: Sequence[int]) -> dict[str, tuple[Gene, ...]]:
        genotype: dict[str, tuple[Gene, ...]] = {}
        for c, cell in enumerate(DARTS_CELL_TYPES):
            genes = []
            for n, node in enumerate(DARTS_NODES):
                i_a, i_b, i_pair = indices[(c * len(DARTS_NODES) + n) * DECISIONS_PER_NODE:][:DECISIONS_PER_NODE]
                pair = parent_pairs(node)[i_pair]
                genes.append(Gene(Edge(DARTS_PRIMITIVES[i_a], pair.a), Edge(DARTS_PRIMITIVES[i_b], pair.b)))
            genotype[cell] = tuple(genes)
        return genotype

    @override
    def format(self, choices: Sequence[str]) -> str:
        genotype = self._genotype([d.choices.index(c) for c, d in zip(choices, self.decisions)])
        fields = []
        for cell in DARTS_CELL_TYPES:
            edges = ", ".join(f"({e.op!r}, {e.parent})" for gene in genotype[cell] for e in gene)
            fields.append(f"{cell}=[{edges}], {cell}_concat={_CONCAT}")
        return f"Genotype({', '.join(fields)})"

    @override
    def parse(self, text: str) -> list[str]:
        try:
            call = ast.parse(text, mode="eval").body
        except (SyntaxError, ValueError) as e:
            raise ArchFormatError(
                f"DARTS arch {short_repr(text)} is not a Genotype(...) expression ({short_repr(str(e))}); "
                f"e.g. {_EXAMPLE}"
            ) from None
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Genotype"
                and not call.args):
            raise ArchFormatError(f"DARTS arch {short_repr(text)} must be Genotype(...) with keyword fields; "
                                  f"e.g. {_EXAMPLE}")
        fields = {kw.arg: kw.value for kw in call.keywords}
        if set(fields) != set(_FIELDS) or len(fields) != len(call.keywords):
            raise ArchFormatError(f"DARTS arch {short_repr(text)} must have exactly the fields {list(_FIELDS)}")
        choices: list[str] = []
        for cell in DARTS_CELL_TYPES:
            concat = _concat(fields[f"{cell}_concat"], text)
            if concat != _CONCAT:
                raise ArchFormatError(f"{cell}_concat of {short_repr(text)} is {short_repr(concat)}; "
                                      f"this space concatenates {_CONCAT}")
            edges = _edges(fields[cell], cell, text)
            for n, node in enumerate(DARTS_NODES):
                (op_a, a), (op_b, b) = sorted(edges[2 * n: 2 * n + 2], key=lambda e: e[1])
                if a == b or not 0 <= a < b < node:
                    raise ArchFormatError(
                        f"node {node} of the {cell} cell in {short_repr(text)} has parents {a} and {b}; "
                        f"it needs two distinct parents among 0..{node - 1}"
                    )
                choices += [op_a, op_b, str(ParentPair(a, b))]
        return choices


def _literal(node: ast.expr, what: str, text: str) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError):
        raise ArchFormatError(f"{what} of {short_repr(text)} must be a literal list, "
                             f"got {short_repr(ast.unparse(node))}") from None


def _concat(node: ast.expr, text: str) -> list[int]:
    """``[2, 3, 4, 5]`` or ``range(2, 6)`` (both appear in published genotypes)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        args = [_literal(a, "range argument", text) for a in node.args]
        if not args or len(args) > 3 or not all(isinstance(a, int) for a in args) or node.keywords:
            raise ArchFormatError(f"bad concat {short_repr(ast.unparse(node))} in {short_repr(text)}; "
                                  "use [2, 3, 4, 5]")
        return list(range(*args))
    value = _literal(node, "concat", text)
    return list(value) if isinstance(value, (list, tuple)) else value


def _edges(node: ast.expr, cell: str, text: str) -> list[tuple[str, int]]:
    """Eight ``(op, parent)`` edges, from a flat list or from four nested two-edge lists."""
    value = _literal(node, cell, text)
    if isinstance(value, (list, tuple)) and all(
        isinstance(g, (list, tuple)) and len(g) == 2 and all(isinstance(e, (list, tuple)) for e in g) for g in value
    ):
        value = [e for g in value for e in g]
    edges = []
    for e in value if isinstance(value, (list, tuple)) else [value]:
        if not (isinstance(e, (list, tuple)) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], int)
                and not isinstance(e[1], bool)):
            raise ArchFormatError(f"edge {short_repr(e)} of the {cell} cell in {short_repr(text)} must read "
                                  "('op', parent)")
        edges.append((e[0], e[1]))
    if len(edges) != 2 * len(DARTS_NODES):
        raise ArchFormatError(
            f"the {cell} cell of {short_repr(text)} lists {len(edges)} edges; it needs {2 * len(DARTS_NODES)}, "
            f"two per node {list(DARTS_NODES)}"
        )
    return edges
