"""Reduced weight sharing (Zhang et al., "Deeper Insights into Weight Sharing in Neural Architecture Search",
arXiv:2001.01431, section 5): SPOS training on a supernet whose parts hold several weight copies.

The archs fall into g groups, each a fully shared supernet of its own (group sharing), and/or only the stem and
the first k body parts are shared while the later ones and the classifier are private to each arch or group
(prefix sharing). The copies are parts of the supernet (``nas_lightning.supernet.copies``), picked per arch by
``ReducedSharingPicker`` (``nas_lightning.supernet.pickers``): they are allocated up front, trained with their own
optimiser state, checkpointed with the model and exported with the arch (``Supernet.export``); inherited-weight
evaluation and the searches run each arch with its copies. Every step trains one arch, as SPOS does: more
parameters, no more compute. Sampling is uniform unless the sampler says otherwise (``RoundRobinSampler`` is the
paper's schedule, every arch once per cycle). g = 1 with no prefix is SPOS bit for bit; g = the number of archs is
stand-alone training of every arch. docs/design_choices.md, "Reduced sharing", gives the choices.
"""

from __future__ import annotations

import resource
import sys
from typing import Any, Literal

import torch
from pytorch_lightning.utilities import rank_zero_info
from typing_extensions import override

from nas_lightning.methods.supernet_module import SupernetModule
from nas_lightning.samplers.base import SamplerFactory
from nas_lightning.samplers.uniform import UniformSampler
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.supernet.copies import CopyCount, count_copies, install_copies, weight_copies
from nas_lightning.supernet.pickers import GroupBy, ReducedSharingPicker
from nas_lightning.utils.distributed import derive_seed


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory of this process so far, in MiB: allocated on an accelerator, resident set on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class ReducedSharing(SupernetModule):
    """SPOS on a supernet with group and prefix sharing (arXiv:2001.01431, section 5).

    Args:
        sampler: ``(space, seed) -> ArchSampler``: ``UniformSampler`` (default) or ``RoundRobinSampler`` (the
            paper's schedule).
        groups: g, the number of arch groups, each with its own copy of every part that is not shared.
        group_by: ``"shuffle"`` (a seeded shuffle of the enumeration, then ``position % g``), ``"contiguous"``
            (blocks of the enumeration) or ``"decisions"`` (the choices of the first decisions).
        prefix: k, body parts shared by every arch after the (shared) stem; the later body parts and the head are
            private to each group (g > 1) or each arch (g = 1). None: no prefix sharing.
        group_seed: seed of the ``"shuffle"`` grouping; None: ``seed``.
        copy_init: the extra copies start as the supernet's own weights (``"parent"``: every group from the same
            initialisation) or drawn afresh from (``seed``, part, copy) with the layers' default initialisers
            (``"fresh"``: independent supernets).
        kwargs: see ``SupernetModule`` (``seed`` seeds the sampler).
    """

    def __init__(self, space: SearchSpace, sampler: SamplerFactory = UniformSampler, groups: int = 1,
                 group_by: GroupBy = "shuffle", prefix: int | None = None, group_seed: int | None = None,
                 copy_init: Literal["parent", "fresh"] = "parent", **kwargs: Any) -> None:
        if copy_init not in ("parent", "fresh"):
            raise ValueError(f"copy_init must be 'parent' or 'fresh', got {copy_init!r}")
        super().__init__(space, sampler=sampler, **kwargs)
        self.picker = ReducedSharingPicker(space, len(self.supernet.body), groups, group_by, prefix,
                                           self.seed if group_seed is None else group_seed)
        install_copies(self.supernet, self.picker)
        if copy_init == "fresh":
            for part, copies in weight_copies(self.supernet).items():
                for c in range(1, copies.num_copies):
                    copies.reset_(c, derive_seed(self.seed, f"copy_init/{part}", c))

    @property
    def copy_count(self) -> CopyCount:
        return count_copies(self.supernet)

    def archs_per_weight(self) -> float:
        """The degree of weight sharing: over the supernet's parameters (one copy of each part), the mean number
        of archs that share each of them (N archs over M copies of its part); SPOS: N, stand-alone: 1."""
        count, n = self.copy_count, self.space.num_archs
        in_parts = sum(numel for _, numel in count.parts.values())
        shared = (count.supernet - in_parts) * n + sum(numel * n / m for m, numel in count.parts.values())
        return shared / max(count.supernet, 1)

    @override
    def on_fit_start(self) -> None:
        """Log what the setting costs: parameters with and without the copies, and the memory so far."""
        count = self.copy_count
        metrics = {**count.as_metrics(),
                   "params/bytes": float(sum(p.numel() * p.element_size() for p in self.supernet.parameters())),
                   "params/archs_per_weight": self.archs_per_weight(),
                   "memory/peak_mib": peak_memory_mib(self.device)}
        if self.eval_archs:  # what one step trains: the stand-alone size of an arch
            metrics["params/arch_mean"] = sum(self.space.params(a) for a in self.eval_archs) / len(self.eval_archs)
        rank_zero_info(
            f"ReducedSharing (g={self.picker.groups}, group_by={self.picker.group_by}, prefix={self.picker.prefix}): "
            f"{count.total:,} parameters, {count.supernet:,} in one copy of each part, {count.extra:,} in extra "
            f"copies ({metrics['params/copies_ratio']:.2f}x), {metrics['params/archs_per_weight']:.3g} archs per "
            f"weight; peak memory {metrics['memory/peak_mib']:.0f} MiB"
        )
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(metrics, step=self.global_step)

    @override
    def on_train_epoch_end(self) -> None:
        self.log("memory/peak_mib", peak_memory_mib(self.device), rank_zero_only=True)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["nas_copies"] = self.picker.state_dict()

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "nas_copies" in checkpoint:
            self.picker.load_state_dict(checkpoint["nas_copies"])
