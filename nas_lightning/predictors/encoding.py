"""Arch encoding for the predictors (Lin et al., WPNAS, arXiv:2203.02086, section 3.2): the one-hot of the
decision list.

An arch is its space's index encoding (``SearchSpace.to_tensor``: one choice index per decision). The
one-hot of the whole decision list concatenates each decision's one-hot, so decision d, choice c sits at
column ``offsets[d] + c``; the sequence encoders (LSTM, Transformer) read the same columns as tokens, one
token per decision (an embedding of a token is the one-hot times a matrix).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace

__all__ = ["arch_indices", "choice_counts", "choice_offsets", "one_hot"]


def choice_counts(space: SearchSpace) -> list[int]:
    """Number of choices of each decision, in decision order."""
    return [len(d.choices) for d in space.decisions]


def choice_offsets(counts: Sequence[int]) -> torch.Tensor:
    """Column of each decision's first choice in the concatenated one-hot (long, shape [L])."""
    counts_t = torch.as_tensor(list(counts), dtype=torch.long)
    return torch.cumsum(counts_t, 0) - counts_t


def arch_indices(space: SearchSpace, archs: Sequence[Arch]) -> torch.Tensor:
    """Index encoding of ``archs`` (long, shape [n, L])."""
    return space.to_tensor(list(archs))


def one_hot(indices: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """Float one-hot of the decision list, shape [n, sum(counts)], one 1 per decision (vectorised scatter)."""
    offsets = choice_offsets(counts).to(indices.device)
    out = torch.zeros(indices.shape[0], int(sum(counts)), device=indices.device)
    return out.scatter_(1, indices + offsets, 1.0)
