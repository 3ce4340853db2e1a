"""Search spaces: decisions, arch grammar and encoding, sampling, cost, and the registry of their networks."""

from nas_lightning.spaces.arch import Arch
from nas_lightning.spaces.base import NETWORKS, ArchFormatError, Decision, SearchSpace
from nas_lightning.spaces.chain import CHAIN_OPS, ChainSpace
from nas_lightning.spaces.darts import DARTS_PRIMITIVES, DARTS_V2_GENOTYPE, DartsSpace, Edge, Gene, ParentPair
from nas_lightning.spaces.deeper_insights import DEEPER_INSIGHTS_EDGES, DEEPER_INSIGHTS_OPS, DeeperInsightsSpace
from nas_lightning.spaces.mobilenet import MOBILENET_LARGE_OPS, MOBILENET_SMALL_OPS, MobileNetSpace
from nas_lightning.spaces.nats_sss import SSS_CELL, SSS_CHANNELS, NATSSizeSpace
from nas_lightning.spaces.nb201 import NB201_EDGES, NB201_OPS, NB201Space
from nas_lightning.spaces.wpnas_mobilenet import WPNASMobileNetSpace

__all__ = [
    "CHAIN_OPS",
    "DARTS_PRIMITIVES",
    "DARTS_V2_GENOTYPE",
    "DEEPER_INSIGHTS_EDGES",
    "DEEPER_INSIGHTS_OPS",
    "MOBILENET_LARGE_OPS",
    "MOBILENET_SMALL_OPS",
    "NB201_EDGES",
    "NB201_OPS",
    "NETWORKS",
    "SSS_CELL",
    "SSS_CHANNELS",
    "Arch",
    "ArchFormatError",
    "ChainSpace",
    "DartsSpace",
    "Decision",
    "DeeperInsightsSpace",
    "Edge",
    "Gene",
    "MobileNetSpace",
    "NATSSizeSpace",
    "NB201Space",
    "ParentPair",
    "SearchSpace",
    "WPNASMobileNetSpace",
]
