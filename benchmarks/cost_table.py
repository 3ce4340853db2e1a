"""FLOPs proxy on fresh archs: the additive cost table vs counting each arch's network, same space, same run.

    python benchmarks/cost_table.py [--variant small --archs 900 --full 30 --input_size 224 --width_mult 1.0]

PC-NAS (arXiv:1910.02543, Algorithm 1) checks the latency limit on S=900 fresh completions per candidate;
with ``FlopsProxy`` each check is ``space.flops(arch)``. On the ImageNet MobileNet space (default), this
times ``FlopsProxy(space)(arch)`` on ``--archs`` fresh archs with the cost table (``SearchSpace.cost_table``,
built once per space: its time is printed apart), and ``SearchSpace.count_cost`` (the count on a stand-alone
network built per arch, what every new arch cost before the table) on the first ``--full`` of them, as few
as one needs on a loaded CPU (about 0.2 s each). Prints both per-arch times, their ratio, the time of 900
archs each way, and whether the two agree on every arch counted both ways (they must: exact integers).
"""

from __future__ import annotations

import argparse
import time

import torch

import nas_lightning.supernet  # noqa: F401 - registers the networks of the built-in spaces
from nas_lightning.latency import FlopsProxy
from nas_lightning.spaces import MobileNetSpace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=("small", "large"), default="small")
    parser.add_argument("--width_mult", type=float, default=1.0)
    parser.add_argument("--input_size", type=int, default=224)
    parser.add_argument("--archs", type=int, default=900)
    parser.add_argument("--full", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    space = MobileNetSpace(args.variant, width_mult=args.width_mult, input_size=args.input_size)
    archs = space.sample_many(args.archs, torch.Generator().manual_seed(args.seed))
    proxy = FlopsProxy(space)
    start = time.perf_counter()
    table = space.cost_table()
    build = time.perf_counter() - start
    if table is None:
        raise SystemExit(f"{type(space).__name__} has no cost table")

    start = time.perf_counter()
    looked_up = [proxy(a) for a in archs]
    per_lookup = (time.perf_counter() - start) / len(archs)
    full = archs[: args.full]
    start = time.perf_counter()
    counted = [space.count_cost(a)[1] / proxy.scale for a in full]
    per_count = (time.perf_counter() - start) / len(full)

    print(f"MobileNet {args.variant} width {args.width_mult} input {args.input_size}, {space.num_decisions} "
          f"decisions, {torch.get_num_threads()} threads; cost table built in {build:.2f} s")
    print(f"table lookup: {per_lookup * 1e6:.1f} us per arch ({len(archs)} fresh archs)")
    print(f"network count: {per_count * 1e3:.1f} ms per arch ({len(full)} archs)")
    print(f"speed ratio (count / lookup): {per_count / per_lookup:.0f}x; 900 archs: "
          f"{900 * per_lookup * 1e3:.1f} ms with the table ({build + 900 * per_lookup:.2f} s with its build), "
          f"{900 * per_count:.1f} s counting")
    print(f"table equals count on all {len(full)} archs counted both ways: {looked_up[: len(full)] == counted}")


if __name__ == "__main__":
    main()
