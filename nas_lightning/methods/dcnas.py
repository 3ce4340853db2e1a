"""DC-NAS: distribution-consistent one-shot NAS ("Distribution Consistent Neural Architecture Search", the DC-NAS
paper; sections 1-2). The paper traces the gap between inherited and stand-alone weights to two likelihoods: that
of each sampled arch, and the joint likelihood of pairs of archs that share weights. It trains the supernet's
weights and its *local weight-sharing states* in alternation, layer by layer, with a self-supervised clustering
of archs per layer whose cluster centres stand for their clusters.

The algorithm (docs/design_choices.md, "DC-NAS", lists what the paper leaves open):

- Weights: every candidate op with parameters holds M copies (``nas_lightning.supernet.copies``); the learned
  picker ``SharingState`` (``nas_lightning.supernet.sharing_state``) maps (layer, site, op, cluster) to a copy.
  Before the first inference every arch runs copy 0: SPOS.
- Training step t: a ~ the sampler (uniform), and a partner a' that shares a's copy at a random layer d (a member
  of a's cluster at (d, a's op) from the last clustering; before any, a uniform arch with a's op at d):
  loss = CE(a) + lambda * CE(a') (``partner_weight`` lambda; 0 is SPOS's step). Both come from generators seeded
  by (seed, t), so every rank and a resumed run draw the same pair.
- Sharing states: every few epochs after a warm-up, the ``SharingStateUpdate`` callback calls
  ``update_sharing_state``: K-means per layer and op, consistency of the clusters' representatives (cosine of
  their gradients on the op's weights, on one supernet-val batch every rank holds whole), clusters below the
  threshold split into their own copies, a new copy starting from its parent's weights
  (``nas_lightning.search.sharing_update``). Rank 0's state is broadcast, the new copies' optimiser state is
  cleared, and the state is checkpointed.
- Evaluation and search with inherited weights run each arch with the copies its clusters pick (the supernet's
  forward does), so the evolutionary search and the ranking callbacks need nothing more.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from typing_extensions import override

from nas_lightning.data.batch_source import Batch
from nas_lightning.methods.supernet_module import SupernetModule, require_callbacks
from nas_lightning.samplers.base import SamplerFactory
from nas_lightning.samplers.uniform import UniformSampler
from nas_lightning.search.sharing_update import InferenceResult, apply_inference, infer_sharing_state, sample_contexts
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.supernet.copies import CopyCount, count_copies, install_copies, weight_copies
from nas_lightning.supernet.sharing_state import SharingState
from nas_lightning.utils.distributed import broadcast_object, step_generator


class DCNAS(SupernetModule):
    """DC-NAS (module docstring): SPOS training with a partner term on weight copies picked by learned local
    sharing states.

    Args:
        sampler: ``(space, seed) -> ArchSampler`` drawing a (default ``UniformSampler``).
        num_copies: M, copies of every candidate op with weights, and K = M clusters per layer and op. M = 1 with
            ``partner_weight`` 0 is SPOS bit for bit.
        partner_weight: lambda of the partner term CE(a'); 0 disables it.
        kwargs: see ``SupernetModule``; ``seed`` also seeds the partners and the clusterings.
    """

    search_val_batches = "whole"  # the consistency scores use one full supernet-val batch on every rank

    def __init__(self, space: SearchSpace, sampler: SamplerFactory = UniformSampler, num_copies: int = 2,
                 partner_weight: float = 0.5, **kwargs: Any) -> None:
        if isinstance(partner_weight, bool) or not isinstance(partner_weight, (int, float)) or partner_weight < 0:
            raise ValueError(f"DCNAS partner_weight must be a number >= 0 (0 disables the partner term), "
                             f"got {partner_weight!r}")
        super().__init__(space, sampler=sampler, **kwargs)
        self.partner_weight = float(partner_weight)
        self.sharing = SharingState(space, self.supernet, num_copies)
        install_copies(self.supernet, self.sharing)
        self.partner_layers = [d for d, row in enumerate(self.sharing.layout.reach) if row]
        self.last_inference: InferenceResult | None = None  # the latest inference, for the diagnostics
        self.local_inference: InferenceResult | None = None
        self.current_partner: Arch | None = None

    @override
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            require_callbacks(self.trainer, "DCNAS", ["SharingStateUpdate"],
                              "configs/dcnas/deeper_insights_fashion_mnist.yaml")

    # --- training ---------------------------------------------------------------------------------------------
    def partner(self, arch: Arch, step: int) -> Arch:
        """a': shares ``arch``'s copy at a layer d drawn from (seed, step): a member of ``arch``'s cluster at
        (d, its op) from the last clustering, or, where (d, op) is not clustered yet, a uniform arch with the same
        op at d."""
        gen = step_generator(self.seed, "dcnas/partner", step)
        d = self.partner_layers[int(torch.randint(len(self.partner_layers), (1,), generator=gen))]
        o = arch.indices[d]
        state = self.sharing
        if bool(state.clustered[d, o]):
            k = int(state.clusters(arch)[d])
            members = (state.labels[d, o] == k).nonzero().flatten()
            if len(members):  # (a centre that K-means left without samples falls through to a uniform draw)
                pick = members[int(torch.randint(len(members), (1,), generator=gen))]
                return self.space.arch(state.samples[d, o, pick].long().tolist())
        return self.space.arch(sample_contexts(state.sizes, d, o, 1, gen)[0].tolist())

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)  # CE(a), a from the sampler: SPOS's step
        if self.partner_weight == 0:
            return loss
        x, y = batch
        self.current_partner = partner = self.partner(self.current_arch, self.global_step)
        partner_loss = F.cross_entropy(self.supernet(x, partner), y, label_smoothing=self.label_smoothing)
        self.log("train/partner_loss", partner_loss)
        return loss + self.partner_weight * partner_loss

    # --- sharing states ---------------------------------------------------------------------------------------
    def update_sharing_state(self, num_archs: int = 256, threshold: float = 0.0) -> InferenceResult | None:
        """One sharing-state inference on a supernet-val batch drawn from (seed, round), the same on every rank;
        rank 0's result is adopted everywhere. None with M = 1 (nothing to split)."""
        if self.sharing.M == 1:
            return None
        gen = step_generator(self.seed, "dcnas/val_batch", self.sharing.rounds)
        batch = self.batches.seeded_val(1, gen)[0]
        result = infer_sharing_state(self.supernet, self.sharing, batch, self.seed, num_archs, threshold,
                                     lambda logits, y: F.cross_entropy(logits, y))
        self.local_inference = result  # this rank's own, kept to check that ranks agree before the broadcast
        result = broadcast_object(result, self._trainer)
        self._clear_optimizer_state(apply_inference(self.supernet, self.sharing, result))
        self.last_inference = result
        rank_zero_info(f"DC-NAS sharing state {self.sharing.rounds}: {len(result.splits)} copies split, "
                       f"{self.copies_in_use_params():,} parameters in use")
        return result

    def _clear_optimizer_state(self, overwritten: list[tuple[str, int]]) -> None:
        """A copy that starts over from its parent's weights starts with no momentum either."""
        if self._trainer is None or not overwritten:
            return
        copies = weight_copies(self.supernet)
        params = {p for part, c in overwritten for p in copies[part].copy_module(c).parameters()}
        for optimizer in self.trainer.optimizers:
            for p in params:
                optimizer.state.pop(p, None)

    @property
    def copy_count(self) -> CopyCount:
        return count_copies(self.supernet)

    def copies_in_use_params(self) -> int:
        """Parameters the sharing state can reach: the supernet plus every copy some cluster uses (the copies
        allocated but unused are not counted)."""
        count = self.copy_count
        in_use = self.sharing.copies_in_use()
        return count.supernet + sum((in_use[p] - 1) * numel for p, (_, numel) in count.parts.items())

    # --- search state -----------------------------------------------------------------------------------------
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["nas_sharing_state"] = self.sharing.state_dict()

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "nas_sharing_state" in checkpoint:
            self.sharing.load_state_dict(checkpoint["nas_sharing_state"])
