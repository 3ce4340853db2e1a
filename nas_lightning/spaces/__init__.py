"""Search spaces: decisions, arch encoding, sampling, cost and builders."""

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import ArchFormatError, Decision, SearchSpace
from nas_lightning.spaces.chain import ChainSpace
from nas_lightning.spaces.nb201 import NB201_OPS, NB201Space

__all__ = ["NB201_OPS", "Arch", "ArchFormatError", "ChainSpace", "Decision", "NB201Space", "SearchSpace"]
