"""Architecture samplers."""

from nas_lightning.samplers.base import ArchSampler, SamplerFactory
from nas_lightning.samplers.controller import ControllerSampler, LSTMController, reinforce_step
from nas_lightning.samplers.pool import LatencyLimit, PartialModelPool, PoolSampler
from nas_lightning.samplers.probabilistic import ProbabilisticSampler
from nas_lightning.samplers.round_robin import RoundRobinSampler
from nas_lightning.samplers.uniform import UniformSampler

__all__ = [
    "ArchSampler",
    "ControllerSampler",
    "LSTMController",
    "LatencyLimit",
    "PartialModelPool",
    "PoolSampler",
    "ProbabilisticSampler",
    "RoundRobinSampler",
    "SamplerFactory",
    "UniformSampler",
    "reinforce_step",
]
