"""Supernets, the candidate ops they share, and the networks of the built-in spaces.

Importing this package registers each network for its space class in ``nas_lightning.spaces.NETWORKS``,
which ``space.build_supernet()`` and ``space.build_network(arch)`` look up.
"""

from nas_lightning.supernet.base import Supernet
from nas_lightning.supernet.chain import ChainNetwork
from nas_lightning.supernet.choice import ChoiceBlock
from nas_lightning.supernet.darts import DartsNetwork
from nas_lightning.supernet.deeper_insights import DeeperInsightsNetwork
from nas_lightning.supernet.mobilenet import MobileNetNetwork
from nas_lightning.supernet.nats_sss import NATSSizeNetwork
from nas_lightning.supernet.nb201 import NB201Network
from nas_lightning.supernet.ops import OPS
from nas_lightning.supernet.wpnas_mobilenet import WPNASMobileNetNetwork

__all__ = [
    "OPS",
    "ChainNetwork",
    "ChoiceBlock",
    "DartsNetwork",
    "DeeperInsightsNetwork",
    "MobileNetNetwork",
    "NATSSizeNetwork",
    "NB201Network",
    "Supernet",
    "WPNASMobileNetNetwork",
]
