"""Search spaces: decisions, arch encoding, sampling, cost and builders."""

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import ArchFormatError, Decision, SearchSpace
from nas_lightning.spaces.chain import ChainSpace
from nas_lightning.spaces.darts import DARTS_V2_GENOTYPE, DartsSpace
from nas_lightning.spaces.mobilenet import MOBILENET_LARGE_OPS, MOBILENET_SMALL_OPS, MobileNetSpace
from nas_lightning.spaces.nb201 import NB201_OPS, NB201Space

__all__ = [
    "DARTS_V2_GENOTYPE",
    "MOBILENET_LARGE_OPS",
    "MOBILENET_SMALL_OPS",
    "NB201_OPS",
    "Arch",
    "ArchFormatError",
    "ChainSpace",
    "DartsSpace",
    "Decision",
    "MobileNetSpace",
    "NB201Space",
    "SearchSpace",
]
