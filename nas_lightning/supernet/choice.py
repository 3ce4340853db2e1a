"""One decision's candidate ops, keyed by choice name: the choice container of every network."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from typing_extensions import override

from nas_lightning.supernet.ops import OPS


class ChoiceBlock(nn.Module):
    """Holds the candidates of one decision; ``forward(x, choice)`` runs only the chosen one.

    A stand-alone network holds a single candidate under the same key, so its ``state_dict`` keys
    are a subset of the supernet's and weights copy over by name.
    """

    def __init__(self, candidates: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.candidates = nn.ModuleDict(candidates)

    @classmethod
    def from_ops(cls, names: Sequence[str], c_in: int, c_out: int, stride: int, affine: bool) -> ChoiceBlock:
        """The registered ops ``names``, each built as ``OPS.get(name)(c_in, c_out, stride, affine)``."""
        return cls({name: OPS.get(name)(c_in, c_out, stride, affine) for name in names})

    def is_zero(self, choice: str) -> bool:
        return bool(getattr(self.candidates[choice], "is_zero", False))

    @override
    def forward(self, x: torch.Tensor, choice: str) -> torch.Tensor:
        return self.candidates[choice](x)
