"""Supernets and the candidate ops they share."""

from nas_lightning.supernet.base import Supernet
from nas_lightning.supernet.choice import ChoiceBlock
from nas_lightning.supernet.ops import OPS

__all__ = ["OPS", "ChoiceBlock", "Supernet"]
