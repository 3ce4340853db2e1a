"""Arch encoders of the predictors (Lin et al., WPNAS, arXiv:2203.02086, section 3.2 and Table 2: MLP, RNN or
Transformer).

Every encoder maps an index-encoded batch of archs (long [n, L]) to one embedding per arch ([n, hidden]),
so the few-shot predictor and the supervised baselines share them. They are chosen by name through
``ENCODERS`` (``encoder: lstm`` in a config) and built as ``cls(choice_counts, hidden, num_layers, heads)``.
None of them has dropout or batch statistics: an arch's embedding does not depend on the other archs of
its batch, or on the process that computes it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn
from typing_extensions import override

from nas_lightning.predictors.encoding import choice_offsets, one_hot
from nas_lightning.utils.registry import Registry

__all__ = ["ENCODERS", "ArchEncoder", "LSTMEncoder", "MLPEncoder", "TransformerEncoder"]


class ArchEncoder(nn.Module):
    """Base of the encoders: the space's choice counts and the embedding width.

    Args:
        choice_counts: choices per decision (``encoding.choice_counts(space)``).
        hidden: width of the embedding (and of the hidden layers).
        num_layers: MLP layers, LSTM layers or Transformer encoder layers.
        heads: attention heads (Transformer only; ``hidden`` must be a multiple).
    """

    def __init__(self, choice_counts: Sequence[int], hidden: int = 64, num_layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        if hidden < 1 or num_layers < 1:
            raise ValueError(f"an arch encoder needs hidden >= 1 and num_layers >= 1, got {hidden}, {num_layers}")
        self.choice_counts = [int(c) for c in choice_counts]
        self.hidden = hidden
        self.register_buffer("offsets", choice_offsets(self.choice_counts), persistent=False)

    def tokens(self, indices: torch.Tensor) -> torch.Tensor:
        """One token per decision: its column in the one-hot of the decision list ([n, L])."""
        return indices + self.offsets


#: Encoder classes by the name a config gives (``encoder: mlp``).
ENCODERS: Registry[str, type[ArchEncoder]] = Registry("predictor encoder")


@ENCODERS.register("mlp")
class MLPEncoder(ArchEncoder):
    """The one-hot of the decision list through ``num_layers`` Linear + ReLU layers."""

    def __init__(self, choice_counts: Sequence[int], hidden: int = 64, num_layers: int = 2, heads: int = 4) -> None:
        super().__init__(choice_counts, hidden, num_layers, heads)
        widths = [sum(self.choice_counts), *[hidden] * num_layers]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers)

    @override
    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.net(one_hot(indices, self.choice_counts))


@ENCODERS.register("lstm")
class LSTMEncoder(ArchEncoder):
    """The decisions as a sequence of tokens (embedded one-hots) through an LSTM; the embedding is the last
    layer's final hidden state (the RNN encoder of Table 2)."""

    def __init__(self, choice_counts: Sequence[int], hidden: int = 64, num_layers: int = 2, heads: int = 4) -> None:
        super().__init__(choice_counts, hidden, num_layers, heads)
        self.embed = nn.Embedding(sum(self.choice_counts), hidden)
        self.lstm = nn.LSTM(hidden, hidden, num_layers=num_layers, batch_first=True)

    @override
    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(self.embed(self.tokens(indices)))
        return h[-1]


@ENCODERS.register("transformer")
class TransformerEncoder(ArchEncoder):
    """The decisions as tokens through ``torch.nn.TransformerEncoder``, mean-pooled over decisions.

    No positional encoding: each decision has its own token columns, so a token already says which decision
    it is.
    """

    def __init__(self, choice_counts: Sequence[int], hidden: int = 64, num_layers: int = 2, heads: int = 4) -> None:
        super().__init__(choice_counts, hidden, num_layers, heads)
        if heads < 1 or hidden % heads:
            raise ValueError(f"the transformer encoder needs hidden divisible by heads, got hidden={hidden}, "
                             f"heads={heads}; change --hidden or --heads")
        self.embed = nn.Embedding(sum(self.choice_counts), hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=2 * hidden, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    @override
    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embed(self.tokens(indices))).mean(dim=1)
