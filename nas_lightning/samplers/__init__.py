"""Architecture samplers."""

from nas_lightning.samplers.base import ArchSampler
from nas_lightning.samplers.pool import LatencyLimit, PartialModelPool, PoolSampler
from nas_lightning.samplers.uniform import UniformSampler

__all__ = ["ArchSampler", "LatencyLimit", "PartialModelPool", "PoolSampler", "UniformSampler"]
