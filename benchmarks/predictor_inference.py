"""Predictor inference speed: archs per second over 10,000 archs, beside references measured in the same run.

    python benchmarks/predictor_inference.py [--archs 10000 --support 30 --hidden 64 --loop_archs 300]

For each encoder (MLP, LSTM, Transformer) the few-shot predictor (WPNAS, arXiv:2203.02086, section 3.2; one
batched ``predict`` over all archs, support set of ``--support``) is timed against two references: the same
predictor called once per arch (the Python loop a reward would otherwise run, timed on ``--loop_archs`` archs)
and the supervised predictor of the same encoder (one forward per arch, no support set). Weights are freshly
initialised: the speed does not depend on them. Median of ``--rounds``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from nas_lightning.predictors import ENCODERS, build_predictor
from nas_lightning.spaces import NB201Space


def timed(fn: Callable[[], object], rounds: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", type=int, default=10_000)
    parser.add_argument("--support", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--loop_archs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    space = NB201Space()
    archs = space.sample_many(args.archs, torch.Generator().manual_seed(0))
    subset = archs[: args.loop_archs]
    print(f"NAS-Bench-201 archs, {args.archs} per call, support {args.support}, hidden {args.hidden}, "
          f"{torch.get_num_threads()} threads, device={args.device}")
    print(f"{'encoder':<12} {'few-shot archs/s':>17} {'per-arch loop':>14} {'speed-up':>9} {'supervised':>11} "
          f"{'few-shot/sup.':>14}")
    for name in sorted(ENCODERS):
        few = build_predictor("few_shot", space, 0, encoder=name, hidden=args.hidden,
                              support_size=args.support).to(args.device)
        sup = build_predictor("supervised", space, 0, encoder=name, hidden=args.hidden).to(args.device)
        batched = args.archs / timed(lambda few=few: few.predict(archs), args.rounds)
        loop = len(subset) / timed(lambda few=few: [few.predict([a]) for a in subset], args.rounds)
        supervised = args.archs / timed(lambda sup=sup: sup.predict(archs), args.rounds)
        print(f"{name:<12} {batched:>17,.0f} {loop:>14,.0f} {batched / loop:>8.1f}x {supervised:>11,.0f} "
              f"{batched / supervised:>14.2f}")


if __name__ == "__main__":
    main()
