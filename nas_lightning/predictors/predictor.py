"""Accuracy predictors over archs: the few-shot relation-network predictor of WPNAS (Lin et al.,
arXiv:2203.02086, section 3.2, Fig. 2) and the supervised baselines of its Table 2.

Both map archs to a predicted accuracy in percent. Targets are standardised by the training set's mean and
standard deviation (buffers, saved with the weights), so one learning rate and one ranking margin suit any
accuracy scale (docs/design_choices.md, "WPNAS").

- ``SupervisedPredictor``: one arch in, one accuracy out: ``mean + std * head(enc(A))``.
- ``FewShotPredictor``: a shared encoder embeds the query arch and each support arch; a decoder on
  ``[enc(query), enc(support_i)]`` predicts the offset ``acc(query) - acc(support_i)`` (in units of ``std``),
  and the prediction is ``mean_i (acc(support_i) + offset_i)``. Its support set (archs and accuracies) is
  part of the module (buffers), so a saved predictor carries it.

``predict(archs)`` is the interface the WPNAS reward uses (eq. 4's FSP(A)): one batched forward, no grad.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from nas_lightning.predictors.encoders import ENCODERS, ArchEncoder
from nas_lightning.predictors.encoding import arch_indices, choice_counts
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.registry import Registry

__all__ = ["PREDICTORS", "ArchPredictor", "FewShotPredictor", "SupervisedPredictor"]

#: Queries per decoder pass of ``FewShotPredictor``: bounds the [queries, support, hidden] activation
#: (4096 x 30 x 64 floats, about 31 MB) however many archs one call predicts.
QUERY_CHUNK = 4096


def _mlp(width_in: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width_in, hidden), nn.ReLU(), nn.Linear(hidden, 1))


class ArchPredictor(nn.Module):
    """Base of the predictors: the space, an encoder from ``ENCODERS`` and the target normalisation.

    Args:
        space: the search space whose archs it predicts.
        encoder: name in ``ENCODERS`` (``mlp``, ``lstm``, ``transformer``).
        hidden, num_layers, heads: the encoder's (and the head's hidden width).
    """

    def __init__(self, space: SearchSpace, encoder: str = "mlp", hidden: int = 64, num_layers: int = 2,
                 heads: int = 4) -> None:
        super().__init__()
        self.space = space
        self.settings: dict[str, Any] = {"encoder": encoder, "hidden": hidden, "num_layers": num_layers,
                                         "heads": heads}
        self.encoder: ArchEncoder = ENCODERS.get(encoder)(choice_counts(space), hidden, num_layers, heads)
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))

    def set_normalisation(self, accuracy: torch.Tensor) -> None:
        """Standardise targets by the mean and standard deviation of the training accuracies."""
        std = float(accuracy.std()) if accuracy.numel() > 1 else 0.0
        self.target_mean.fill_(float(accuracy.mean()))
        self.target_std.fill_(std if std > 0 else 1.0)  # all-equal targets: any scale will do

    @abstractmethod
    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        """Predicted accuracy (percent, [n]) of index-encoded archs ([n, L]), with gradients."""

    @abstractmethod
    def training_predictions(self, indices: torch.Tensor, accuracy: torch.Tensor, queries: torch.Tensor,
                             generator: torch.Generator) -> torch.Tensor:
        """Predictions for the training archs at positions ``queries`` in one training step (with gradients);
        ``indices`` and ``accuracy`` are the whole training set."""

    def finalise(self, indices: torch.Tensor, accuracy: torch.Tensor, generator: torch.Generator) -> None:
        """After training: fix what ``predict`` needs from the training set (nothing, by default)."""

    @torch.no_grad()
    def predict(self, archs: Sequence[Arch]) -> torch.Tensor:
        """Predicted accuracy in percent of ``archs`` (float32, shape [len(archs)], on this module's device):
        one batched forward in eval mode, no grad."""
        device = self.target_mean.device
        if not archs:
            return torch.zeros(0, device=device)
        was_training = self.training
        self.eval()
        try:
            return self(arch_indices(self.space, archs).to(device)).float()
        finally:
            self.train(was_training)


#: Predictor classes by kind (``kind: few_shot`` in ``nas-lightning train-predictor``).
PREDICTORS: Registry[str, type[ArchPredictor]] = Registry("predictor kind")


@PREDICTORS.register("supervised")
class SupervisedPredictor(ArchPredictor):
    """The supervised baseline of Table 2: an encoder and an MLP head map one arch to its accuracy."""

    def __init__(self, space: SearchSpace, encoder: str = "mlp", hidden: int = 64, num_layers: int = 2,
                 heads: int = 4) -> None:
        super().__init__(space, encoder, hidden, num_layers, heads)
        self.head = _mlp(hidden, hidden)

    @override
    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.target_mean + self.target_std * self.head(self.encoder(indices)).squeeze(-1)

    @override
    def training_predictions(self, indices: torch.Tensor, accuracy: torch.Tensor, queries: torch.Tensor,
                             generator: torch.Generator) -> torch.Tensor:
        return self(indices[queries])


@PREDICTORS.register("few_shot")
class FewShotPredictor(ArchPredictor):
    """The few-shot relation-network predictor (section 3.2, Fig. 2).

    Args:
        support_size: archs in the support set, during training (drawn afresh each step from the training
            archs that are not queries) and in the saved predictor (a seeded draw from the training set).
        space, encoder, hidden, num_layers, heads: see ``ArchPredictor``.
    """

    def __init__(self, space: SearchSpace, encoder: str = "mlp", hidden: int = 64, num_layers: int = 2,
                 heads: int = 4, support_size: int = 30) -> None:
        super().__init__(space, encoder, hidden, num_layers, heads)
        if support_size < 1:
            raise ValueError(f"support_size must be >= 1, got {support_size}")
        self.settings["support_size"] = support_size
        self.decoder = _mlp(2 * hidden, hidden)
        self.register_buffer("support_indices", torch.zeros(support_size, space.num_decisions, dtype=torch.long))
        self.register_buffer("support_accuracy", torch.zeros(support_size))

    @property
    def support_archs(self) -> list[Arch]:
        return self.space.from_tensor(self.support_indices.cpu())

    def set_support(self, indices: torch.Tensor, accuracy: torch.Tensor) -> None:
        if indices.shape != self.support_indices.shape:
            raise ValueError(f"a support set of shape {tuple(indices.shape)} does not fit this predictor's "
                             f"{tuple(self.support_indices.shape)} (support_size, decisions)")
        self.support_indices.copy_(indices)
        self.support_accuracy.copy_(accuracy)

    def offsets(self, query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """Decoder outputs on every [enc(query_q), enc(support_i)] pair, in percent ([Q, S]).

        The decoder's first Linear on the concatenation equals ``W_q enc(q) + W_s enc(s) + b``: each side is
        multiplied once and the pairs are formed by broadcasting, not by materialising Q x S concatenations.
        """
        codes = self.encoder(torch.cat([query, support]))  # one encoder, shared by queries and support
        q, s = codes[: len(query)], codes[len(query):]
        first, rest = self.decoder[0], self.decoder[1:]
        w_q, w_s = first.weight[:, : self.encoder.hidden], first.weight[:, self.encoder.hidden:]
        pairs = (q @ w_q.T)[:, None, :] + (s @ w_s.T)[None, :, :] + first.bias
        return self.target_std * rest(pairs).squeeze(-1)

    def relation(self, query: torch.Tensor, support: torch.Tensor, support_accuracy: torch.Tensor) -> torch.Tensor:
        """Prediction for each query: the mean over the support set of acc(support_i) + offset_i ([Q])."""
        return (support_accuracy[None, :] + self.offsets(query, support)).mean(dim=1)

    @override
    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.relation(chunk, self.support_indices, self.support_accuracy)
                          for chunk in indices.split(QUERY_CHUNK)])

    @override
    def training_predictions(self, indices: torch.Tensor, accuracy: torch.Tensor, queries: torch.Tensor,
                             generator: torch.Generator) -> torch.Tensor:
        # Random support / query split (section 3.2): the support comes from the training archs outside the batch.
        outside = torch.ones(len(indices), dtype=torch.bool)
        outside[queries] = False
        pool = outside.nonzero().squeeze(1)
        support = pool[torch.randperm(len(pool), generator=generator)[: self.settings["support_size"]]]
        return self.relation(indices[queries], indices[support], accuracy[support])

    @override
    def finalise(self, indices: torch.Tensor, accuracy: torch.Tensor, generator: torch.Generator) -> None:
        chosen = torch.randperm(len(indices), generator=generator)[: self.settings["support_size"]]
        self.set_support(indices[chosen], accuracy[chosen])
