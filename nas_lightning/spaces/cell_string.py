"""The NAS-Bench-201 arch-string grammar, shared by the cell spaces that use it.

A cell whose node i sums one op per earlier node j is written ``|op~0|+|op~0|op~1|+...``: one ``|``-delimited
group per intermediate node, joined by ``+``; ``op~j`` is the edge from node j (xautodl's ``Structure``).
"""

from __future__ import annotations

from collections.abc import Sequence

from nas_lightning.spaces.base import ArchFormatError, short_repr

Edge = tuple[int, int]  # (to node, from node)


def format_cell(choices: Sequence[str], edges: Sequence[Edge]) -> str:
    """The arch string of one op per edge, edges listed node by node."""
    nodes = sorted({to for to, _ in edges})
    return "+".join("|" + "|".join(f"{c}~{src}" for c, (to, src) in zip(choices, edges) if to == node) + "|"
                    for node in nodes)


def parse_cell(text: str, edges: Sequence[Edge], label: str, example: str) -> list[str]:
    """The op of each edge (in ``edges`` order, which must list them node by node, sources ascending) from an arch
    string; an ``ArchFormatError`` naming the part that is wrong, with ``example`` of the ``label`` format."""
    nodes = sorted({to for to, _ in edges})
    groups = text.split("+")
    if len(groups) != len(nodes):
        raise ArchFormatError(f"{label} arch {short_repr(text)} must have {len(nodes)} node groups joined by '+', "
                              f"e.g. {example!r}")
    choices: list[str] = []
    for node, group in zip(nodes, groups):
        sources = [src for to, src in edges if to == node]
        ops = [e for e in group.split("|") if e]
        if not (group.startswith("|") and group.endswith("|")) or len(ops) != len(sources):
            raise ArchFormatError(f"node {node} of {short_repr(text)} must list {len(sources)} edge(s) as "
                                  f"'|op~j|', got {short_repr(group)}")
        for src, edge in zip(sources, ops):
            op, sep, j = edge.partition("~")
            if not sep or j != str(src):
                raise ArchFormatError(f"edge {short_repr(edge)} of node {node} in {short_repr(text)} must read "
                                      f"'op~{src}'")
            choices.append(op)
    return choices
