"""The input features that DI-NAS folds into a layer's projection matrix (arXiv:2003.13089, section 4.1,
eqs. 7-8; the feature per update follows OWM's code, arXiv:1810.01256; docs/design_choices.md, "DI-NAS").

``LayerInputRecorder`` puts a forward pre-hook on each layer and, while active, keeps only the batch
sum of the layer's input and the number of samples: the batch mean is what OWM folds in, and a sum
(not the batch) is all it needs. Only the layers on the path that ran record anything, since the
others are never called. Sums (not means) also make the feature of one optimiser step the mean over
every sample of that step: over accumulated micro-batches, and over DDP ranks once the sums are added
up across ranks.

``layer_features`` turns a layer's mean input into the rows folded into its P: a Linear folds in that
one vector; a Conv2d the patches of the mean input (``F.unfold`` with the conv's geometry), since each
output position is W times one patch; at most ``max_patches`` of them, a seeded subsample.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas_lightning.projection.owm import LayerLayout


def batch_sum(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum over samples of ``x`` in fp32, number of samples) for the input of ``module``."""
    if isinstance(module, nn.Linear):  # (..., in): every leading index is one sample
        flat = x.detach().reshape(-1, x.shape[-1])
        return flat.sum(0, dtype=torch.float32), flat.shape[0]
    if x.dim() == 3:  # an unbatched conv input (C, H, W)
        return x.detach().float(), 1
    return x.detach().sum(0, dtype=torch.float32), x.shape[0]


class LayerInputRecorder:
    """Records the batch sum of each layer's input while ``active`` and autograd is on.

    Evaluation passes run under ``no_grad`` and are never recorded. A layer called several times
    while active (micro-batches of one step) accumulates all its calls.
    """

    def __init__(self, layers: Mapping[str, nn.Module]) -> None:
        self.active = False
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._handles = [m.register_forward_pre_hook(partial(self._record, name)) for name, m in layers.items()]

    def _record(self, name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        if not self.active or not torch.is_grad_enabled():
            return
        total, count = batch_sum(module, args[0])
        if name in self._sums:
            if self._sums[name].shape != total.shape:
                raise ValueError(f"layer {name!r} ran on inputs of shapes {tuple(self._sums[name].shape)} and "
                                 f"{tuple(total.shape)} (per sample) within one step; its feature is the mean of "
                                 "one input shape, so keep the input size fixed within a step")
            self._sums[name] += total
            self._counts[name] += count
        else:
            self._sums[name], self._counts[name] = total, count

    def pop(self) -> dict[str, tuple[torch.Tensor, int]]:
        """The (sum, count) of every layer that ran since the last pop, and forget them."""
        out = {name: (self._sums[name], self._counts[name]) for name in self._sums}
        self._sums, self._counts = {}, {}
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def conv_patches(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The patches (L, C_in*kh*kw) that ``conv`` multiplies its weight with, for one input (C, H, W);
    column order matches ``conv.weight.reshape(out, -1)`` (and per group its slice of columns)."""
    x = x.unsqueeze(0)
    padding = conv.padding
    if conv.padding_mode != "zeros" or isinstance(padding, str):
        # Pad as Conv2d does (reflect / replicate / circular, or 'same'), then unfold without padding.
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x = F.pad(x, conv._reversed_padding_repeated_twice, mode=mode)
        padding = 0
    cols = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=padding, stride=conv.stride)
    return cols[0].T


def layer_features(module: nn.Module, layout: LayerLayout, mean_input: torch.Tensor, max_patches: int,
                   generator: torch.Generator) -> torch.Tensor:
    """The feature rows (n, dim), or (groups, n, dim) for a grouped conv, folded into P after a step.

    ``mean_input``: the layer's batch-mean input, (in,) for a Linear, (C, H, W) for a Conv2d. A conv
    keeps ``max_patches`` patches drawn by ``generator`` without replacement (all if it has fewer);
    the same positions for every group. A bias appends a constant 1 to every row.
    """
    if isinstance(module, nn.Conv2d):
        rows = conv_patches(module, mean_input)
        if rows.shape[0] > max_patches:
            keep = torch.randperm(rows.shape[0], generator=generator)[:max_patches]
            rows = rows[keep.to(rows.device)]
    else:
        rows = mean_input.reshape(1, -1)
    rows = rows.float()
    if layout.groups > 1:
        rows = rows.reshape(rows.shape[0], layout.groups, -1).transpose(0, 1)
    if layout.has_bias:
        rows = torch.cat([rows, rows.new_ones(*rows.shape[:-1], 1)], dim=-1)
    if rows.shape[-1] != layout.dim:
        raise ValueError(f"features of width {rows.shape[-1]} do not match the layer's projection width {layout.dim}")
    return rows
