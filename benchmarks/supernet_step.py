"""Supernet training step vs a stand-alone network of the same arch, same batch, same process.

    python benchmarks/supernet_step.py [--C 16 --N 5 --batch 64 --archs 5 --steps 10]

For each of ``--archs`` seeded random NAS-Bench-201 archs, time forward + backward + SGD step of the
supernet on that arch and of ``space.build_network(arch)``, interleaved so that both see the same
machine state, and print the ratio supernet / stand-alone (1.00 = no overhead from weight sharing).
The NATS-Bench authors' supernet code measures about 1.03 on this CPU setting.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from nas_lightning.spaces import NB201Space


def step_time(step, steps: int) -> float:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--C", type=int, default=16)
    parser.add_argument("--N", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--archs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    space = NB201Space(C=args.C, N=args.N, num_classes=10, in_channels=3, input_size=32)
    supernet = space.build_supernet().train()
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    gen = torch.Generator().manual_seed(args.seed)
    ratios = []
    print(f"NB201 C={args.C} N={args.N} batch={args.batch}, {torch.get_num_threads()} threads, device=cpu")
    print(f"{'arch':<100} {'supernet ms':>11} {'alone ms':>9} {'ratio':>6}")
    for arch in space.sample_many(args.archs, gen):
        net = space.build_network(arch).train()
        opt_s = torch.optim.SGD(supernet.parameters(), lr=0.01, momentum=0.9)
        opt_n = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

        def super_step(arch=arch, opt=opt_s) -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(supernet(x, arch), y).backward()
            opt.step()

        def alone_step(net=net, opt=opt_n) -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()

        super_step(), alone_step()  # warm-up
        s_times, n_times = [], []
        for _ in range(args.rounds):
            s_times.append(step_time(super_step, args.steps))
            n_times.append(step_time(alone_step, args.steps))
        s, n = statistics.median(s_times), statistics.median(n_times)
        ratios.append(s / n)
        print(f"{arch!s:<100} {s * 1e3:>11.1f} {n * 1e3:>9.1f} {s / n:>6.3f}")
    geo = statistics.geometric_mean(ratios)
    print(f"supernet / stand-alone step time: {geo:.3f} (geometric mean over {len(ratios)} archs; reference 1.03)")


if __name__ == "__main__":
    main()
