"""Methods: each a LightningModule wiring a supernet to an arch sampler."""

from nas_lightning.methods.base import NASModule, check_space_matches_data
from nas_lightning.methods.dcnas import DCNAS
from nas_lightning.methods.dinas import DINAS
from nas_lightning.methods.landmark import LandmarkSPOS
from nas_lightning.methods.pcnas import PCNAS
from nas_lightning.methods.reduced_sharing import ReducedSharing
from nas_lightning.methods.spos import SPOS
from nas_lightning.methods.standalone import StandaloneModule
from nas_lightning.methods.supernet_module import SupernetModule
from nas_lightning.methods.wpnas import WPNAS

__all__ = [
    "DCNAS",
    "DINAS",
    "PCNAS",
    "SPOS",
    "WPNAS",
    "LandmarkSPOS",
    "NASModule",
    "ReducedSharing",
    "StandaloneModule",
    "SupernetModule",
    "check_space_matches_data",
]
