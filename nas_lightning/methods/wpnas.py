"""WPNAS (Lin et al., "WPNAS: Neural Architecture Search by jointly using Weight Sharing and Predictor",
arXiv:2203.02086): one-shot training with probabilistic sampling, a self-critical policy gradient whose reward
joins the supernet's evaluation, a few-shot predictor and the FLOPs, and optional HyperNet weak sharing.

Step 4 of the paper's procedure (section 4, "WPNAS Search"), as this method and its callback run it:
1. Weights: at each optimiser step an arch A ~ p(A | alpha) (eq. 1; ``ProbabilisticSampler``) is trained on one
   batch with its inherited weights (``SupernetModule.training_step``), plus the landmark hinge when a
   ``landmark`` is given (Table 1, "SPOS + landmark + PS ..."; ``LandmarkSPOS``), and through the HyperNet's
   effective weights w = w_b * w_o(A) when a ``hypernet`` is given (section 3.3, eq. 2).
2. Architecture probabilities: after every ``every_n_steps`` steps from ``start_epoch`` on (the paper alternates
   weights and alphas after a warm-up of 200 epochs), ``callbacks.PolicyStep`` calls ``update_policy``: a
   self-critical policy-gradient step on alpha (eqs. 4-7; ``nas_lightning.search.policy_gradient``) with the
   reward r = -CE(A) + beta1 * FSP(A) - beta2 * FLOPs(A) on one supernet-val batch, baseline the argmax arch's
   reward on the same batch.
3. The final arch is argmax_A p(A | alpha), written at the end of fit as ``wpnas_arch.json``; the alphas of every
   epoch go to ``alphas.csv`` and the logger.
Warm-up (step 1 of the procedure) is this method before ``start_epoch`` (uniform archs, alpha untouched: SPOS),
or a separate SPOS run. The choices the paper leaves open are in docs/design_choices.md, "WPNAS".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from nas_lightning.data.batch_source import Batch
from nas_lightning.methods.landmark import LandmarkFactory, LandmarkSPOS
from nas_lightning.methods.supernet_module import require_callbacks
from nas_lightning.samplers.probabilistic import ProbabilisticSampler, export_argmax
from nas_lightning.search.policy_gradient import SelfCriticalReward, policy_step
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.supernet.hypernet import HyperNet, install_hypernet, installed_hypernet
from nas_lightning.utils.atomic import atomic_write_csv, atomic_write_json
from nas_lightning.utils.distributed import step_generator

_CONFIG = "configs/wpnas/deeper_insights_fashion_mnist.yaml"
ARCH_FILE = "wpnas_arch.json"
ALPHAS_FILE = "alphas.csv"

#: ``(space, supernet) -> HyperNet`` (``nas_lightning.supernet.hypernet.HyperNet`` with its init_args).
HyperNetFactory = Callable[[SearchSpace, nn.Module], HyperNet]


class WPNAS(LandmarkSPOS):
    """Supernet training on archs drawn from p(A | alpha), alpha learned by the self-critical policy gradient.

    Args:
        sampler: ``(space, seed) -> ProbabilisticSampler`` (its Adam settings); its state (alphas, Adam state,
            counters, per-epoch snapshots) is checkpointed with the model.
        beta1: weight of the few-shot predictor's accuracy (a fraction) in the reward (eq. 5); needs ``predictor``.
        beta2: weight of the FLOPs, min-max normalised over the space to [0, 1], in the reward (eq. 5).
        predictor: a predictor file (``nas-lightning train-predictor``), read with
            ``nas_lightning.predictors.load_predictor``; None: no predictor (Table 1's "+ PS" row).
        hypernet: ``(space, supernet) -> HyperNet`` for weak weight sharing (section 3.3); built here and
            installed into the supernet, so every forward pass (training, rewards, evaluation, export) uses the
            effective weights, and its parameters train in the supernet's optimiser (none if frozen). None: off.
        landmark: ``(space, seed) -> LandmarkRegularizer``, see ``LandmarkSPOS``; None: off.
        init_weights: a checkpoint of a supernet method on the same space (the warm-up, step 1 of section 4)
            whose supernet weights this run starts from; the optimiser, schedule and alphas start afresh (unlike
            ``--ckpt_path``, which resumes a run of this method with its settings).
        kwargs: see ``SupernetModule``; ``seed`` also seeds the reward batches.
    """

    search_val_batches = "sharded"  # rewards split full supernet-val batches over the ranks (setup checks)

    def __init__(self, space: SearchSpace,
                 sampler: Callable[[SearchSpace, int], ProbabilisticSampler] = ProbabilisticSampler,
                 beta1: float = 0.0, beta2: float = 0.0, predictor: str | None = None,
                 hypernet: HyperNetFactory | None = None, landmark: LandmarkFactory | None = None,
                 init_weights: str | None = None, **kwargs: Any) -> None:
        super().__init__(space, landmark=landmark, sampler=sampler, **kwargs)
        if init_weights is not None:  # before the HyperNet is installed: the warm-up's supernet has none
            load_supernet_weights(self.supernet, init_weights)
        if not isinstance(self.sampler, ProbabilisticSampler):
            raise TypeError(f"WPNAS needs a ProbabilisticSampler, got {type(self.sampler).__name__}")
        self.predictor_path = predictor
        self.reward_fn = SelfCriticalReward(space, beta1, beta2, _load_predictor(predictor, space))
        if hypernet is not None:  # a child of the supernet: trained in its optimiser, checkpointed with it
            install_hypernet(self.supernet, hypernet(space, self.supernet))
        self.last_policy_stats: dict[str, Any] = {}
        self.save_hyperparameters(ignore=["space", "optimizer", "lr_scheduler", "sampler", "landmark", "hypernet"])

    @property
    def hypernet(self) -> HyperNet | None:
        return installed_hypernet(self.supernet)

    @property
    def policy(self) -> ProbabilisticSampler:
        assert isinstance(self.sampler, ProbabilisticSampler)
        return self.sampler

    @override
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            require_callbacks(self.trainer, "WPNAS", ["PolicyStep"], _CONFIG)

    # --- eqs. 4-7 --------------------------------------------------------------------------------------
    def update_policy(self, step: int, archs_per_step: int = 1) -> dict[str, Any]:
        """One self-critical update of alpha after optimiser step ``step``, on the supernet-val batch drawn from
        (seed, ``"policy_batch"``, update number), the same on every rank."""
        batch = self.batches.seeded_val(1, step_generator(self.seed, "policy_batch", self.policy.num_updates))[0]
        self.last_policy_stats = policy_step(self.policy, lambda archs: self.reward(archs, batch), step,
                                             archs_per_step)
        return self.last_policy_stats

    def reward(self, archs: list[Arch], batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """r(A) of eq. 5 for each arch on ``batch``: CE with inherited weights, each rank on its slice of the
        batch and the totals summed, so every rank gets the same rewards."""
        x, y = batch
        rank, world = self.trainer.global_rank, self.trainer.world_size
        if len(y) < world:
            raise ValueError(f"a supernet-val batch of {len(y)} cannot be split over {world} ranks; "
                             "raise data.eval_batch_size")
        shard = (x[rank::world].to(self.device), y[rank::world].to(self.device))
        return self.reward_fn(archs, self.evaluate(archs, batches=[shard]).mean_loss)

    # --- outputs ---------------------------------------------------------------------------------------
    def finish_epoch(self, epoch: int, out_dir: Path, write: bool) -> None:
        """Keep this epoch's alphas (checkpointed with the sampler), log the probabilities, and (``write``: the
        writing rank) rewrite ``alphas.csv`` with every epoch so far."""
        self.policy.snapshot(epoch, self.global_step)
        probs = self.policy.probs()
        self.log_dict({f"alpha/{d.name}/{c}": float(probs[i, k]) for i, d in enumerate(self.space.decisions)
                       for k, c in enumerate(d.choices)}, rank_zero_only=True)
        if write:
            atomic_write_csv(out_dir / ALPHAS_FILE, self.policy.history_rows())

    def export(self, out_dir: Path, write: bool) -> list[dict[str, Any]]:
        """The final argmax arch (``export_argmax``), written as ``wpnas_arch.json`` by the writing rank."""
        result = export_argmax(self.policy)
        if write:
            atomic_write_json(out_dir / ARCH_FILE, result)
        return result


def policy_update_due(epoch: int, step: int, start_epoch: int, every_n_steps: int,
                      sampler: ProbabilisticSampler) -> bool:
    """Whether optimiser step ``step`` (0-based, of epoch ``epoch``) ends with a policy update: from
    ``start_epoch`` on, after every ``every_n_steps``-th step, and not where that step's update already ran."""
    return epoch >= start_epoch and (step + 1) % every_n_steps == 0 and step > sampler.last_update_step


def load_supernet_weights(supernet: nn.Module, path: str) -> None:
    """Copy the supernet weights (``supernet.*`` of the state dict) of the checkpoint at ``path`` into
    ``supernet``; a checkpoint of another space or network is an error naming the file."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"init_weights: checkpoint {path} does not exist (the warm-up run's last.ckpt?)")
    checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", {}) if isinstance(checkpoint, dict) else {}
    weights = {k.removeprefix("supernet."): v for k, v in state.items() if k.startswith("supernet.")}
    if not weights:
        raise ValueError(f"init_weights: {path} holds no supernet weights (no 'supernet.*' in its state_dict): give "
                         "the checkpoint of a supernet method's fit")
    try:
        supernet.load_state_dict(weights)
    except RuntimeError as error:
        raise ValueError(f"init_weights: the supernet of {path} does not fit this space's supernet (another space or "
                         f"space settings?): {str(error).splitlines()[0]}") from None


def _load_predictor(path: str | None, space: SearchSpace) -> Any:
    if path is None:
        return None
    from nas_lightning.predictors import load_predictor  # the predictor package is needed only with a predictor

    return load_predictor(path, space)
