"""The self-critical policy gradient of WPNAS (Lin et al., "WPNAS: Neural Architecture Search by jointly using
Weight Sharing and Predictor", arXiv:2203.02086, section 3.4, eqs. 4-7) on the alphas of a
``ProbabilisticSampler``.

For an arch A~ drawn from p(A | alpha) (eq. 1) on a validation batch (X, y):

    r     = log p(y | X, A~, w~) + beta1 * FSP(A~) - beta2 * FLOPs(A~)                      (eq. 5)
          = -CE(A~) + beta1 * FSP(A~) - beta2 * FLOPs(A~)
    r_hat = the same reward of A_hat = argmax_A p(A | alpha) on the same batch                 (eq. 6)
    grad_alpha L = -(r - r_hat) * grad_alpha log p(A~ | alpha)                                  (eq. 7)

With p a product of softmaxes, grad_alpha^l log p(A~ | alpha) = onehot(A~^l) - softmax(alpha^l), so one update
moves each decision's logits by lr * (r - r_hat) * (onehot - softmax) (for plain SGD). With n archs per update
the gradient is the mean of their terms. CE is the inherited-weight cross-entropy (``SupernetModule.evaluate``),
FSP the predictor's accuracy as a fraction in [0, 1] (``ArchPredictor.predict`` gives percent), FLOPs min-max
normalised over the space to [0, 1] (``FlopsScale``), so beta1 and beta2 weigh numbers of the scale of a loss.
Everything here is a function of its inputs: no Trainer, the same on every rank given the same rewards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from nas_lightning.samplers.probabilistic import ProbabilisticSampler
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.distributed import step_generator

__all__ = ["FlopsScale", "Predictor", "RewardError", "SelfCriticalReward", "policy_step",
           "self_critical_gradient"]

#: Spaces with at most this many archs and no cost table have their FLOPs bounds counted over every arch.
ENUMERATE_LIMIT = 4096


class RewardError(ValueError):
    """A reward that is NaN or infinite; the message names beta1, beta2 and the part that is not finite."""


class Predictor(Protocol):
    """What the reward needs of a predictor (``nas_lightning.predictors.ArchPredictor``)."""

    def predict(self, archs: Sequence[Arch]) -> torch.Tensor: ...


class FlopsScale:
    """FLOPs(A) min-max normalised over the space: (flops - min) / (max - min), in [0, 1].

    The bounds are exact where the space has an additive cost table (the fixed part plus each decision's
    cheapest or dearest choice) or at most ``ENUMERATE_LIMIT`` archs (counted over all of them); otherwise they
    are the extremes of ``num_samples`` archs drawn from (``seed``, ``"flops_bounds"``, 0), and values outside
    them are clamped (docs/design_choices.md, "WPNAS"). A space whose archs all cost the same gives 0.
    """

    def __init__(self, space: SearchSpace, num_samples: int = 256, seed: int = 0) -> None:
        if num_samples < 2:
            raise ValueError(f"FlopsScale needs num_samples >= 2, got {num_samples}")
        self.space, self.num_samples, self.seed = space, num_samples, seed
        self._bounds: tuple[float, float] | None = None

    @property
    def bounds(self) -> tuple[float, float]:
        if self._bounds is None:
            self._bounds = self._compute_bounds()
        return self._bounds

    def _compute_bounds(self) -> tuple[float, float]:
        table = self.space.cost_table()
        if table is not None:
            fixed = table.fixed[1]
            return (float(fixed + sum(min(f for _, f in row) for row in table.entries)),
                    float(fixed + sum(max(f for _, f in row) for row in table.entries)))
        if self.space.num_archs <= ENUMERATE_LIMIT:
            archs = list(self.space.enumerate())
        else:
            archs = self.space.sample_many(self.num_samples, step_generator(self.seed, "flops_bounds", 0))
        flops = [self.space.flops(a) for a in archs]
        return float(min(flops)), float(max(flops))

    def __call__(self, archs: Sequence[Arch]) -> torch.Tensor:
        lo, hi = self.bounds
        flops = torch.tensor([float(self.space.flops(a)) for a in archs], dtype=torch.float64)
        if hi <= lo:
            return torch.zeros_like(flops)
        return ((flops - lo) / (hi - lo)).clamp(0.0, 1.0)


def check_betas(beta1: float, beta2: float) -> None:
    """Refuse betas that make every reward NaN or infinite."""
    bad = [f"{name}={value!r}" for name, value in (("beta1", beta1), ("beta2", beta2))
           if not math.isfinite(float(value))]
    if bad:
        raise RewardError(f"WPNAS reward r = -CE + beta1 * FSP - beta2 * FLOPs (eq. 5) needs finite weights, got "
                          f"{', '.join(bad)}; set model.init_args.beta1 / beta2 to finite numbers")


class SelfCriticalReward:
    """r(A) = -CE(A) + beta1 * FSP(A) - beta2 * FLOPs(A) (WPNAS eq. 5), given each arch's CE on one batch.

    Args:
        space: the search space (FLOPs).
        beta1: weight of the predictor's accuracy (a fraction); 0 leaves the predictor out.
        beta2: weight of the normalised FLOPs; 0 leaves them out.
        predictor: gives FSP(A) in percent; needed when beta1 != 0. Its predictions are cached per arch (it
            is fixed during the search).
        flops: the FLOPs normalisation (default: ``FlopsScale(space)``, computed only when beta2 != 0).
    """

    def __init__(self, space: SearchSpace, beta1: float = 0.0, beta2: float = 0.0, predictor: Predictor | None = None,
                 flops: FlopsScale | None = None) -> None:
        check_betas(beta1, beta2)
        if beta1 != 0 and predictor is None:
            raise ValueError(f"beta1={beta1} weighs the few-shot predictor's FSP(A) (WPNAS eq. 5), but no predictor "
                             "is given: set model.init_args.predictor to a file saved by `nas-lightning "
                             "train-predictor`, or beta1 to 0")
        self.space, self.beta1, self.beta2, self.predictor = space, float(beta1), float(beta2), predictor
        self.flops = flops or FlopsScale(space)
        self._fsp: dict[Arch, float] = {}

    def fsp(self, archs: Sequence[Arch]) -> torch.Tensor:
        """FSP(A) as a fraction (n,), float64; zeros without a predictor."""
        if self.predictor is None:
            return torch.zeros(len(archs), dtype=torch.float64)
        new = list(dict.fromkeys(a for a in archs if a not in self._fsp))
        if new:
            with torch.no_grad():
                predicted = self.predictor.predict(new).detach().to(torch.float64).cpu().reshape(-1)
            if predicted.numel() != len(new):
                raise ValueError(f"the predictor gave {predicted.numel()} predictions for {len(new)} archs")
            self._fsp.update(zip(new, (predicted / 100.0).tolist()))
        return torch.tensor([self._fsp[a] for a in archs], dtype=torch.float64)

    def __call__(self, archs: Sequence[Arch], ce: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The rewards (n,) and their parts (``ce``, ``fsp``, ``flops``), float64 on the CPU."""
        ce = ce.detach().to(torch.float64).cpu().reshape(-1)
        fsp = self.fsp(archs)
        flops = self.flops(archs) if self.beta2 != 0 else torch.zeros(len(archs), dtype=torch.float64)
        reward = -ce + self.beta1 * fsp - self.beta2 * flops
        if not torch.isfinite(reward).all():
            i = int((~torch.isfinite(reward)).nonzero()[0])
            parts = {"CE": float(ce[i]), "FSP": float(fsp[i]), "FLOPs": float(flops[i])}
            culprits = [k for k, v in parts.items() if not math.isfinite(v)] or ["beta1 * FSP - beta2 * FLOPs"]
            raise RewardError(
                f"the WPNAS reward of {archs[i]} is {float(reward[i])} with beta1={self.beta1}, beta2={self.beta2} "
                f"(CE {parts['CE']}, FSP {parts['FSP']}, normalised FLOPs {parts['FLOPs']}; not finite: "
                f"{', '.join(culprits)}); lower beta1 / beta2, or, for a CE that is not finite, the supernet's "
                "learning rate (its weights diverged)")
        return reward, {"ce": ce, "fsp": fsp, "flops": flops}


def self_critical_gradient(sampler: ProbabilisticSampler, archs: Sequence[Arch], rewards: torch.Tensor,
                           baseline: float) -> torch.Tensor:
    """grad_alpha of mean_i[-(r_i - r_hat) * log p(A_i | alpha)] (eq. 7), shape (D, K), without changing alpha."""
    if len(archs) != len(rewards) or not archs:
        raise ValueError(f"need one reward per arch and at least one arch, got {len(archs)} archs and "
                         f"{len(rewards)} rewards")
    advantage = (rewards.detach().to(torch.float64).cpu() - baseline).to(torch.float32)
    with torch.enable_grad():
        loss = -(advantage * sampler.log_prob(archs)).mean()
        (grad,) = torch.autograd.grad(loss, sampler.alphas)
    return grad


#: ``reward(archs) -> (rewards (n,), parts)``: the rewards of archs on one validation batch.
RewardFn = Callable[[list[Arch]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def policy_step(sampler: ProbabilisticSampler, reward: RewardFn, step: int, archs_per_step: int = 1
                ) -> dict[str, Any]:
    """One self-critical update of alpha (eqs. 4-7): draw ``archs_per_step`` archs from p(A | alpha), reward them
    and the argmax arch on the same batch (one call of ``reward``), step alpha with eq. 7's gradient. Returns the
    update's statistics (mean reward, baseline, advantage, the reward's parts, mean entropy)."""
    archs = sampler.draw_update_archs(archs_per_step)
    greedy = sampler.argmax_arch()
    rewards, parts = reward([*archs, greedy])
    r, r_hat = rewards[:-1], float(rewards[-1])
    sampler.step(self_critical_gradient(sampler, archs, r, r_hat), step)
    return {"reward": float(r.mean()), "baseline": r_hat, "advantage": float(r.mean() - r_hat),
            "ce": float(parts["ce"][:-1].mean()), "fsp": float(parts["fsp"][:-1].mean()),
            "flops": float(parts["flops"][:-1].mean()), "entropy": float(sampler.entropy().mean())}
