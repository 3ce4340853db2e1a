"""HyperNet weak weight sharing (WPNAS, Lin et al., arXiv:2203.02086, section 3.3, Fig. 3, eq. 2).

A bi-LSTM reads the arch, one time step per decision (the embedding of that decision's choice), and emits one
``k_max x k_max`` offset per decision. While ``supernet(x, arch)`` runs, every *searchable conv* of the path takes
the effective weight ``W_eff = W_base * offset_l`` (eq. 2), ``offset_l`` being the offset of the conv's decision l,
cropped to the conv's kernel from the top left (section 3.3: "for operations with smaller kernel size such as
3x3, the weights of the top left corner are cropped and used"), and broadcast over the output and input channels.
So two archs that choose the same op at a decision run it with different weights, the degree of sharing falls,
and the gradient reaches both the base weights and the HyperNet (unless the HyperNet is frozen).

Choices the paper leaves open (docs/design_choices.md, "WPNAS"):

- **Offset value.** ``offset = 1 + head(bi-LSTM output)``. A trained HyperNet's head starts at zero, so at the
  start every offset is exactly one and the supernet is the plain one, bit for bit (``W * 1.0 == W``); it departs
  from the plain supernet as the head learns (the head's gradient is not zero even while its weights are). A
  frozen HyperNet would then stay the identity for ever, so a frozen one keeps the head's seeded default
  initialisation instead: a fixed, arch-dependent perturbation around one (standard deviation about 0.1, at
  most about 0.4 with ``hidden=64``).
- **One offset per decision**, shared by every searchable conv that decision's choice runs (all cells of
  NAS-Bench-201, both depthwise convs of a ``sep_conv``), as in the paper's ``omega_o^l`` of 25 = 5 x 5 values
  per layer.
- **Searchable convs.** The ``nn.Conv2d`` layers with a spatial kernel (larger than 1 x 1) inside the candidate
  ops of each decision, depthwise and dilated ones included; the decision's offset goes to the convs of the
  choice it makes. A 1 x 1 conv would get one scalar, which the BN after it (batch statistics or recalibration)
  mostly cancels, so 1 x 1 convs are left alone, as are the fixed stem, reduction blocks and head. In a
  space whose decisions set widths (NATS-Bench size space) the searchable convs of decision l are the spatial
  convs whose output width l sets (sliced from the widest weights after the offset is applied); in WPNAS's
  MobileNet space (four decisions per block) a block's depthwise conv takes the offset of the block's kernel
  decision, on the weight set that kernel and expansion ratio pick. A space declares
  its sites with ``@HYPERNET_SITES.register(SpaceClass)`` (DARTS: the op on edge (node, src) takes the offset of
  the node's ``op_a`` or ``op_b`` decision, whichever the ``parents`` decision assigns to src); a space without
  sites is refused with an error that says so.
- **Kernels larger than ``k_max``** are refused at construction, naming the conv (the MobileNet small space with
  7 x 7 ops needs ``k_max=7``).

``install_hypernet(supernet, hypernet)`` registers the HyperNet as the supernet's child ``hypernet`` (in
``parameters()`` hence in the optimiser, and in the checkpoint); ``Supernet.forward`` enters
``weak_shared_weights`` inside ``selected_copies`` (``nas_lightning.supernet.copies``), so parts with weight copies
get the offset on their picked copy, and ``Supernet.export`` gives a stand-alone network the effective weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from typing_extensions import override

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.spaces.chain import ChainSpace
from nas_lightning.spaces.darts import DARTS_CELL_TYPES, DARTS_NODES, DartsSpace, parent_pairs
from nas_lightning.spaces.deeper_insights import DeeperInsightsSpace
from nas_lightning.spaces.mobilenet import MobileNetSpace
from nas_lightning.spaces.nb201 import NB201Space
from nas_lightning.supernet.choice import ChoiceBlock
from nas_lightning.supernet.copies import selected_copies
from nas_lightning.utils.registry import Registry

#: The supernet's child that holds an installed HyperNet, and the plain attribute with its resolved sites.
HYPERNET_ATTR = "hypernet"
_SITES_ATTR = "_hypernet_sites"


@dataclass(frozen=True)
class ConvSite:
    """A searchable conv: the ``nn.Conv2d`` at dotted ``path`` in the supernet takes decision ``decision``'s offset
    when that decision picks choice index ``choice`` (None: whatever it picks) and every ``(decision, choice)`` pair
    of ``also`` holds too (an op chosen by several decisions, e.g. kernel and expansion ratio)."""

    path: str
    decision: int
    choice: int | None
    also: tuple[tuple[int, int], ...] = ()


#: Per space class: ``(space, supernet) -> list[ConvSite]``. Looked up along the space class's MRO.
SiteFinder = Callable[[SearchSpace, nn.Module], list[ConvSite]]
HYPERNET_SITES: Registry[type[SearchSpace], SiteFinder] = Registry("HyperNet conv sites of space")


def is_spatial_conv(module: nn.Module) -> bool:
    """An ``nn.Conv2d`` whose kernel is larger than 1 x 1 (the convs eq. 2 modulates)."""
    return isinstance(module, nn.Conv2d) and module.weight.dim() == 4 and module.weight.shape[-2:].numel() > 1


def spatial_convs(module: nn.Module, prefix: str) -> list[str]:
    """Dotted paths (under ``prefix``) of the spatial convs in ``module``."""
    return [f"{prefix}.{name}" for name, m in module.named_modules() if name and is_spatial_conv(m)]


def choice_block_sites(space: SearchSpace, supernet: nn.Module, blocks: dict[str, int]) -> list[ConvSite]:
    """Sites of networks built from ``ChoiceBlock``s: ``blocks`` maps each block's dotted path to its decision;
    the spatial convs of candidate ``op`` take the offset when the decision picks ``op``."""
    sites = []
    for path, decision in blocks.items():
        block = supernet.get_submodule(path)
        if not isinstance(block, ChoiceBlock):
            raise TypeError(f"{path!r} is a {type(block).__name__}, not a ChoiceBlock")
        choices = space.decisions[decision].choices
        for op, candidate in block.candidates.items():
            convs = spatial_convs(candidate, f"{path}.candidates.{op}")
            sites += [ConvSite(p, decision, choices.index(op)) for p in convs]
    return sites


@HYPERNET_SITES.register(NB201Space)
def _nb201_sites(space: SearchSpace, supernet: nn.Module) -> list[ConvSite]:
    # body: cells (with ``edges``, edge e = decision e) and the fixed reduction blocks
    return choice_block_sites(space, supernet, {
        f"body.{i}.edges.{e}": e for i, cell in enumerate(supernet.body) if hasattr(cell, "edges")
        for e in range(space.num_decisions)
    })


@HYPERNET_SITES.register(DeeperInsightsSpace)
def _deeper_insights_sites(space: SearchSpace, supernet: nn.Module) -> list[ConvSite]:
    return choice_block_sites(space, supernet, {
        f"body.{i}.edges.{e}": e for i in range(len(supernet.body)) for e in range(space.num_decisions)
    })


@HYPERNET_SITES.register(ChainSpace)
@HYPERNET_SITES.register(MobileNetSpace)
def _layer_sites(space: SearchSpace, supernet: nn.Module) -> list[ConvSite]:
    # one ChoiceBlock per decision: body[i] is decision i
    return choice_block_sites(space, supernet, {f"body.{i}": i for i in range(space.num_decisions)})


@HYPERNET_SITES.register(DartsSpace)
def _darts_sites(space: SearchSpace, supernet: nn.Module) -> list[ConvSite]:
    """The op on edge (node, src) of a cell is chosen by the node's ``op_a`` decision when its ``parents`` decision
    picks a pair whose first parent is src, by ``op_b`` when src is the second: one site per (pair, op)."""
    index = {d.name: i for i, d in enumerate(space.decisions)}
    sites = []
    for i, cell in enumerate(supernet.body):
        cell_type = DARTS_CELL_TYPES[1] if cell.reduction else DARTS_CELL_TYPES[0]
        for node in DARTS_NODES:
            parents = index[f"{cell_type}.{node}.parents"]
            for k, pair in enumerate(parent_pairs(node)):
                for side, src in (("op_a", pair.a), ("op_b", pair.b)):
                    decision = index[f"{cell_type}.{node}.{side}"]
                    block = cell.edges[f"{node}<-{src}"]
                    for op, candidate in block.candidates.items():
                        sites += [ConvSite(p, decision, space.decisions[decision].choices.index(op), ((parents, k),))
                                  for p in spatial_convs(candidate, f"body.{i}.edges.{node}<-{src}.candidates.{op}")]
    return sites


def hypernet_sites(space: SearchSpace, supernet: nn.Module) -> list[ConvSite]:
    """The searchable convs of ``supernet``, from the finder registered for ``space``'s class (or a base class)."""
    for cls in type(space).__mro__:
        if cls in HYPERNET_SITES:
            return HYPERNET_SITES.get(cls)(space, supernet)
    raise LookupError(
        f"the WPNAS HyperNet does not know the searchable convs of {type(space).__name__}: its decisions are not "
        f"mapped to conv layers (register a finder with @HYPERNET_SITES.register({type(space).__name__}) in "
        f"nas_lightning.supernet.hypernet, or turn the HyperNet off for this space)"
    )


class HyperNet(nn.Module):
    """The bi-LSTM HyperNet of WPNAS (arXiv:2203.02086, section 3.3): one time step per decision.

    Args:
        space: the search space whose archs it reads.
        supernet: the network whose searchable convs it modulates (read at construction for the sites and their
            kernel sizes; not held).
        hidden: embedding size and LSTM hidden size per direction.
        k_max: side of the square offset each decision gets (5 in the paper).
        frozen: no gradient reaches the HyperNet; its head keeps a seeded random initialisation so that the
            offsets still differ between archs (module docstring).
        seed: seeds the initial weights, so every rank builds the same HyperNet.
    """

    def __init__(self, space: SearchSpace, supernet: nn.Module, hidden: int = 64, k_max: int = 5,
                 frozen: bool = False, seed: int = 0) -> None:
        super().__init__()
        if hidden < 1 or k_max < 1:
            raise ValueError(f"HyperNet needs hidden >= 1 and k_max >= 1, got hidden={hidden}, k_max={k_max}")
        self.space, self.k_max, self.frozen = space, k_max, frozen
        sites = hypernet_sites(space, supernet)
        if not sites:
            raise ValueError(f"{type(space).__name__} has no searchable conv with a spatial kernel for the HyperNet "
                             "to modulate (only 1x1 convs, pools or identities): turn the HyperNet off")
        for site in sites:
            kh, kw = supernet.get_submodule(site.path).weight.shape[-2:]
            if kh > k_max or kw > k_max:
                raise ValueError(f"the conv {site.path!r} has a {kh}x{kw} kernel, larger than the HyperNet's "
                                 f"k_max={k_max}: pass k_max={max(kh, kw)} or more")
        self.sites: tuple[ConvSite, ...] = tuple(sites)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embeddings = nn.ModuleList(nn.Embedding(len(d.choices), hidden) for d in space.decisions)
            self.lstm = nn.LSTM(hidden, hidden, batch_first=True, bidirectional=True)
            self.head = nn.Linear(2 * hidden, k_max * k_max)
        if frozen:
            self.requires_grad_(False)
        else:  # offsets start at exactly one: the plain supernet, bit for bit
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @override
    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """Offsets of shape (batch, num_decisions, k_max, k_max) for choice indices of shape (batch,
        num_decisions) (``space.to_tensor``)."""
        if indices.dim() != 2 or indices.shape[1] != len(self.embeddings):
            raise ValueError(f"HyperNet expects choice indices of shape (batch, {len(self.embeddings)}), "
                             f"got {tuple(indices.shape)}")
        steps = torch.stack([emb(indices[:, d]) for d, emb in enumerate(self.embeddings)], 1)
        out, _ = self.lstm(steps)
        return 1.0 + self.head(out).view(indices.shape[0], indices.shape[1], self.k_max, self.k_max)

    def offsets(self, arch: Arch) -> torch.Tensor:
        """The (num_decisions, k_max, k_max) offsets of one arch (no gradient when frozen)."""
        indices = torch.tensor([arch.indices], dtype=torch.long, device=self.head.weight.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self(indices)[0]


def install_hypernet(supernet: nn.Module, hypernet: HyperNet) -> None:
    """Make every ``supernet(x, arch)`` (training, inherited evaluation, ``export``) run its searchable convs with
    ``hypernet``'s effective weights (eq. 2). The HyperNet becomes the child ``hypernet`` of ``supernet``."""
    if HYPERNET_ATTR in supernet._modules:
        raise RuntimeError("this supernet already has a HyperNet")
    space = getattr(supernet, "space", None)
    if space is not None and [d.choices for d in space.decisions] != [d.choices for d in hypernet.space.decisions]:
        raise ValueError(f"the HyperNet was built for another space ({type(hypernet.space).__name__} with "
                         f"{hypernet.space.num_decisions} decisions) than this supernet's ({type(space).__name__})")
    resolved: dict[tuple[int, int | None], list[tuple[nn.Conv2d, tuple[tuple[int, int], ...]]]] = {}
    for site in hypernet.sites:
        try:
            conv = supernet.get_submodule(site.path)
        except AttributeError:
            raise ValueError(f"the HyperNet was built for another network: {site.path!r} is not a module of this "
                             "supernet") from None
        resolved.setdefault((site.decision, site.choice), []).append((conv, site.also))
    supernet.add_module(HYPERNET_ATTR, hypernet)
    supernet.__dict__[_SITES_ATTR] = resolved  # plain attribute: not a module, not in the state_dict


def installed_hypernet(supernet: nn.Module) -> HyperNet | None:
    return supernet._modules.get(HYPERNET_ATTR)  # type: ignore[return-value]


def active_convs(supernet: nn.Module, arch: Arch) -> list[tuple[nn.Conv2d, int]]:
    """The searchable convs that ``arch`` runs, each with its decision."""
    resolved: dict[tuple[int, int | None], list[tuple[nn.Conv2d, tuple[tuple[int, int], ...]]]] = (
        supernet.__dict__.get(_SITES_ATTR, {}))
    out = []
    for d, c in enumerate(arch.indices):
        for key in ((d, c), (d, None)):
            out += [(conv, d) for conv, also in resolved.get(key, ()) if all(arch.indices[e] == k for e, k in also)]
    return out


@contextlib.contextmanager
def weak_shared_weights(supernet: nn.Module, arch: Arch) -> Iterator[None]:
    """Inside the block, each searchable conv that ``arch`` runs holds ``W * offset`` (eq. 2) in place of its
    weight ``W`` (the tensor there now: a picked weight copy's, if any); nothing to do without a HyperNet."""
    hypernet = installed_hypernet(supernet)
    if hypernet is None:
        yield
        return
    offsets = hypernet.offsets(arch)
    swapped: list[tuple[nn.Conv2d, torch.Tensor]] = []
    try:
        for conv, d in active_convs(supernet, arch):
            weight = conv._parameters["weight"]
            kh, kw = weight.shape[-2:]
            swapped.append((conv, weight))
            conv._parameters["weight"] = weight * offsets[d, :kh, :kw].to(weight.dtype)  # top-left crop
        yield
    finally:
        for conv, weight in reversed(swapped):
            conv._parameters["weight"] = weight


def effective_weights(supernet: nn.Module, arch: Arch, paths: Sequence[str]) -> list[torch.Tensor]:
    """The weights of the modules at ``paths`` as ``arch`` runs them: its weight copies, the HyperNet's offsets
    (detached copies; for tests and reports)."""
    with torch.no_grad(), selected_copies(supernet, arch), weak_shared_weights(supernet, arch):
        return [supernet.get_submodule(p).weight.detach().clone() for p in paths]
