"""Latency models: the cost an arch must stay under (PC-NAS's hard latency limit, search constraints)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace


class LatencyModel(ABC):
    """Predicted latency of an arch, in milliseconds (or in the proxy's own unit, see ``unit``)."""

    unit: str = "ms"

    @abstractmethod
    def __call__(self, arch: Arch) -> float: ...


class FlopsProxy(LatencyModel):
    """FLOPs as a stand-in for latency where no measured table exists: ``scale`` FLOPs per unit."""

    unit = "MFLOPs"

    def __init__(self, space: SearchSpace, scale: float = 1e6) -> None:
        self.space, self.scale = space, scale

    def __call__(self, arch: Arch) -> float:
        return self.space.flops(arch) / self.scale
