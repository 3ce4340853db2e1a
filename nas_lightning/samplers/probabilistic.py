"""Probabilistic sampling of WPNAS (Lin et al., "WPNAS: Neural Architecture Search by jointly using Weight
Sharing and Predictor", arXiv:2203.02086, section 3.1, eq. 1).

Architecture parameters alpha hold one logit per (decision, choice); decisions are independent, so

    p(A | alpha) = prod_l p(A^l | alpha^l),   p(A^l = k | alpha^l) = softmax(alpha^l)_k        (eq. 1)

and alpha = 0 is the uniform distribution the paper starts from ("for fair search"). The alphas are a
float32 ``nn.Parameter`` of shape (decisions, most choices), the entries past a decision's last choice held at
-inf in the softmax, so every operation over all decisions is one tensor operation. They live on the CPU in
fp32 whatever the trainer's device and precision (they are a few hundred numbers, and the draws use a CPU
generator), and are updated only by this sampler's own Adam (``step``), from the self-critical policy gradient
of ``nas_lightning.search.policy_gradient`` (eqs. 4-7).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from nas_lightning.samplers.base import ArchSampler
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.distributed import step_generator


class ProbabilisticSampler(ArchSampler):
    """The training arch of each step drawn from p(A | alpha) (WPNAS eq. 1).

    The whole search state is here and checkpointed with the sampler (``SupernetModule`` saves it under
    ``"nas_sampler"``): the alphas, their Adam state, the update counter, the last step whose policy update ran
    and the per-epoch snapshots of the alphas. Only ``step`` changes the alphas.

    The arch of step t is drawn from ``step_generator(seed, "probabilistic", t)`` (inverse CDF of each
    decision's softmax), a function of (seed, t, alphas): every DDP rank, whose alphas are equal, draws the same
    arch, and a resumed run continues the same sequence. Until the first policy update alpha is untouched,
    p(A | alpha) is uniform, and the draw is ``UniformSampler``'s (stream ``"uniform"``): the warm-up trains
    exactly SPOS's archs.

    Args:
        space: the search space.
        seed: seeds every draw.
        lr: Adam's learning rate on alpha (docs/design_choices.md, "WPNAS").
        betas: Adam's betas.
        weight_decay: Adam's weight decay on alpha.
    """

    def __init__(self, space: SearchSpace, seed: int = 0, lr: float = 3e-4,
                 betas: tuple[float, float] = (0.5, 0.999), weight_decay: float = 0.0) -> None:
        super().__init__(space, seed)
        if lr <= 0 or weight_decay < 0:
            raise ValueError(f"ProbabilisticSampler needs lr > 0 and weight_decay >= 0, got lr={lr}, "
                             f"weight_decay={weight_decay}")
        sizes = [len(d.choices) for d in space.decisions]
        self.num_choices = torch.tensor(sizes)
        self.valid = torch.arange(max(sizes))[None, :] < self.num_choices[:, None]  # (D, K)
        self.alphas = nn.Parameter(torch.zeros(len(sizes), max(sizes), dtype=torch.float32))
        self.optimizer = torch.optim.Adam([self.alphas], lr=lr, betas=tuple(betas), weight_decay=weight_decay)
        self.num_updates = 0
        self.last_update_step = -1  # the last optimiser step whose policy update has run
        self.snapshots: list[dict[str, Any]] = []  # alphas at chosen times (``snapshot``), for the CSV

    # --- the distribution (eq. 1) -----------------------------------------------------------------------
    def log_probs(self) -> torch.Tensor:
        """log softmax(alpha^l) per decision, (D, K); -inf past a decision's last choice. Differentiable."""
        return torch.log_softmax(self.alphas.masked_fill(~self.valid, float("-inf")), dim=-1)

    def probs(self) -> torch.Tensor:
        """p(A^l = k | alpha^l), (D, K), zero past a decision's last choice."""
        with torch.no_grad():
            return self.log_probs().exp()

    def log_prob(self, archs: Sequence[Arch]) -> torch.Tensor:
        """log p(A | alpha) of each arch (n,), the sum of eq. 1's per-decision terms. Differentiable in alpha."""
        index = self.space.to_tensor(archs)  # (n, D)
        table = self.log_probs()
        return table[torch.arange(table.shape[0])[None, :], index].sum(1)

    def draw(self, n: int, generator: torch.Generator) -> list[Arch]:
        """``n`` archs from p(A | alpha): each decision's choice by inverse CDF of one uniform number."""
        if n < 1:
            raise ValueError(f"draw needs n >= 1, got {n}")
        cdf = self.probs().double().cumsum(-1)  # (D, K)
        u = torch.rand((n, cdf.shape[0]), generator=generator, dtype=torch.float64)
        # The count of CDF values <= u is the chosen index; clamped for rounding at the top of the CDF.
        index = (cdf[None] <= u[..., None]).sum(-1).clamp_max(self.num_choices - 1)
        return self.space.from_tensor(index)

    def argmax_arch(self) -> Arch:
        """argmax_A p(A | alpha): the most likely choice of each decision (decisions are independent, so this is
        the joint mode); ties go to the first choice. WPNAS's final arch and the self-critical baseline's."""
        return self.space.from_tensor(self.probs().argmax(-1)[None])[0]

    def entropy(self) -> torch.Tensor:
        """Entropy of each decision's distribution (D,), in nats."""
        p = self.probs()
        return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)

    # --- ArchSampler --------------------------------------------------------------------------------------
    @override
    def sample(self, step: int) -> Arch:
        if self.num_updates == 0:
            return self.space.sample(step_generator(self.seed, "uniform", step))
        return self.draw(1, step_generator(self.seed, "probabilistic", step))[0]

    def draw_update_archs(self, n: int) -> list[Arch]:
        """The archs the next policy update rewards, from ``step_generator(seed, "policy_update", update)``."""
        return self.draw(n, step_generator(self.seed, "policy_update", self.num_updates))

    def step(self, grad: torch.Tensor, step: int) -> None:
        """One Adam step on alpha with ``grad`` (D, K) (eq. 7's gradient), recorded as the update of optimiser
        step ``step``."""
        if grad.shape != self.alphas.shape:
            raise ValueError(f"alpha gradient of shape {tuple(grad.shape)}, expected {tuple(self.alphas.shape)}")
        self.optimizer.zero_grad(set_to_none=True)
        self.alphas.grad = grad.to(self.alphas).masked_fill(~self.valid, 0.0)
        self.optimizer.step()
        self.num_updates += 1
        self.last_update_step = max(self.last_update_step, step)

    # --- history ---------------------------------------------------------------------------------------
    def snapshot(self, epoch: int, step: int) -> None:
        """Keep the alphas as they are after epoch ``epoch`` (at optimiser step ``step``); a replayed epoch end
        (a resumed run) replaces its earlier snapshot."""
        self.snapshots = [s for s in self.snapshots if s["epoch"] != epoch]
        self.snapshots.append({"epoch": epoch, "step": step, "num_updates": self.num_updates,
                               "alphas": self.alphas.detach().clone()})

    def history_rows(self) -> list[dict[str, Any]]:
        """One row per snapshot, decision and choice: epoch, step, updates, decision, choice, alpha, prob."""
        rows = []
        for snap in self.snapshots:
            alphas = snap["alphas"]
            probs = torch.softmax(alphas.masked_fill(~self.valid, float("-inf")), -1)
            for d, decision in enumerate(self.space.decisions):
                for k, choice in enumerate(decision.choices):
                    rows.append({"epoch": snap["epoch"], "step": snap["step"], "num_updates": snap["num_updates"],
                                 "decision": decision.name, "choice": choice, "alpha": float(alphas[d, k]),
                                 "prob": float(probs[d, k])})
        return rows

    # --- state -----------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        # A deep copy: the optimiser's state_dict references its live moment tensors.
        return copy.deepcopy({
            "seed": self.seed, "alphas": self.alphas.detach(), "optimizer": self.optimizer.state_dict(),
            "num_updates": self.num_updates, "last_update_step": self.last_update_step,
            "snapshots": self.snapshots,
        })

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"alphas", "optimizer", "num_updates"} - set(state)
        if missing:
            raise ValueError(f"ProbabilisticSampler state lacks {sorted(missing)}: the checkpoint was not written by "
                             "a ProbabilisticSampler (WPNAS); resume it with the method that wrote it")
        alphas = state["alphas"]
        if tuple(alphas.shape) != tuple(self.alphas.shape):
            raise ValueError(f"the checkpoint's alphas have shape {tuple(alphas.shape)}, this space's "
                             f"{tuple(self.alphas.shape)} (decisions, most choices): resume with the space it was "
                             "trained on")
        self.seed = int(state.get("seed", self.seed))
        with torch.no_grad():
            self.alphas.copy_(alphas.to(torch.float32))
        self.optimizer.load_state_dict(state["optimizer"])
        self.num_updates = int(state["num_updates"])
        self.last_update_step = int(state.get("last_update_step", -1))
        self.snapshots = [dict(s, alphas=s["alphas"].clone()) for s in state.get("snapshots", [])]


def export_argmax(sampler: ProbabilisticSampler) -> list[dict[str, Any]]:
    """WPNAS's result (section 3.4: A_final = argmax_A p(A | alpha)) as a one-entry list ready for
    ``StandaloneModule`` (``json.load(f)[0]["arch"]``) and ``read_arch_file``: the arch, its log-probability,
    params, FLOPs, the policy updates behind it, and each decision's probabilities."""
    space, arch = sampler.space, sampler.argmax_arch()
    params, flops = space.cost(arch)
    probs = sampler.probs()
    with torch.no_grad():
        log_prob = float(sampler.log_prob([arch])[0])
    return [{"arch": str(arch), "log_prob": log_prob, "params": params, "flops": flops,
             "num_updates": sampler.num_updates,
             "probs": {d.name: {c: float(probs[i, k]) for k, c in enumerate(d.choices)}
                       for i, d in enumerate(space.decisions)}}]
