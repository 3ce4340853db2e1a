"""WPNAS HyperNet weak sharing (arXiv:2203.02086, section 3.3, eq. 2): a supernet training step with the HyperNet
installed as a ratio of the same step without it, same space, batch and archs, measured in the same run.

    python benchmarks/hypernet_step.py [--space nb201 --batch 64 --input_size 32 --steps 10 --rounds 3]

A step: forward + backward + SGD-with-momentum step on one uniformly drawn arch. With the HyperNet, every step also
runs the bi-LSTM over the arch's decisions, multiplies each searchable conv of the path by its offset, and
back-propagates into the HyperNet (``--frozen``: the HyperNet takes no gradient). The two run interleaved, round by
round, so that they see the same machine state; the median over rounds is printed.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _timing import seconds_per_step

import nas_lightning.supernet  # noqa: F401 - registers the networks of the built-in spaces
from nas_lightning.spaces import ChainSpace, NATSSizeSpace, NB201Space, SearchSpace, WPNASMobileNetSpace
from nas_lightning.supernet.hypernet import HyperNet, install_hypernet

SPACES: dict[str, Callable[[int, int], SearchSpace]] = {
    "nb201": lambda c, s: NB201Space(C=16, N=5, num_classes=10, in_channels=c, input_size=s),
    "nats_sss": lambda c, s: NATSSizeSpace(num_classes=10, in_channels=c, input_size=s),
    "wpnas_mobilenet": lambda c, s: WPNASMobileNetSpace(num_classes=10, in_channels=c, input_size=s, stem_stride=1,
                                                        width_mult=0.5),
    "chain": lambda c, s: ChainSpace(num_layers=4, C=16, num_classes=10, in_channels=c, input_size=s),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", choices=sorted(SPACES), default="nb201")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--input_size", type=int, default=32)
    parser.add_argument("--in_channels", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--frozen", action="store_true")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    space = SPACES[args.space](args.in_channels, args.input_size)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, *space.input_shape, generator=gen).to(device)
    y = torch.randint(0, space.num_classes, (args.batch,), generator=gen).to(device)
    archs = space.sample_many(1 + args.rounds * args.steps, gen)

    def stepper(hypernet: bool) -> Callable[[int], None]:
        torch.manual_seed(args.seed)
        net = space.build_supernet()
        if hypernet:
            install_hypernet(net, HyperNet(space, net, hidden=args.hidden, frozen=args.frozen))
        net = net.to(device).train()
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=3e-4)

        def step(i: int) -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x, archs[i]), y).backward()
            opt.step()
        return step

    def timed(step: Callable[[int], None], start: int) -> float:
        return seconds_per_step(step, start, args.steps, device)

    steps = {"plain": stepper(False), "HyperNet": stepper(True)}
    for step in steps.values():  # warm-up: allocator, momentum buffers
        step(0)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.rounds):
        for name, step in steps.items():
            times[name].append(timed(step, 1 + r * args.steps))
    plain = statistics.median(times["plain"])
    print(f"{type(space).__name__} ({space.num_decisions} decisions), batch {args.batch}, "
          f"{args.input_size}x{args.input_size}, HyperNet hidden {args.hidden}{' frozen' if args.frozen else ''}, "
          f"device={device}, {torch.get_num_threads()} threads")
    print(f"{'step':<10} {'ms':>8} {'x plain':>8}")
    for name, t in times.items():
        print(f"{name:<10} {statistics.median(t) * 1e3:>8.1f} {statistics.median(t) / plain:>8.2f}")


if __name__ == "__main__":
    main()
