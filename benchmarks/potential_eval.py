"""PC-NAS potential evaluation (arXiv:1910.02543, eq. 11, Algorithm 1): the evaluator vs a plain loop, same run.

    python benchmarks/potential_eval.py [--space all|nb201|chain|mobilenet|darts --candidates 4 --S 100
                                         --batches 4 --batch 32 --repeats 5 --max_batches_per_forward N --stacking]

For each space, draws ``--S`` completions of each of ``--candidates`` partial models (the first decision
fixed, as at the first shrink), then scores them twice on the same supernet and the same validation
batches, ``--repeats`` times in alternation (the machine's load drifts; the best time of each is kept):

- evaluator: ``nas_lightning.search.potential.potentials``, i.e. ``nas_lightning.evaluation.evaluate_units``
  (identical (arch, batch) units evaluated once, the batches of one arch stacked into one ``vmap``-ed forward
  pass where the device's default or ``--max_batches_per_forward`` says so, counts kept on the device);
- plain: one completion at a time, one forward pass on its batch, BN in batch-statistics mode, and
  its accuracy read back with ``.item()``.

Prints completions per second of each, their ratio (plain time / evaluator time: above 1 means the
evaluator is faster), and the largest difference between the two accuracy lists (0 means the same
numbers). The evaluator's time includes drawing the completions, which the plain loop is given.
The default configs are small, so the whole run takes a minute or two on a CPU.

``--stacking`` times instead ``evaluate_archs`` (every arch on every batch, where batches of one arch can be
stacked) with 1, 2, 4 and 8 batches per forward pass: the measurement behind the evaluator's default
(``nas_lightning.evaluation.default_batches_per_forward``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

import nas_lightning.supernet  # noqa: F401 - registers the networks of the built-in spaces
from nas_lightning.evaluation import default_batches_per_forward, evaluate_archs
from nas_lightning.latency.base import FlopsProxy
from nas_lightning.samplers.pool import LatencyLimit
from nas_lightning.search.potential import draw_completions, potentials
from nas_lightning.spaces import ChainSpace, DartsSpace, MobileNetSpace, NB201Space
from nas_lightning.spaces.base import SearchSpace
from nas_lightning.utils.distributed import step_generator

SPACES: dict[str, Callable[[argparse.Namespace], SearchSpace]] = {
    "nb201": lambda a: NB201Space(C=a.C, N=1, num_classes=10, in_channels=3, input_size=a.size),
    "chain": lambda a: ChainSpace(num_layers=4, C=a.C, num_classes=10, in_channels=3, input_size=a.size),
    "mobilenet": lambda a: MobileNetSpace("small", width_mult=0.25, num_classes=10, in_channels=3,
                                          input_size=a.size, depths=[1] * 6),
    "darts": lambda a: DartsSpace(C=a.C, layers=2, num_classes=10, in_channels=3, input_size=a.size),
}
DEFAULT_SPACES = ("nb201", "chain", "mobilenet")


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


def run(name: str, args: argparse.Namespace, device: torch.device) -> float:
    """Benchmark one space; returns the ratio plain time / evaluator time."""
    torch.manual_seed(0)
    space = SPACES[name](args)
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
    plain_loop(supernet, completions[:1], batches)
    t_batched, t_plain = float("inf"), float("inf")
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        result = potentials(supernet, cands, batches, args.S, gen(), limit,
                            max_batches_per_forward=args.max_batches_per_forward)
        sync()
        t_batched = min(t_batched, time.perf_counter() - t0)
        t0 = time.perf_counter()
        plain = plain_loop(supernet, completions, batches)
        sync()
        t_plain = min(t_plain, time.perf_counter() - t0)

    diff = max(abs(a - b) for x, y in zip(result.accuracies, plain) for a, b in zip(x, y))
    stacked = args.max_batches_per_forward or default_batches_per_forward(device, args.batch)
    print(f"{name} C={args.C} size={args.size}, {args.candidates} candidates x S={args.S} = {total} completions, "
          f"{args.batches} val batches of {args.batch}, device={device}, {torch.get_num_threads()} threads, "
          f"max_batches_per_forward={stacked}, best of {args.repeats}")
    print(f"  distinct (arch, batch) units: {result.num_units} of {total}")
    print(f"  evaluator: {total / t_batched:9.1f} completions/s ({t_batched:.2f} s)")
    print(f"  plain:     {total / t_plain:9.1f} completions/s ({t_plain:.2f} s)")
    print(f"  ratio evaluator / plain: {t_plain / t_batched:.2f}x   max |accuracy difference|: {diff:.3g} points")
    return t_plain / t_batched


def stacking(name: str, args: argparse.Namespace, device: torch.device) -> None:
    """Time ``evaluate_archs`` on ``--batches`` batches with 1, 2, 4, 8 batches per forward pass."""
    torch.manual_seed(0)
    space = SPACES[name](args)
    supernet = space.build_supernet().to(device)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(args.batch, *space.input_shape, generator=g).to(device),
                torch.randint(0, 10, (args.batch,), generator=g).to(device)) for _ in range(args.batches)]
    archs = space.sample_many(args.candidates * 4, g)
    evaluate_archs(supernet, archs[:1], batches)  # warm-up
    best = dict.fromkeys((1, 2, 4, 8), float("inf"))
    for _ in range(args.repeats):
        for k in best:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            evaluate_archs(supernet, archs, batches, max_batches_per_forward=k).correct.sum().item()
            best[k] = min(best[k], time.perf_counter() - t0)
    units = len(archs) * len(batches)
    print(f"{name} C={args.C} size={args.size}, {len(archs)} archs x {args.batches} batches of {args.batch}, "
          f"device={device}, {torch.get_num_threads()} threads: "
          + ", ".join(f"{k}/forward {1e3 * t / units:.2f} ms/batch ({best[1] / t:.2f}x)" for k, t in best.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", choices=["all", *sorted(SPACES)], default="all",
                        help=f"'all' runs {', '.join(DEFAULT_SPACES)}")
    parser.add_argument("--C", type=int, default=8)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--S", type=int, default=100)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max_batches_per_forward", type=int, default=None,
                        help="batches stacked per forward pass (default: the evaluator's choice for the device)")
    parser.add_argument("--stacking", action="store_true",
                        help="time evaluate_archs with 1, 2, 4, 8 batches per forward instead")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    names = DEFAULT_SPACES if args.space == "all" else [args.space]
    if args.stacking:
        for name in names:
            stacking(name, args, device)
        return
    ratios = {name: run(name, args, device) for name in names}
    print("ratios evaluator / plain: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
