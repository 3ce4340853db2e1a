"""DI-NAS projected supernet step vs a plain SGD step, same supernet, same batches, same process.

    python benchmarks/projected_step.py [--C 16 --N 5 --batch 64 --steps 10 --rounds 3 --threads 1]

The projected step is what DI-NAS's ``OrthogonalProjector`` (arXiv:2003.13089, eqs. 6-8) adds to a
step: forward with the input recorder on, backward, a copy of the projected layers' weights, the SGD
step (momentum 0.9, weight decay 5e-4), eq. 6 on the update it applied (dW @ P), then the step's features
folded into P (eq. 8, block Woodbury, ``--max-patches`` patches per conv; alpha relative to each layer's
feature energy).
The plain step is forward, backward, SGD. Both run on copies of one NAS-Bench-201 supernet, on the
same seeded arch sequence and batch, interleaved round by round so that both see the same machine
load; after a warm-up that gives every layer on the sampled paths its P. Prints the median step times
and their ratio, and the time of the weight copy, the projection and the P update alone (less sensitive to machine load
than the ratio).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from nas_lightning.projection import DEFAULT_ALPHA, OrthogonalProjector
from nas_lightning.spaces import NB201Space
from nas_lightning.utils import step_generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--C", type=int, default=16)
    parser.add_argument("--N", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA)
    parser.add_argument("--max-patches", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 by default: on a loaded machine every multi-threaded small op "
                             "waits for a scheduler slice, which swamps the small P updates")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    space = NB201Space(C=args.C, N=args.N, num_classes=10, in_channels=3, input_size=32)
    plain_net = space.build_supernet().train()
    proj_net = copy.deepcopy(plain_net)
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    opt_plain = torch.optim.SGD(plain_net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    opt_proj = torch.optim.SGD(proj_net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    projector = OrthogonalProjector(alpha=args.alpha, layers="all", max_patches=args.max_patches, seed=args.seed)
    projector.attach(proj_net)
    step = {"plain": 0, "proj": 0}
    extra: list[float] = []  # per projected step: the time of the weight copy, eq. 6 and eq. 8 alone

    def arch_of(t: int):
        return space.sample(step_generator(args.seed, "bench-arch", t))

    def plain_step() -> None:
        opt_plain.zero_grad(set_to_none=True)
        F.cross_entropy(plain_net(x, arch_of(step["plain"])), y).backward()
        opt_plain.step()
        step["plain"] += 1

    def projected_step() -> None:
        t = step["proj"]
        opt_proj.zero_grad(set_to_none=True)
        projector.begin_step(t)
        F.cross_entropy(proj_net(x, arch_of(t)), y).backward()
        projector.stop_recording()
        t0 = time.perf_counter()
        projector.before_optimizer_step(t)
        t1 = time.perf_counter()
        opt_proj.step()
        t2 = time.perf_counter()
        projector.end_step()
        extra.append(t1 - t0 + time.perf_counter() - t2)
        step["proj"] += 1

    def timed(fn) -> float:
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    for _ in range(args.warmup):
        plain_step(), projected_step()
    P, layouts = projector.P, projector.layouts
    sizes = sorted({layouts[n].dim for n in P})
    print(f"NB201 C={args.C} N={args.N} batch={args.batch}, {torch.get_num_threads()} threads, device=cpu; "
          f"{len(P)} of {len(layouts)} layers hold a P (widths {sizes[0]}..{sizes[-1]}), "
          f"{sum(p.numel() for p in P.values()) * 4 / 2**20:.1f} MiB")
    extra.clear()
    plain_times, proj_times = [], []
    for r in range(args.rounds):
        plain_times.append(timed(plain_step))
        proj_times.append(timed(projected_step))
        print(f"round {r}: plain {plain_times[-1] * 1e3:.1f} ms, projected {proj_times[-1] * 1e3:.1f} ms, "
              f"ratio {proj_times[-1] / plain_times[-1]:.3f}")
    plain, proj = statistics.median(plain_times), statistics.median(proj_times)
    print(f"projected / plain step time: {proj / plain:.3f} (median of {args.rounds} rounds of {args.steps} steps)")
    print(f"weight copy + projection + P update alone: {statistics.median(extra) * 1e3:.1f} ms per step (median), "
          f"{statistics.median(extra) / plain:.3f} of a plain step")


if __name__ == "__main__":
    main()
