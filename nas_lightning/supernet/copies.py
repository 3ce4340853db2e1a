"""Weight copies: a part of a supernet holds several copies of its weights, and a function of the arch picks the
copy that runs.

One mechanism for two methods: reduced weight sharing (Zhang et al., "Deeper Insights into Weight Sharing in
Neural Architecture Search", arXiv:2001.01431, section 5: prefix and group sharing; its picker is fixed, see
``nas_lightning.supernet.pickers``) and DC-NAS's local weight-sharing states (a learned picker that maps an arch's
cluster at each layer to a copy of that layer's op). docs/design_choices.md, "Reduced sharing", gives the choices.

A *part* is any submodule of the supernet, named by its dotted path (``"stem"``, ``"body.2"``, ``"head"``,
``"body.3.candidates.nor_conv_3x3"``). Copy 0 of a part is the part itself, where the network built it: its
``state_dict`` keys, its place in the forward pass and its class (``isinstance`` checks in ``forward_path``)
stay as they are. Copies 1..M-1 are deep copies kept in ``supernet.weight_copies`` (a ``ModuleDict`` of
``WeightCopies``), so they are allocated up front, are in ``parameters()`` (hence in the optimiser, each with its
own momentum) and in the checkpoint. While ``forward(x, arch)`` runs, each part whose picked copy is c > 0 has its
parameters and buffers replaced, entry by entry, by copy c's tensors (``selected_copies``); autograd records the
tensors that ran, so copy c gets the gradient, and BN running statistics update copy c's buffers. The entries are
put back when the forward pass returns. A part with M = 1 is not touched: the supernet is the plain one, bit for
bit.
"""

from __future__ import annotations

import contextlib
import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nas_lightning.spaces.arch import Arch

#: Attribute names on the supernet: the copies' container (a registered child module) and the picker (plain).
COPIES_ATTR = "weight_copies"
PICKER_ATTR = "copy_picker"


def part_key(part: str) -> str:
    """The ``ModuleDict`` key of a dotted part path (module names cannot contain dots)."""
    return part.replace(".", "/")


class CopyPicker(ABC):
    """Which copy of each part an arch runs: a pure function of the arch (and of the picker's own state).

    ``num_copies`` maps each part (dotted module path in the supernet) to its number of copies M >= 1;
    ``__call__(arch)`` maps parts to copy indices in ``[0, M)``; a part it leaves out runs copy 0.
    """

    @property
    @abstractmethod
    def num_copies(self) -> Mapping[str, int]: ...

    @abstractmethod
    def __call__(self, arch: Arch) -> dict[str, int]: ...


def _tensor_slots(module: nn.Module) -> list[tuple[dict[str, Any], str]]:
    """Every (``_parameters`` or ``_buffers`` dict, name) entry of ``module`` and its submodules, in a fixed order
    (the same for a module and its deep copy)."""
    slots = []
    for _, m in module.named_modules(remove_duplicate=False):
        slots += [(m._parameters, name) for name in m._parameters]
        slots += [(m._buffers, name) for name in m._buffers]
    return slots


class WeightCopies(nn.Module):
    """Copies 1..M-1 of one part; copy 0 is the part itself (held here by reference, not registered, so that its
    keys stay where the network put them).

    Args:
        part: the module to copy (copy 0).
        num_copies: M >= 2.
    """

    def __init__(self, part: nn.Module, num_copies: int) -> None:
        super().__init__()
        if num_copies < 2:
            raise ValueError(f"WeightCopies holds M >= 2 copies (M = 1 is the part alone), got {num_copies}")
        self.__dict__["part"] = part  # bypasses nn.Module.__setattr__: copy 0 must not be registered twice
        self.extra = nn.ModuleList(copy.deepcopy(part) for _ in range(num_copies - 1))

    @property
    def num_copies(self) -> int:
        return 1 + len(self.extra)

    def copy_module(self, index: int) -> nn.Module:
        """Copy ``index`` as a module (0: the part itself)."""
        if not 0 <= index < self.num_copies:
            raise IndexError(f"copy {index} out of range for a part with {self.num_copies} copies")
        return self.part if index == 0 else self.extra[index - 1]

    def copy_numel(self) -> int:
        """Parameters of one copy."""
        return sum(p.numel() for p in self.part.parameters())

    @contextlib.contextmanager
    def selected(self, index: int) -> Iterator[None]:
        """Run copy ``index`` in the part's place until the block exits."""
        if index == 0:
            yield
            return
        dst = self._slots(0)
        src = self._slots(index)
        saved = [table[name] for table, name in dst]
        try:
            for (table, name), (src_table, src_name) in zip(dst, src, strict=True):
                table[name] = src_table[src_name]
            yield
        finally:
            for (table, name), tensor in zip(dst, saved):
                table[name] = tensor

    def _slots(self, index: int) -> list[tuple[dict[str, Any], str]]:
        """``_tensor_slots`` of copy ``index``, listed once: a forward pass swaps them without walking the modules.
        The dicts are the modules' own (``.to()`` keeps them; a deep copy maps them to the copy's)."""
        cache: dict[int, list[tuple[dict[str, Any], str]]] = self.__dict__.setdefault("_slot_cache", {})
        if index not in cache:
            cache[index] = _tensor_slots(self.copy_module(index))
        return cache[index]

    @torch.no_grad()
    def copy_(self, src: int, dst: int) -> None:
        """Copy ``src``'s weights and buffers into copy ``dst`` (a newly split copy starts from its parent's)."""
        if src == dst:
            return
        for (s_table, s_name), (d_table, d_name) in zip(_tensor_slots(self.copy_module(src)),
                                                        _tensor_slots(self.copy_module(dst)), strict=True):
            s, d = s_table[s_name], d_table[d_name]
            if d is not None:
                d.copy_(s)

    @torch.no_grad()
    def reset_(self, index: int, seed: int) -> None:
        """Draw copy ``index`` >= 1 afresh with its modules' own initialisers (``reset_parameters``; BN statistics
        reset too) from ``seed``, leaving the global RNG as it was."""
        if index == 0:
            raise ValueError("copy 0 is the part itself: reset the network instead")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in self.copy_module(index).modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()


def install_copies(supernet: nn.Module, picker: CopyPicker) -> None:
    """Give every part of ``picker.num_copies`` with M > 1 its copies (deep copies of the part as it is now) and
    attach ``picker`` to ``supernet``; ``Supernet.forward`` then runs the picked copies (``selected_copies``)."""
    if hasattr(supernet, COPIES_ATTR) or hasattr(supernet, PICKER_ATTR):
        raise RuntimeError("this supernet already has weight copies")
    parts = {p: m for p, m in picker.num_copies.items()}
    for part, m in parts.items():
        if m < 1:
            raise ValueError(f"part {part!r} needs at least one copy, got {m}")
        supernet.get_submodule(part)  # raises AttributeError naming a part the network does not have
    for part in parts:
        ancestors = [".".join(part.split(".")[:i]) for i in range(len(part.split(".")))]
        nested = [a for a in ancestors if a in parts]
        if nested:
            raise ValueError(f"parts may not nest: {nested[0]!r} contains {part!r}")
    copies = nn.ModuleDict({part_key(p): WeightCopies(supernet.get_submodule(p), m) for p, m in parts.items() if m > 1})
    supernet.add_module(COPIES_ATTR, copies)
    supernet.__dict__[PICKER_ATTR] = picker  # a plain attribute: not a module, not in the state_dict


def weight_copies(supernet: nn.Module) -> Mapping[str, WeightCopies]:
    """The parts with M > 1 and their copies, by dotted part path (empty without copies)."""
    copies = supernet._modules.get(COPIES_ATTR)
    if copies is None:
        return {}
    return {key.replace("/", "."): c for key, c in copies.items()}


def picked_copies(supernet: nn.Module, arch: Arch) -> dict[str, int]:
    """The copy of every part with M > 1 that ``arch`` runs (validated against the counts)."""
    picker: CopyPicker | None = supernet.__dict__.get(PICKER_ATTR)
    copies = weight_copies(supernet)
    if picker is None or not copies:
        return {}
    picks = picker(arch)
    out = {}
    for part, wc in copies.items():
        c = int(picks.get(part, 0))
        if not 0 <= c < wc.num_copies:
            raise IndexError(f"the picker chose copy {c} of {part!r}, which has {wc.num_copies} copies")
        out[part] = c
    return out


@contextlib.contextmanager
def selected_copies(supernet: nn.Module, arch: Arch) -> Iterator[None]:
    """Inside the block, every part runs the copy that ``arch`` picks (nothing to do without copies)."""
    copies = weight_copies(supernet)
    if not copies:
        yield
        return
    with contextlib.ExitStack() as stack:
        for part, c in picked_copies(supernet, arch).items():
            if c:
                stack.enter_context(copies[part].selected(c))
        yield


def path_state_dict(supernet: nn.Module, arch: Arch) -> dict[str, torch.Tensor]:
    """The supernet's ``state_dict`` as ``arch`` sees it: each part's keys hold its picked copy's tensors, and the
    copies' own keys are left out (what ``Supernet.export`` loads into a stand-alone network)."""
    with selected_copies(supernet, arch):
        state = supernet.state_dict(keep_vars=True)
    return {k: v.detach() for k, v in state.items() if not k.startswith(COPIES_ATTR + ".")}


@dataclass(frozen=True)
class CopyCount:
    """What the copies cost: parameters in all (``total``), of one copy of every part (``supernet``: the plain
    supernet's count) and of the extra copies (``extra``), and per part (M, params of one copy)."""

    total: int
    supernet: int
    extra: int
    parts: dict[str, tuple[int, int]]

    def as_metrics(self) -> dict[str, float]:
        return {"params/total": float(self.total), "params/supernet": float(self.supernet),
                "params/copies": float(self.extra), "params/copies_ratio": self.total / max(self.supernet, 1)}


def count_copies(supernet: nn.Module) -> CopyCount:
    total = sum(p.numel() for p in supernet.parameters())
    parts = {part: (wc.num_copies, wc.copy_numel()) for part, wc in weight_copies(supernet).items()}
    extra = sum((m - 1) * n for m, n in parts.values())
    return CopyCount(total, total - extra, extra, parts)
