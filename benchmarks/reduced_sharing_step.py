"""Reduced weight sharing: a training step as a ratio of a SPOS step, and what the copies cost.

    python benchmarks/reduced_sharing_step.py [--groups 1 4 64 --prefix none --batch 32 --steps 16 --rounds 3]

On the paper's 64-arch space (``DeeperInsightsSpace``, 4 cells, C=16; a 64-arch chain space with ``--space chain``)
and for each setting: time forward + backward + SGD-with-momentum step of the supernet with weight copies and of the
plain SPOS supernet, both on the same round-robin sequence of archs and the same batch, interleaved so that both see
the same machine state, and print the ratio (goal about 1.0: more parameters, no more compute per step). Beside it:
the parameter count (total, and as a multiple of the SPOS supernet), the training state (parameters plus momentum
buffers, after every copy has stepped once) and, on a GPU, the peak memory allocated during the steps.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _timing import seconds_per_step
from torch import nn

from nas_lightning.samplers import RoundRobinSampler
from nas_lightning.spaces import ChainSpace, SearchSpace
from nas_lightning.supernet.copies import count_copies, install_copies
from nas_lightning.supernet.pickers import ReducedSharingPicker


def make_space(name: str, num_classes: int, input_size: int) -> SearchSpace:
    if name == "chain":
        return ChainSpace(num_layers=3, ops=("nor_conv_1x1", "nor_conv_3x3", "skip_connect", "avg_pool_3x3"), C=16,
                          num_classes=num_classes, in_channels=3, input_size=input_size, stem_stride=1)
    from nas_lightning.spaces import DeeperInsightsSpace  # the paper's space

    return DeeperInsightsSpace(C=16, num_cells=4, num_classes=num_classes, in_channels=3, input_size=input_size)


def state_mib(model: nn.Module, opt: torch.optim.Optimizer) -> float:
    """Parameters plus the optimiser's buffers, in MiB."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for state in opt.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    return total / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", choices=["deeper_insights", "chain"], default="deeper_insights")
    parser.add_argument("--groups", type=int, nargs="+", default=[1, 4, 64])
    parser.add_argument("--prefix", default="none", help="k body parts shared by every arch, or 'none'")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--input_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    prefix = None if args.prefix == "none" else int(args.prefix)
    device = torch.device(args.device)

    space = make_space(args.space, 10, args.input_size)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 3, args.input_size, args.input_size, generator=gen).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=gen).to(device)
    sampler = RoundRobinSampler(space, seed=args.seed)
    archs = [sampler.sample(s) for s in range(space.num_archs)]

    def build(groups: int) -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(args.seed)
        net = space.build_supernet()
        install_copies(net, ReducedSharingPicker(space, len(net.body), groups, "shuffle", prefix, args.seed))
        net = net.to(device).train()
        return net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=3e-4)

    def stepper(net: nn.Module, opt: torch.optim.Optimizer) -> Callable[[int], None]:
        def step(i: int) -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x, archs[i % len(archs)]), y).backward()
            opt.step()
        return step

    def timed(step: Callable[[int], None], start: int) -> float:
        return seconds_per_step(step, start, args.steps, device)

    print(f"{type(space).__name__} ({space.num_archs} archs), prefix={prefix}, batch {args.batch}, "
          f"{args.input_size}x{args.input_size}, device={device}, {torch.get_num_threads()} threads")
    print(f"{'g':>4} {'params':>10} {'x SPOS':>7} {'state MiB':>10} {'peak MiB':>9} {'step ms':>8} {'SPOS ms':>8} "
          f"{'ratio':>6}")
    spos, spos_opt = build(1)
    spos_step = stepper(spos, spos_opt)
    for groups in args.groups:
        net, opt = build(groups)
        step = stepper(net, opt)
        for i in range(len(archs)):  # warm-up: every copy steps once, so its momentum buffer exists
            step(i)
        spos_step(0)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ours, theirs = [], []
        for r in range(args.rounds):
            ours.append(timed(step, r * args.steps))
            theirs.append(timed(spos_step, r * args.steps))
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
        count = count_copies(net)
        t, s = statistics.median(ours), statistics.median(theirs)
        print(f"{groups:>4} {count.total:>10,} {count.total / count.supernet:>7.1f} {state_mib(net, opt):>10.2f} "
              f"{peak:>9.1f} {t * 1e3:>8.1f} {s * 1e3:>8.1f} {t / s:>6.3f}")
        del net, opt


if __name__ == "__main__":
    main()
