"""WPNAS: a training step (supernet step + self-critical policy step, optionally + landmark hinge + HyperNet) as a
ratio of a SPOS step on the same space and batch, measured in the same run.

    python benchmarks/wpnas_step.py [--space deeper_insights --batch 64 --eval_batch 100 --steps 16 --rounds 3]

A SPOS step: forward + backward + SGD-with-momentum step of the supernet on one arch and one batch. A WPNAS step
adds what ``callbacks.PolicyStep`` runs after it (``nas_lightning.search.policy_gradient.policy_step``: the
inherited-weight CE of ``--archs_per_step`` drawn archs and the argmax arch on one eval batch with the shared
evaluator, eq. 7's gradient, an Adam step on alpha); the variants add the landmark hinge (two more forward and
backward passes on a landmark batch of ``--batch`` images) and the HyperNet (``install_hypernet``: every forward pass
of the step runs the effective weights). Variants and SPOS run interleaved, round by round, so that they see the
same machine state; the median over rounds is printed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from _timing import seconds_per_step
from torch import nn

from nas_lightning.evaluation import evaluate_archs
from nas_lightning.methods.landmark import LandmarkRegularizer
from nas_lightning.samplers import ProbabilisticSampler, UniformSampler
from nas_lightning.search.policy_gradient import SelfCriticalReward, policy_step
from nas_lightning.spaces import ChainSpace, DeeperInsightsSpace, NB201Space, SearchSpace
from nas_lightning.supernet.hypernet import HyperNet, install_hypernet

SPACES: dict[str, Callable[[int, int], SearchSpace]] = {
    "deeper_insights": lambda c, s: DeeperInsightsSpace(C=16, num_cells=4, num_classes=10, in_channels=c, input_size=s),
    "nb201": lambda c, s: NB201Space(C=16, N=5, num_classes=10, in_channels=c, input_size=s),
    "chain": lambda c, s: ChainSpace(num_layers=3, C=16, num_classes=10, in_channels=c, input_size=s),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", choices=sorted(SPACES), default="deeper_insights")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--eval_batch", type=int, default=100)
    parser.add_argument("--input_size", type=int, default=10)
    parser.add_argument("--in_channels", type=int, default=1)
    parser.add_argument("--archs_per_step", type=int, default=1)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    space = SPACES[args.space](args.in_channels, args.input_size)
    gen = torch.Generator().manual_seed(args.seed)
    shape = (args.in_channels, args.input_size, args.input_size)
    x, y = torch.randn(args.batch, *shape, generator=gen).to(device), torch.randint(0, 10, (args.batch,)).to(device)
    val = (torch.randn(args.eval_batch, *shape, generator=gen).to(device),
           torch.randint(0, 10, (args.eval_batch,), generator=gen).to(device))
    uniform = UniformSampler(space, seed=args.seed)
    gt = Path(tempfile.mkdtemp()) / "gt.csv"  # made-up landmarks: only their cost matters here
    archs = space.sample_many(50, torch.Generator().manual_seed(args.seed))
    gt.write_text("arch,accuracy\n" + "".join(f"{a},{50 + i}\n" for i, a in enumerate(dict.fromkeys(archs))))

    def build(hypernet: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(args.seed)
        net = space.build_supernet()
        if hypernet:
            install_hypernet(net, HyperNet(space, net, hidden=64))
        net = net.to(device).train()
        return net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=3e-4)

    def stepper(policy: bool, landmark: bool, hypernet: bool) -> Callable[[int], None]:
        net, opt = build(hypernet)
        sampler = ProbabilisticSampler(space, seed=args.seed, lr=0.01)
        reward = SelfCriticalReward(space)
        marks = LandmarkRegularizer(space, args.seed, ground_truth=str(gt), batch_size=args.batch)

        def step(i: int) -> None:
            arch = sampler.sample(i) if policy else uniform.sample(i)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x, arch), y)
            if landmark:
                loss = loss + marks.hinge(net, val, i)[0]
            loss.backward()
            opt.step()
            if policy:
                policy_step(sampler, lambda a: reward(a, evaluate_archs(net, a, [val]).mean_loss), i,
                            args.archs_per_step)
        return step

    def timed(step: Callable[[int], None], start: int) -> float:
        return seconds_per_step(step, start, args.steps, device)

    variants = {"SPOS": (False, False, False), "+ policy step": (True, False, False),
                "+ landmark": (True, True, False), "+ HyperNet": (True, True, True)}
    steps = {name: stepper(*flags) for name, flags in variants.items()}
    for step in steps.values():  # warm-up: allocator, momentum buffers, Adam state
        step(0)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.rounds):
        for name, step in steps.items():
            times[name].append(timed(step, 1 + r * args.steps))
    print(f"{type(space).__name__} ({space.num_archs} archs), batch {args.batch}, eval batch {args.eval_batch}, "
          f"{args.input_size}x{args.input_size}, {args.archs_per_step} arch(s) per policy step, device={device}, "
          f"{torch.get_num_threads()} threads")
    spos = statistics.median(times["SPOS"])
    print(f"{'step':<16} {'ms':>8} {'x SPOS':>7}")
    for name, t in times.items():
        print(f"{name:<16} {statistics.median(t) * 1e3:>8.1f} {statistics.median(t) / spos:>7.2f}")


if __name__ == "__main__":
    main()
