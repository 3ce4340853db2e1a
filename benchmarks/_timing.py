"""Timing shared by the step benchmarks: mean seconds per training step, with the device synchronised around
the timed steps (CUDA runs asynchronously, so an unsynchronised clock times the launches, not the work)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def seconds_per_step(step: Callable[[int], None], start: int, steps: int, device: torch.device) -> float:
    """Mean wall time of ``step(i)`` for i in ``start .. start + steps - 1``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for i in range(start, start + steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / steps
