"""The ENAS-style RL controller of DI-NAS and the sampler that trains the supernet on its archs.

DI-NAS (Niu et al., "Disturbance-immune Weight Sharing for Neural Architecture Search",
arXiv:2003.13089) learns a controller pi(a; theta) by maximising E_{a ~ pi}[R(a, w_a)] (eq. 1), with
R the validation accuracy of a with weights inherited from the supernet. The controller is ENAS's
(Pham et al. 2018, arXiv:1802.03268): an LSTM that makes one decision per step, its input the
embedding of the previous choice. What the paper lost is fixed as in ENAS (docs/design_choices.md,
"DI-NAS"): hidden size 64, REINFORCE with a moving-average baseline (decay 0.95), entropy bonus 1e-4, Adam
lr 3.5e-4, reward = inherited-weight accuracy on one validation batch.

REINFORCE (Williams 1992), as in ENAS's code: the baseline moves first,
``b <- decay * b + (1 - decay) * mean(r)``, then
``loss = mean_i[-(r_i - b) * log pi(a_i)] - entropy_weight * mean_i H_i``
with H_i the summed per-decision entropies along a_i. The first update sets b to its mean reward
(ENAS's TF code starts at 0, which makes the first advantages as large as the rewards). The paper,
like ENAS's code, adds the weighted sample entropy to the reward instead; the entropy bonus in the
loss (the form the project fixes) rewards exploration the same way without letting it
leak into the baseline.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from nas_lightning.samplers.base import ArchSampler
from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.distributed import step_generator


class LSTMController(nn.Module):
    """pi(a; theta) = prod_i softmax(head_i(h_i))[a_i], h_i = LSTM(emb_i(a_{i-1}), h_{i-1}) (ENAS).

    One LSTM step per decision. Step 0 reads a learned start vector; step i reads the embedding of
    the choice made at decision i-1 (one embedding table per decision, since decisions may have
    different numbers of choices), and a per-decision linear head gives that decision's logits.
    Every method runs on a batch of n archs at once (a loop over decisions, none over samples).

    Args:
        space: the search space whose decisions are made.
        hidden_size: LSTM width (64, as ENAS).
        num_layers: stacked LSTM layers (ENAS uses 2; 1 by default here).
        temperature, tanh_constant: ENAS's logit shaping, ``c * tanh(logits / T)``; None skips each.
            The tanh bounds the logits, so the policy cannot collapse on one choice too early.
        seed: initial weights are uniform in [-0.1, 0.1] (ENAS) from this seed, so every DDP rank
            builds the same controller whatever the global RNG holds.
    """

    def __init__(self, space: SearchSpace, hidden_size: int = 64, num_layers: int = 1,
                 temperature: float | None = None, tanh_constant: float | None = None, seed: int = 0) -> None:
        super().__init__()
        if hidden_size < 1 or num_layers < 1:
            raise ValueError(f"hidden_size and num_layers must be >= 1, got {hidden_size}, {num_layers}")
        if (temperature is not None and temperature <= 0) or (tanh_constant is not None and tanh_constant <= 0):
            raise ValueError(f"temperature and tanh_constant must be > 0 or None, got {temperature}, {tanh_constant}")
        self.space = space
        self.num_choices = [len(d.choices) for d in space.decisions]
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.temperature, self.tanh_constant = temperature, tanh_constant
        self.start = nn.Parameter(torch.empty(hidden_size))
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers=num_layers)
        # embeddings[i] embeds the choice of decision i as the input of step i + 1.
        self.embeddings = nn.ModuleList(nn.Embedding(k, hidden_size) for k in self.num_choices[:-1])
        self.heads = nn.ModuleList(nn.Linear(hidden_size, k) for k in self.num_choices)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-0.1, 0.1, generator=generator)

    def _logits(self, out: torch.Tensor, i: int) -> torch.Tensor:
        logits = self.heads[i](out)
        if self.temperature is not None:
            logits = logits / self.temperature
        if self.tanh_constant is not None:
            logits = self.tanh_constant * torch.tanh(logits)
        return logits

    def _run(self, n: int, generator: torch.Generator | None = None, actions: torch.Tensor | None = None,
             greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Roll the LSTM over the decisions for n archs: sample (``generator``), follow ``actions``
        (teacher forcing), or take the argmax. Returns (indices (n, D), log_probs (n,), entropies (n,))."""
        device = self.start.device
        inputs = self.start.expand(n, -1)
        state = None
        chosen, log_prob, entropy = [], torch.zeros(n, device=device), torch.zeros(n, device=device)
        for i in range(len(self.num_choices)):
            out, state = self.lstm(inputs.unsqueeze(0), state)
            log_p = torch.log_softmax(self._logits(out[0], i), dim=-1)
            if actions is not None:
                a = actions[:, i]
            elif greedy:
                a = log_p.argmax(-1)
            else:
                a = torch.multinomial(log_p.detach().exp().cpu(), 1, generator=generator).squeeze(1).to(device)
            chosen.append(a)
            log_prob = log_prob + log_p.gather(1, a[:, None]).squeeze(1)
            entropy = entropy - (log_p.exp() * log_p).sum(-1)
            if i + 1 < len(self.num_choices):
                inputs = self.embeddings[i](a)
        return torch.stack(chosen, 1), log_prob, entropy

    def sample(self, n: int, generator: torch.Generator) -> tuple[list[Arch], torch.Tensor, torch.Tensor]:
        """n archs drawn from pi with ``generator``, their log-probabilities (n,) and entropies (n,).

        The log-probs and entropies carry gradients when grad is enabled."""
        if n < 1:
            raise ValueError(f"sample needs n >= 1, got {n}")
        indices, log_prob, entropy = self._run(n, generator=generator)
        return self.space.from_tensor(indices.cpu()), log_prob, entropy

    def log_prob(self, archs: Sequence[Arch]) -> torch.Tensor:
        """log pi(a) of each arch (n,), differentiable."""
        return self.log_prob_and_entropy(archs)[0]

    def log_prob_and_entropy(self, archs: Sequence[Arch]) -> tuple[torch.Tensor, torch.Tensor]:
        actions = self.space.to_tensor(archs).to(self.start.device)
        _, log_prob, entropy = self._run(len(archs), actions=actions)
        return log_prob, entropy

    @torch.no_grad()
    def argmax_arch(self) -> Arch:
        """The greedy arch: the most likely choice at each step given the greedy prefix (ENAS's
        derivation; not always the joint mode)."""
        indices, _, _ = self._run(1, greedy=True)
        return self.space.from_tensor(indices.cpu())[0]


def reinforce_step(controller: LSTMController, optimizer: torch.optim.Optimizer, archs: Sequence[Arch],
                   rewards: torch.Tensor, baseline: float | None, entropy_weight: float = 1e-4,
                   decay: float = 0.95) -> tuple[float, dict[str, float]]:
    """One REINFORCE update of ``controller`` on archs it sampled and their rewards (module docstring).

    Returns the new baseline and the step's statistics. A pure function of its arguments: it needs
    no Trainer, and gives the same update on every rank given the same inputs.
    """
    if len(archs) != len(rewards) or len(archs) == 0:
        raise ValueError(f"need one reward per arch and at least one arch, got {len(archs)} archs, "
                         f"{len(rewards)} rewards")
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"baseline decay must be in [0, 1), got {decay}")
    rewards = rewards.detach().to(torch.float64).cpu()
    mean_reward = float(rewards.mean())
    baseline = mean_reward if baseline is None else decay * baseline + (1.0 - decay) * mean_reward
    with torch.enable_grad():
        log_prob, entropy = controller.log_prob_and_entropy(archs)
        advantage = (rewards - baseline).to(log_prob)
        loss = -(advantage * log_prob).mean() - entropy_weight * entropy.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    optimizer.step()
    stats = {"loss": loss.item(), "reward": mean_reward, "advantage": advantage.mean().item(),
             "entropy": entropy.mean().item(), "log_prob": log_prob.mean().item(), "baseline": baseline}
    return baseline, stats


class ControllerSampler(ArchSampler):
    """The training arch of each step drawn from the controller (DI-NAS Algorithm 1), uniform before.

    The sampler holds the whole search state, and it alone is checkpointed (``SupernetModule`` saves
    it under ``"nas_sampler"``): the controller's weights, its Adam state, the moving-average
    baseline, the update counter, the step where sampling switched to the controller, the last epoch
    whose updates ran, and the rewards seen per arch. Only its own methods change that state:
    ``start`` (warm-up over), ``update`` (one REINFORCE step) and ``finish_epoch``.

    Before ``start_step`` (None: not started yet) the arch of step t is uniform from
    ``step_generator(seed, "uniform", t)``, as ``UniformSampler`` draws it; afterwards it is drawn
    from the controller with ``step_generator(seed, "controller", t)``. Both depend only on (seed, t,
    controller weights), so all ranks and a resumed run agree.

    Args:
        space: the search space.
        seed: seeds the uniform warm-up archs, the controller's initial weights and every draw.
        hidden_size, num_layers, temperature, tanh_constant: see ``LSTMController``.
        lr, weight_decay: Adam's (lr 3.5e-4, ENAS; the paper's weight decay is lost, 0 here).
        entropy_weight: weight of the entropy bonus in the REINFORCE loss (1e-4).
        baseline_decay: decay of the moving-average reward baseline (0.95).
        (docs/design_choices.md, "DI-NAS", gives the reasons for these defaults.)
    """

    def __init__(self, space: SearchSpace, seed: int = 0, hidden_size: int = 64, num_layers: int = 1,
                 temperature: float | None = None, tanh_constant: float | None = None, lr: float = 3.5e-4,
                 weight_decay: float = 0.0, entropy_weight: float = 1e-4, baseline_decay: float = 0.95) -> None:
        super().__init__(space, seed)
        if lr <= 0 or weight_decay < 0:
            raise ValueError(f"controller lr must be > 0 and weight_decay >= 0, got {lr}, {weight_decay}")
        if entropy_weight < 0 or not 0 <= baseline_decay < 1:
            raise ValueError(f"need entropy_weight >= 0 and baseline_decay in [0, 1), got {entropy_weight}, "
                             f"{baseline_decay}")
        self.entropy_weight, self.baseline_decay = entropy_weight, baseline_decay
        self.controller = LSTMController(space, hidden_size, num_layers, temperature, tanh_constant, seed=seed)
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=lr, weight_decay=weight_decay)
        self.baseline: float | None = None
        self.num_updates = 0
        self.start_step: int | None = None
        self.last_update_epoch = -1  # the last supernet epoch whose controller updates have run
        # arch string -> [times sampled in updates, reward sum, best reward]
        self.history: dict[str, list[float]] = {}

    @override
    def sample(self, step: int) -> Arch:
        if self.start_step is None or step < self.start_step:
            return self.space.sample(step_generator(self.seed, "uniform", step))
        with torch.no_grad():
            return self.controller.sample(1, step_generator(self.seed, "controller", step))[0][0]

    @property
    def started(self) -> bool:
        return self.start_step is not None

    def start(self, step: int) -> None:
        """Warm-up over: from optimiser step ``step`` on, the supernet trains the controller's archs."""
        if self.start_step is None:
            self.start_step = step

    def finish_epoch(self, epoch: int) -> None:
        """Record that the controller updates of supernet epoch ``epoch`` have run."""
        self.last_update_epoch = max(self.last_update_epoch, epoch)

    def update(self, archs: Sequence[Arch], rewards: torch.Tensor) -> dict[str, float]:
        """One REINFORCE step (eq. 1) on ``archs`` (drawn by ``draw_update_archs``) and their rewards."""
        self.baseline, stats = reinforce_step(self.controller, self.optimizer, archs, rewards, self.baseline,
                                              self.entropy_weight, self.baseline_decay)
        self.num_updates += 1
        for arch, r in zip(archs, rewards.tolist()):
            seen = self.history.setdefault(str(arch), [0.0, 0.0, float("-inf")])
            seen[0] += 1
            seen[1] += r
            seen[2] = max(seen[2], r)
        return stats

    def draw_update_archs(self, n: int) -> list[Arch]:
        """The archs of the next update, from ``step_generator(seed, "controller_update", update)``."""
        with torch.no_grad():
            return self.controller.sample(n, step_generator(self.seed, "controller_update", self.num_updates))[0]

    def top_archs(self, k: int) -> list[dict[str, Any]]:
        """The k archs with the highest mean reward over the updates that sampled them, best first."""
        rows = [{"arch": a, "mean_reward": s / c, "max_reward": m, "count": int(c)}
                for a, (c, s, m) in self.history.items()]
        rows.sort(key=lambda r: (-r["mean_reward"], -r["count"], r["arch"]))
        return rows[:k]

    @override
    def state_dict(self) -> dict[str, Any]:
        # A deep copy: the optimizer's state_dict holds references to its live moment tensors, and
        # a snapshot that later updates mutate (or that an in-memory load would share) is no snapshot.
        return copy.deepcopy({
            "seed": self.seed, "start_step": self.start_step, "baseline": self.baseline,
            "num_updates": self.num_updates, "last_update_epoch": self.last_update_epoch,
            "controller": self.controller.state_dict(), "optimizer": self.optimizer.state_dict(),
            "history": self.history,
        })

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"controller", "optimizer", "num_updates"} - set(state)
        if missing:
            raise ValueError(f"ControllerSampler state lacks {sorted(missing)}: the checkpoint was not written by a "
                             "ControllerSampler (DINAS); resume it with the method that wrote it")
        # The checkpoint's seed wins, so a resumed run continues its own sequence (the initial
        # weights it also seeds are replaced by the checkpoint's).
        self.seed = int(state.get("seed", self.seed))
        try:
            self.controller.load_state_dict(state["controller"])
        except RuntimeError as e:
            c = self.controller
            raise ValueError(f"the checkpoint's controller does not fit this one (hidden_size={c.hidden_size}, "
                             f"num_layers={c.num_layers}); set them as in the checkpoint: {e}") from e
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_step = state.get("start_step")
        self.baseline = state.get("baseline")
        self.num_updates = int(state["num_updates"])
        self.last_update_epoch = int(state.get("last_update_epoch", -1))
        self.history = {a: [float(x) for x in v] for a, v in state.get("history", {}).items()}


def controller_updates(sampler: ControllerSampler, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                       reward: Callable[[list[Arch], tuple[torch.Tensor, torch.Tensor]], torch.Tensor],
                       archs_per_step: int) -> list[dict[str, float]]:
    """DI-NAS Algorithm 1, controller learning: one REINFORCE update (eq. 1) per batch, on
    ``archs_per_step`` archs drawn from the controller; ``reward(archs, batch)`` gives each arch's reward
    (inherited-weight accuracy on the batch, a fraction in [0, 1])."""
    stats = []
    for batch in batches:
        archs = sampler.draw_update_archs(archs_per_step)
        stats.append(sampler.update(archs, reward(archs, batch)))
    return stats


def export_controller(sampler: ControllerSampler, top: int) -> dict[str, Any]:
    """The controller's result: its argmax arch and the ``top`` archs by mean reward, best first, with
    params and FLOPs (as the evolutionary search exports them)."""
    space, argmax = sampler.space, sampler.controller.argmax_arch()

    def costs(arch: str) -> dict[str, int]:
        params, flops = space.cost(space.decode(arch))
        return {"params": params, "flops": flops}

    with torch.no_grad():
        log_prob = float(sampler.controller.log_prob([argmax])[0])
    return {
        "argmax": {"arch": str(argmax), "log_prob": log_prob, **costs(str(argmax))},
        "top": [{**row, **costs(row["arch"])} for row in sampler.top_archs(top)],
        "baseline": sampler.baseline, "num_updates": sampler.num_updates,
    }
