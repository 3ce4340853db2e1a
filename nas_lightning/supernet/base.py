"""The supernet contract shared by every space.

A supernet holds the weights of every choice and ``forward(x, arch)`` runs one path. A stand-alone
network is the same class built with one candidate per decision and its arch fixed, so that
``export(arch)`` copies weights by name and the two compute the same function. Every network names
its parts ``stem``, ``body`` (the searchable part, with the fixed blocks between its stages) and ``head``.
A network class serves a space class once registered with ``@NETWORKS.register(SpaceClass)``
(``nas_lightning.spaces.NETWORKS``); the space then builds it as ``cls(space, fixed_arch, bn_affine=...)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn
from typing_extensions import override

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.supernet.copies import COPIES_ATTR, selected_copies
from nas_lightning.supernet.hypernet import HYPERNET_ATTR, weak_shared_weights
from nas_lightning.supernet.ops import OPS


class Supernet(nn.Module, ABC):
    def __init__(self, space: SearchSpace, fixed_arch: Arch | None = None) -> None:
        super().__init__()
        self.space = space
        self.fixed_arch = fixed_arch

    @staticmethod
    def build_candidate(op: str, c_in: int, c_out: int, stride: int, affine: bool = True) -> nn.Module:
        """Candidate ``op`` on its own, as this network's choice blocks build it (``SearchSpace.cost_table`` counts
        it at each ``OpSite``); a network that builds its candidates otherwise overrides this."""
        return OPS.get(op)(c_in, c_out, stride, affine)

    def candidates(self, decision: int) -> list[str]:
        """Choices that get weights at ``decision``: all of them, or the fixed arch's one."""
        choices = self.space.decisions[decision].choices
        if self.fixed_arch is None:
            return list(choices)
        return [choices[self.fixed_arch.indices[decision]]]

    @override
    def forward(self, x: torch.Tensor, arch: Arch | None = None) -> torch.Tensor:
        if arch is None:
            if self.fixed_arch is None:
                raise ValueError("a supernet needs an arch: call supernet(x, arch)")
            arch = self.fixed_arch
        elif self.fixed_arch is not None and arch != self.fixed_arch:
            raise ValueError(f"this network is fixed to {self.fixed_arch}, cannot run {arch}")
        # parts with weight copies run the arch's (nas_lightning.supernet.copies); inside them, an installed
        # HyperNet gives the searchable convs their effective weights (nas_lightning.supernet.hypernet)
        with selected_copies(self, arch), weak_shared_weights(self, arch):
            return self.forward_path(x, arch)

    @abstractmethod
    def forward_path(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        """Run the path that ``arch`` selects (typed by the space: choice names, genes)."""

    def export(self, arch: Arch) -> nn.Module:
        """A stand-alone network of ``arch`` holding this supernet's weights (inherited weights).

        The supernet's BN layers may lack affine parameters where the stand-alone network has them;
        those keep their identity initialisation (weight 1, bias 0), which computes the same thing. Parts with
        weight copies export the copy that ``arch`` picks; with a HyperNet installed, the searchable convs export
        their effective weights (WPNAS eq. 2). A network that slices its widest weights (a supernet weight larger
        than the stand-alone one) exports the leading slice of every dimension, the channels its forward pass uses.
        """
        net = self.space.build_network(arch)
        shared = self.path_state_dict(arch)
        own = net.state_dict()
        bn_affine = {
            f"{name}.{p}" for name, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for p in ("weight", "bias")
        }
        bad = [k for k in own if k not in shared and k not in bn_affine]
        if bad:
            raise KeyError(f"stand-alone network has weights the supernet lacks: {bad[:5]}")
        net.load_state_dict({k: _leading_slice(shared[k], own[k].shape) for k in own if k in shared}, strict=False)
        return net

    @torch.no_grad()
    def path_state_dict(self, arch: Arch) -> dict[str, torch.Tensor]:
        """The ``state_dict`` as ``arch`` runs it: each part's picked weight copy, the HyperNet's effective weights;
        the copies' and the HyperNet's own keys left out."""
        with selected_copies(self, arch), weak_shared_weights(self, arch):
            state = self.state_dict(keep_vars=True)
        skip = (COPIES_ATTR + ".", HYPERNET_ATTR + ".")
        return {k: v.detach() for k, v in state.items() if not k.startswith(skip)}


def _leading_slice(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``tensor[:shape[0], :shape[1], ...]``, where a network slices its widest weights; ``tensor`` if equal."""
    if tensor.shape == shape:
        return tensor
    if tensor.dim() != len(shape) or any(s > t for s, t in zip(shape, tensor.shape)):
        raise ValueError(f"cannot export a supernet tensor of shape {tuple(tensor.shape)} into {tuple(shape)}: the "
                         "stand-alone network must be the supernet's network class built for one of its archs")
    return tensor[tuple(slice(0, s) for s in shape)]
