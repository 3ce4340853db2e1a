"""One decision's candidate ops, keyed by choice name."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nas_lightning.supernet.ops import OPS


class ChoiceBlock(nn.Module):
    """Holds the candidates of one decision; ``forward(x, choice)`` runs only the chosen one.

    A stand-alone network holds a single candidate under the same key, so its ``state_dict`` keys
    are a subset of the supernet's and weights copy over by name.
    """

    def __init__(self, candidates: Sequence[str], C: int, affine: bool) -> None:
        super().__init__()
        self.candidates = nn.ModuleDict({name: OPS.get(name)(C, affine) for name in candidates})

    def is_zero(self, choice: str) -> bool:
        return bool(getattr(self.candidates[choice], "is_zero", False))

    def forward(self, x: torch.Tensor, choice: str) -> torch.Tensor:
        return self.candidates[choice](x)
