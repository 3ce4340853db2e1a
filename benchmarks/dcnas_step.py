"""DC-NAS: a training step as a ratio of a SPOS step, and one sharing-state inference as a ratio of an epoch.

    python benchmarks/dcnas_step.py [--space deeper_insights|nb201|mobilenet --batch 64 --val_batch 256
                                     --steps 16 --rounds 3 --num_archs 256 --epoch_steps 390]

Built on the method itself (``nas_lightning.methods.DCNAS``; "Distribution Consistent Neural Architecture Search").
Timed, interleaved so that both see the same machine state, on the same batch and the same uniform arch sequence:

- SPOS: forward + backward + SGD-with-momentum step of the plain supernet on arch a.
- DC-NAS (lambda = 0.5): the same with the partner term, CE(a) + lambda CE(a'), on a supernet whose copies have
  split (one inference with a threshold above every cosine splits every site, the most copies the state can use).
- DC-NAS (lambda = 0): the copies alone (what the picker and the swapped tensors cost).

Then one sharing-state inference (K-means for every layer and op with weights, 2 representatives' gradients each
on one validation batch, the inference and the splits) against one DC-NAS epoch of ``--epoch_steps`` steps (390:
CIFAR-10's 25,000 supernet-train images at batch 64; 42 for the CPU quickstart). Expect the step ratio near 2
(two forward-backward passes), and the inference to cost 2 x (layers x ops with weights) forward-backward passes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _timing import seconds_per_step

from nas_lightning.methods import DCNAS, SPOS
from nas_lightning.search.sharing_update import apply_inference, infer_sharing_state
from nas_lightning.spaces import DeeperInsightsSpace, MobileNetSpace, NB201Space, SearchSpace

SPACES: dict[str, Callable[[int], SearchSpace]] = {
    "deeper_insights": lambda size: DeeperInsightsSpace(C=16, num_cells=4, num_classes=10, in_channels=3,
                                                        input_size=size),
    "nb201": lambda size: NB201Space(C=16, N=5, num_classes=10, in_channels=3, input_size=size),
    "mobilenet": lambda size: MobileNetSpace("small", num_classes=1000, in_channels=3, input_size=size),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", choices=sorted(SPACES), default="deeper_insights")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--val_batch", type=int, default=256)
    parser.add_argument("--input_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num_archs", type=int, default=256, help="R, archs clustered per layer and op")
    parser.add_argument("--epoch_steps", type=int, default=390)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = torch.device(args.device)
    space = SPACES[args.space](args.input_size)
    classes = space.num_classes
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 3, args.input_size, args.input_size, generator=gen).to(device)
    y = torch.randint(0, classes, (args.batch,), generator=gen).to(device)
    val = (torch.randn(args.val_batch, 3, args.input_size, args.input_size, generator=gen).to(device),
           torch.randint(0, classes, (args.val_batch,), generator=gen).to(device))

    def build(cls, **kw):
        torch.manual_seed(args.seed)
        model = cls(space, seed=args.seed, num_eval_archs=0, **kw).to(device).train()
        return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=3e-4)

    spos, spos_opt = build(SPOS)
    dcnas, dc_opt = build(DCNAS, num_copies=2, partner_weight=0.5)
    sync(device)
    t0 = time.perf_counter()
    first = infer_sharing_state(dcnas.supernet, dcnas.sharing, val, args.seed, args.num_archs, threshold=2.0)
    sync(device)
    apply_inference(dcnas.supernet, dcnas.sharing, first)
    cold_inference = time.perf_counter() - t0

    def stepper(model, opt, weight: float) -> Callable[[int], None]:
        def step(i: int) -> None:
            opt.zero_grad(set_to_none=True)
            arch = model.sampler.sample(i)
            loss = F.cross_entropy(model.supernet(x, arch), y)
            if weight:
                loss = loss + weight * F.cross_entropy(model.supernet(x, model.partner(arch, i)), y)
            loss.backward()
            opt.step()
        return step

    def timed(step: Callable[[int], None], start: int) -> float:
        return seconds_per_step(step, start, args.steps, device)

    steps = {"SPOS": stepper(spos, spos_opt, 0.0), "DC-NAS lambda=0.5": stepper(dcnas, dc_opt, 0.5),
             "DC-NAS lambda=0": stepper(dcnas, dc_opt, 0.0)}
    for step in steps.values():  # warm-up: momentum buffers exist, kernels are chosen
        for i in range(4):
            step(i)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.rounds):
        for name, step in steps.items():
            times[name].append(timed(step, 4 + r * args.steps))
    median = {name: statistics.median(t) for name, t in times.items()}

    inference = []
    for _ in range(args.rounds):
        sync(device)
        t0 = time.perf_counter()
        result = infer_sharing_state(dcnas.supernet, dcnas.sharing, val, args.seed, args.num_archs, threshold=0.0)
        sync(device)
        inference.append(time.perf_counter() - t0)
    passes = dcnas.sharing.M * len({(r.layer, r.op) for r in result.records})
    epoch = args.epoch_steps * median["DC-NAS lambda=0.5"]
    count = dcnas.copy_count
    print(f"{type(space).__name__} ({space.num_archs:.3g} archs), batch {args.batch}, {args.input_size}x"
          f"{args.input_size}, device={device}, {torch.get_num_threads()} threads; params: SPOS "
          f"{count.supernet:,}, DC-NAS allocated {count.total:,} ({count.total / count.supernet:.2f}x), in use after "
          f"splitting everything {dcnas.copies_in_use_params():,}")
    print(f"{'step':<20} {'ms':>8} {'x SPOS':>7}")
    for name, t in median.items():
        print(f"{name:<20} {t * 1e3:>8.2f} {t / median['SPOS']:>7.3f}")
    inf = statistics.median(inference)
    print(f"sharing-state inference (R={args.num_archs}, {passes} forward-backward passes on {args.val_batch} "
          f"images): {inf:.3f} s (first, cold: {cold_inference:.3f} s) = {inf / epoch:.4f} of one DC-NAS epoch of "
          f"{args.epoch_steps} steps ({epoch:.2f} s)")


if __name__ == "__main__":
    main()
