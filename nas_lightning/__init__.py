"""nas-lightning: weight-sharing neural architecture search on PyTorch Lightning."""

__version__ = "0.1.0"
