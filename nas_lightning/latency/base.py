"""Latency models: the cost an arch must stay under (PC-NAS's hard latency limit, search constraints)."""

from __future__ import annotations

from abc import ABC, abstractmethod

from typing_extensions import override

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import SearchSpace


class LatencyModel(ABC):
    """Predicted latency of an arch, in milliseconds (or in the proxy's own unit, see ``unit``)."""

    unit: str = "ms"

    @abstractmethod
    def __call__(self, arch: Arch) -> float: ...


class FlopsProxy(LatencyModel):
    """FLOPs as a stand-in for latency where no measured table exists: ``scale`` FLOPs per unit.

    Where the space has a cost table (``SearchSpace.cost_table``: chain, NAS-Bench-201, MobileNet), a call is
    a table lookup and the model is additive, a fixed part plus one entry per decision's choice, as
    ``LatencyLimit.cheapest_completion`` assumes to find the exact cheapest completion. A space without
    one (DARTS, whose costs depend on the parent choices) builds and counts each new arch's network.
    """

    unit = "MFLOPs"

    def __init__(self, space: SearchSpace, scale: float = 1e6) -> None:
        self.space, self.scale = space, scale

    @override
    def __call__(self, arch: Arch) -> float:
        return self.space.flops(arch) / self.scale
