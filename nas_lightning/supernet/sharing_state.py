"""DC-NAS's local weight-sharing states: a learned copy picker ("Distribution Consistent Neural Architecture
Search", the DC-NAS paper, sections 1-2: supernet weights and local sharing states are inferred in turn; the
sharing states are made tractable layer by layer with a clustering of archs per layer).

Vocabulary (docs/design_choices.md, "DC-NAS"):

- A *layer* is a decision d of the space's ordered decision list. Its op runs at one or more *sites* j (a cell
  space runs the same edge decision in every cell; a chain runs each layer once). A site's *block* is the
  ``ChoiceBlock`` that runs the op there, and its *parts* are the block's candidates ``<block>.candidates.<op>``
  with parameters: those get the M weight copies (``nas_lightning.supernet.copies``). ``SITE_LAYOUTS`` maps each
  network class to its sites; in DARTS the block of a site depends on the arch (the node's parents decision).
- The *context* of an arch at layer d is the one-hot encoding of its choices at every other decision. A K-means
  with K = M centres per (d, op) clusters contexts; an arch's *cluster* at layer d is the nearest centre of its
  context among the centres of (d, its op at d).
- The *sharing-state table* maps (d, j, op, cluster) to a copy of the part the arch runs at site j. Before the
  first inference every entry is copy 0: the supernet is plain SPOS.

``SharingState`` is the picker (``CopyPicker``): ``__call__(arch)`` gives the copy of every part the arch runs.
It is the only writer of the table; ``nas_lightning.search.sharing_update`` infers the next state and hands it
over with ``SharingState.adopt``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.spaces.darts import DARTS_NODES
from nas_lightning.supernet.chain import ChainNetwork
from nas_lightning.supernet.copies import CopyPicker
from nas_lightning.supernet.darts import DartsNetwork, edge_key
from nas_lightning.supernet.deeper_insights import DeeperInsightsNetwork
from nas_lightning.supernet.mobilenet import MobileNetNetwork
from nas_lightning.supernet.nb201 import NB201Network
from nas_lightning.utils.registry import Registry


@dataclass(frozen=True)
class SiteLayout:
    """Where each decision's op runs in one network.

    ``reach[d][j]`` lists every block that site j of decision d can be (one block in a static layout);
    ``resolve(arch)[d][j]`` is the block it is for ``arch``. A decision that chooses no op (DARTS parents) has no
    sites.
    """

    reach: tuple[tuple[tuple[str, ...], ...], ...]
    resolve: Callable[[Arch], list[list[str]]]

    @classmethod
    def static(cls, blocks: list[list[str]]) -> SiteLayout:
        fixed = [list(b) for b in blocks]
        return cls(tuple(tuple((b,) for b in row) for row in blocks), lambda arch: fixed)

    @property
    def num_sites(self) -> int:
        """The most sites any decision has (J)."""
        return max((len(r) for r in self.reach), default=0)


SITE_LAYOUTS: Registry[type[nn.Module], Callable[[nn.Module], SiteLayout]] = Registry("DC-NAS site layout of")


@SITE_LAYOUTS.register(ChainNetwork)
@SITE_LAYOUTS.register(MobileNetNetwork)
def _layered(net: nn.Module) -> SiteLayout:
    """One searchable ``ChoiceBlock`` per decision: ``body.<d>``."""
    return SiteLayout.static([[f"body.{d}"] for d in range(net.space.num_decisions)])


@SITE_LAYOUTS.register(NB201Network)
@SITE_LAYOUTS.register(DeeperInsightsNetwork)
def _cells(net: nn.Module) -> SiteLayout:
    """Decision d is edge d of every cell (NB201's fixed reduction blocks have no edges)."""
    cells = [i for i, m in enumerate(net.body) if hasattr(m, "edges")]
    return SiteLayout.static([[f"body.{i}.edges.{d}" for i in cells] for d in range(net.space.num_decisions)])


@SITE_LAYOUTS.register(DartsNetwork)
def _darts(net: nn.Module) -> SiteLayout:
    """op_a / op_b of node n run on the edge from the node's first / second parent in every cell of the type;
    which edge that is depends on the arch's parents decision."""
    space = net.space
    cell_type = {i: "reduce" if cell.reduction else "normal" for i, cell in enumerate(net.body)}
    reach: list[tuple[tuple[str, ...], ...]] = []
    slots: list[tuple[str, int, int, list[int]] | None] = []  # per decision: (cell type, node index, slot, cells)
    for decision in space.decisions:
        kind, node, field = decision.name.split(".")
        if field not in ("op_a", "op_b"):
            reach.append(())
            slots.append(None)
            continue
        n = int(node)
        cells = [i for i, t in cell_type.items() if t == kind]
        reach.append(tuple(tuple(f"body.{i}.edges.{edge_key(n, src)}" for src in range(n)) for i in cells))
        slots.append((kind, DARTS_NODES.index(n), 0 if field == "op_a" else 1, cells))

    def resolve(arch: Arch) -> list[list[str]]:
        genotype = space.genotype(arch)
        out: list[list[str]] = []
        for slot in slots:
            if slot is None:
                out.append([])
                continue
            kind, node_index, which, cells = slot
            gene = genotype[kind][node_index]
            node = DARTS_NODES[node_index]
            parent = (gene.a if which == 0 else gene.b).parent
            out.append([f"body.{i}.edges.{edge_key(node, parent)}" for i in cells])
        return out

    return SiteLayout(tuple(reach), resolve)


def site_layout(supernet: nn.Module) -> SiteLayout:
    """The registered layout of ``supernet``'s class (a clear error for a network without one)."""
    return SITE_LAYOUTS.get(type(supernet))(supernet)


def has_parameters(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def one_hot(indices: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """[..., D] choice indices -> [..., sum(sizes)] float64 one-hot rows (decision blocks in order)."""
    offsets = torch.cumsum(sizes, 0) - sizes
    out = torch.zeros(*indices.shape[:-1], int(sizes.sum()), dtype=torch.float64)
    out.scatter_(-1, indices.long() + offsets, 1.0)
    return out


def context_mask(sizes: torch.Tensor) -> torch.Tensor:
    """[D, F] float64: row d is 1 on the one-hot blocks of every decision but d (the context of layer d)."""
    owner = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    return (owner.unsqueeze(0) != torch.arange(len(sizes)).unsqueeze(1)).double()


def nearest_centre(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centre of each point (``points`` [..., N, F], ``centres`` [..., K, F]); ties go to the
    lowest index. The one formula that both K-means and the picker use, so members and picks agree exactly."""
    score = (centres * centres).sum(-1).unsqueeze(-2) - 2.0 * points @ centres.transpose(-1, -2)
    return score.argmin(-1)


class SharingState(CopyPicker):
    """The learned picker of DC-NAS: a sharing-state table plus the cluster centres that assign archs to clusters.

    Args:
        space: the search space.
        supernet: the space's supernet (its class names the site layout; its candidates name the parts).
        num_copies: M >= 1 copies of every part (a candidate op with parameters); K = M clusters per layer.
    """

    def __init__(self, space: SearchSpace, supernet: nn.Module, num_copies: int = 2) -> None:
        if isinstance(num_copies, bool) or not isinstance(num_copies, int) or num_copies < 1:
            raise ValueError(f"num_copies must be an int >= 1, got {num_copies!r}")
        self.space, self.M = space, num_copies
        self.layout = site_layout(supernet)
        self.sizes = torch.tensor([len(d.choices) for d in space.decisions])
        self.choices = [list(d.choices) for d in space.decisions]
        reachable = {f"{block}.candidates.{op}"
                     for d, row in enumerate(self.layout.reach) for blocks in row for block in blocks
                     for op in self.choices[d]}
        self.parts = sorted(p for p in reachable if _exists(supernet, p) and has_parameters(supernet.get_submodule(p)))
        self._part_set = frozenset(self.parts)
        D, J, n_ops = space.num_decisions, self.layout.num_sites, int(self.sizes.max())
        F = int(self.sizes.sum())
        # centres[d, o] holds K centres of (d, op o); clustered[d, o] says whether (d, o) has been clustered.
        self.centres = torch.zeros(D, n_ops, self.M, F, dtype=torch.float64)
        self.clustered = torch.zeros(D, n_ops, dtype=torch.bool)
        self.table = torch.zeros(D, max(J, 1), n_ops, self.M, dtype=torch.long)  # (d, j, op, cluster) -> copy
        # The R archs each (d, o) clustered (choice indices) and their clusters: partners are drawn from them.
        self.samples = torch.zeros(D, n_ops, 0, D, dtype=torch.int16)
        self.labels = torch.zeros(D, n_ops, 0, dtype=torch.long)
        self.rounds = 0  # sharing-state inferences done
        self.context_mask = context_mask(self.sizes)

    # --- the picker ---------------------------------------------------------------------------------------
    @property
    @override
    def num_copies(self) -> Mapping[str, int]:
        return {p: self.M for p in self.parts}

    def clusters(self, arch: Arch) -> torch.Tensor:
        """[D] cluster of ``arch`` at every layer (0 where the layer's op is not clustered yet)."""
        idx = torch.tensor(arch.indices)
        layers = torch.arange(len(idx))
        points = (one_hot(idx, self.sizes) * self.context_mask).unsqueeze(1)  # [D, 1, F]: context at each layer
        k = nearest_centre(points, self.centres[layers, idx]).squeeze(1)
        return torch.where(self.clustered[layers, idx], k, torch.zeros_like(k))

    def site_copies(self, arch: Arch) -> list[tuple[int, int, str, int]]:
        """(d, j, part, copy) of every part ``arch`` runs."""
        out = []
        blocks = self.layout.resolve(arch)
        ks = self.clusters(arch) if self.rounds else None
        for d, row in enumerate(blocks):
            o = arch.indices[d]
            for j, block in enumerate(row):
                part = f"{block}.candidates.{self.choices[d][o]}"
                if part in self._part_set:
                    c = int(self.table[d, j, o, ks[d]]) if ks is not None else 0
                    out.append((d, j, part, c))
        return out

    @override
    def __call__(self, arch: Arch) -> dict[str, int]:
        if self.M == 1 or not bool(self.table.any()):
            return {}  # every arch runs copy 0: plain SPOS
        return {part: c for _, _, part, c in self.site_copies(arch) if c}

    # --- state ----------------------------------------------------------------------------------------------
    def adopt(self, centres: torch.Tensor, clustered: torch.Tensor, table: torch.Tensor, samples: torch.Tensor,
              labels: torch.Tensor) -> None:
        """Take an inferred state (``nas_lightning.search.sharing_update``) and count the round."""
        if table.shape != self.table.shape or centres.shape != self.centres.shape:
            raise ValueError(f"an inferred state of shape {tuple(table.shape)} does not fit the table "
                             f"{tuple(self.table.shape)}")
        self.centres, self.clustered, self.table = centres.clone(), clustered.clone(), table.clone()
        self.samples, self.labels = samples.clone(), labels.clone()
        self.rounds += 1

    def copies_in_use(self) -> dict[str, int]:
        """Per part, how many distinct copies the table can pick (1 before any split; clusters merged onto copy 1
        use one copy, not two)."""
        used: dict[str, set[int]] = {p: set() for p in self.parts}
        for d, row in enumerate(self.layout.reach):
            for j, blocks in enumerate(row):
                for o, op in enumerate(self.choices[d]):
                    for block in blocks:
                        part = f"{block}.candidates.{op}"
                        if part in used:
                            used[part] |= set(self.table[d, j, o].tolist()) if bool(self.clustered[d, o]) else {0}
        return {p: max(len(c), 1) for p, c in used.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"num_copies": self.M, "parts": list(self.parts), "rounds": self.rounds,
                "centres": self.centres.clone(), "clustered": self.clustered.clone(), "table": self.table.clone(),
                "samples": self.samples.clone(), "labels": self.labels.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a checkpoint's sharing state; one of another layout (M, parts) is refused, since its copies
        would land in the wrong archs."""
        if state["num_copies"] != self.M or list(state["parts"]) != self.parts:
            raise ValueError(f"the checkpoint's DC-NAS sharing state has num_copies={state['num_copies']} and "
                             f"{len(state['parts'])} parts, this run num_copies={self.M} and {len(self.parts)}: "
                             "resume with the checkpoint's space and num_copies")
        self.centres, self.clustered = state["centres"].clone(), state["clustered"].clone()
        self.table, self.samples = state["table"].clone(), state["samples"].clone()
        self.labels = state["labels"].clone()
        self.rounds = int(state["rounds"])


def _exists(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True
