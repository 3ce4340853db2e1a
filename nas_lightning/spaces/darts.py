"""The DARTS cell search space (Liu et al., DARTS, arXiv:1806.09055, section 2.1), sampled as in WPNAS
(Lin et al., papers/wpnas, section 4.2).

Each of the normal and the reduction cell has intermediate nodes 2..5; node j picks two distinct
parents among nodes 0..j-1 and one of the 8 ``DARTS_PRIMITIVES`` per input edge. Following WPNAS,
the parent pair and the two ops are separate, independent decisions, so uniform sampling draws the
pair uniformly among the C(j, 2) pairs and each op uniformly among the 8. Decisions, in order: for
``normal`` then ``reduce``, for node 2..5: ``{cell}.{node}.op_a`` (op on the edge from parent a),
``{cell}.{node}.op_b`` (op on the edge from parent b), ``{cell}.{node}.parents`` (``"a,b"`` with
a < b, the pairs in lexicographic order): 24 decisions, (8^8 * 1 * 3 * 6 * 10)^2 ~ 9.1e18 archs.

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
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import ArchFormatError, Decision, SearchSpace
from nas_lightning.supernet.darts import (
    DARTS_CELL_TYPES,
    DARTS_NODES,
    DartsNetwork,
    genes_from_choices,
    pair_name,
    parent_pairs,
)
from nas_lightning.supernet.darts_ops import DARTS_PRIMITIVES

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
    def decisions(self) -> list[Decision]:  # type: ignore[override]
        decisions = []
        for cell in DARTS_CELL_TYPES:
            for node in DARTS_NODES:
                decisions.append(Decision(f"{cell}.{node}.op_a", DARTS_PRIMITIVES))
                decisions.append(Decision(f"{cell}.{node}.op_b", DARTS_PRIMITIVES))
                decisions.append(Decision(f"{cell}.{node}.parents", tuple(pair_name(p) for p in parent_pairs(node))))
        return decisions

    def format(self, choices: Sequence[str]) -> str:
        genes = genes_from_choices(choices)
        fields = []
        for cell in DARTS_CELL_TYPES:
            edges = ", ".join(f"({op!r}, {src})" for gene in genes[cell] for src, op in gene)
            fields.append(f"{cell}=[{edges}], {cell}_concat={_CONCAT}")
        return f"Genotype({', '.join(fields)})"

    def parse(self, text: str) -> list[str]:
        try:
            call = ast.parse(text, mode="eval").body
        except (SyntaxError, ValueError) as e:
            raise ArchFormatError(
                f"DARTS arch {text!r} is not a Genotype(...) expression ({e}); e.g. {_EXAMPLE}"
            ) from None
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Genotype"
                and not call.args):
            raise ArchFormatError(f"DARTS arch {text!r} must be Genotype(...) with keyword fields; e.g. {_EXAMPLE}")
        fields = {kw.arg: kw.value for kw in call.keywords}
        if set(fields) != set(_FIELDS) or len(fields) != len(call.keywords):
            raise ArchFormatError(f"DARTS arch {text!r} must have exactly the fields {list(_FIELDS)}")
        choices: list[str] = []
        for cell in DARTS_CELL_TYPES:
            concat = _concat(fields[f"{cell}_concat"], text)
            if concat != _CONCAT:
                raise ArchFormatError(f"{cell}_concat of {text!r} is {concat}; this space concatenates {_CONCAT}")
            edges = _edges(fields[cell], cell, text)
            for n, node in enumerate(DARTS_NODES):
                (op_a, a), (op_b, b) = sorted(edges[2 * n: 2 * n + 2], key=lambda e: e[1])
                if a == b or not 0 <= a < b < node:
                    raise ArchFormatError(
                        f"node {node} of the {cell} cell in {text!r} has parents {a} and {b}; "
                        f"it needs two distinct parents among 0..{node - 1}"
                    )
                choices += [op_a, op_b, pair_name((a, b))]
        return choices

    def build_supernet(self) -> DartsNetwork:
        return DartsNetwork(self, None, bn_affine=self.supernet_bn_affine)

    def build_network(self, arch: Arch) -> DartsNetwork:
        return DartsNetwork(self, self.decode(arch), bn_affine=True)


def _literal(node: ast.expr, what: str, text: str) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError):
        raise ArchFormatError(f"{what} of {text!r} must be a literal list, got {ast.unparse(node)!r}") from None


def _concat(node: ast.expr, text: str) -> list[int]:
    """``[2, 3, 4, 5]`` or ``range(2, 6)`` (both appear in published genotypes)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        args = [_literal(a, "range argument", text) for a in node.args]
        if not args or len(args) > 3 or not all(isinstance(a, int) for a in args) or node.keywords:
            raise ArchFormatError(f"bad concat {ast.unparse(node)!r} in {text!r}; use [2, 3, 4, 5]")
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
            raise ArchFormatError(f"edge {e!r} of the {cell} cell in {text!r} must read ('op', parent)")
        edges.append((e[0], e[1]))
    if len(edges) != 2 * len(DARTS_NODES):
        raise ArchFormatError(
            f"the {cell} cell of {text!r} lists {len(edges)} edges; it needs {2 * len(DARTS_NODES)}, "
            f"two per node {list(DARTS_NODES)}"
        )
    return edges
