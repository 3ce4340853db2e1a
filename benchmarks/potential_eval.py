"""PC-NAS potential evaluation (Algorithm 1): the batched evaluator vs a plain loop, same run.

    python benchmarks/potential_eval.py [--space nb201|chain --candidates 5 --S 900 --batches 8 --batch 64]

Draws ``--S`` completions of each of ``--candidates`` partial models (the first decision fixed, as at
the first shrink), then scores them twice on the same supernet and the same validation batches:

- batched: ``nas_lightning.search.potential.potentials`` (distinct (arch, batch) pairs evaluated once,
  the batches of one arch in one forward pass with per-batch BN statistics, counts kept on the device);
- plain: one completion at a time, one forward pass on its batch, BN in batch-statistics mode, and
  its accuracy read back with ``.item()``.

Prints completions per second of each, their ratio, and the largest difference between the two
accuracy lists (0 means the same numbers). In a large space almost every completion is a distinct
arch, so the ratio there comes from the batching alone; in a small one the repeats dominate.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from nas_lightning.latency.base import FlopsProxy
from nas_lightning.samplers.pool import LatencyLimit
from nas_lightning.search.potential import draw_completions, potentials
from nas_lightning.spaces import ChainSpace, NB201Space
from nas_lightning.utils.distributed import step_generator

SPACES = {
    "nb201": lambda a: NB201Space(C=a.C, N=a.N, num_classes=10, in_channels=3, input_size=a.size),
    "chain": lambda a: ChainSpace(num_layers=4, C=a.C, num_classes=10, in_channels=3, input_size=a.size),
}


@torch.no_grad()
def plain_loop(supernet: nn.Module, completions: list, batches: list) -> list[list[float]]:
    supernet.eval()
    for m in supernet.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
            m.momentum = 0.0
    out = []
    for archs in completions:
        accs = []
        for j, arch in enumerate(archs):
            x, y = batches[j % len(batches)]
            accs.append(100.0 * (supernet(x, arch).argmax(1) == y).float().mean().item())
        out.append(accs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", choices=sorted(SPACES), default="nb201")
    parser.add_argument("--C", type=int, default=8)
    parser.add_argument("--N", type=int, default=2)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument("--S", type=int, default=200)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--max_batches_per_forward", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    space = SPACES[args.space](args)
    supernet = space.build_supernet().to(device)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(args.batch, *space.input_shape, generator=g).to(device),
                torch.randint(0, 10, (args.batch,), generator=g).to(device)) for _ in range(args.batches)]
    n_first = len(space.decisions[0].choices)
    cands = [(i % n_first,) for i in range(args.candidates)]
    limit = LatencyLimit(FlopsProxy(space))
    gen = lambda: step_generator(0, "potential", 0)  # noqa: E731 - same completions for both
    completions = draw_completions(space, cands, args.S, len(batches), gen(), limit).completions
    total = sum(len(c) for c in completions)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    potentials(supernet, cands[:1], batches, 4, gen(), limit)  # warm-up
    sync()
    t0 = time.perf_counter()
    result = potentials(supernet, cands, batches, args.S, gen(), limit,
                        max_batches_per_forward=args.max_batches_per_forward)
    sync()
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain = plain_loop(supernet, completions, batches)
    sync()
    t_plain = time.perf_counter() - t0

    diff = max(abs(a - b) for x, y in zip(result.accuracies, plain) for a, b in zip(x, y))
    print(f"{args.space} C={args.C} size={args.size}, {args.candidates} candidates x S={args.S} = {total} completions, "
          f"{args.batches} val batches of {args.batch}, device={device}, {torch.get_num_threads()} threads, "
          f"max_batches_per_forward={args.max_batches_per_forward}")
    print(f"distinct (arch, batch) pairs: {result.num_units} of {total}")
    print(f"batched: {total / t_batched:9.1f} completions/s ({t_batched:.2f} s)")
    print(f"plain:   {total / t_plain:9.1f} completions/s ({t_plain:.2f} s)")
    print(f"ratio batched / plain: {t_plain / t_batched:.2f}x   max |accuracy difference|: {diff:.3g} points")


if __name__ == "__main__":
    main()
