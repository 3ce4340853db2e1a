"""nas-lightning: weight-sharing neural architecture search on PyTorch Lightning."""

# Registers the network of every built-in space (timm-style: importing the package fills the registry;
# supernet/ imports spaces/, never the reverse).
import nas_lightning.supernet  # noqa: F401

__version__ = "0.1.0"
