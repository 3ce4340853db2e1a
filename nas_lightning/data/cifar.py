"""CIFAR-10 / CIFAR-100 through torchvision, loaded once into normalised tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nas_lightning.data.base import SplitDataModule, TensorImageDataset


class _CIFARDataModule(SplitDataModule):
    """Shared CIFAR logic; subclasses name the torchvision class, folder and statistics."""

    dataset_name: str
    folder: str

    def __init__(self, root: str = "data", download: bool = False, **kwargs: Any) -> None:
        """``root``: the folder holding the torchvision folder; ``kwargs``: see ``SplitDataModule``."""
        super().__init__(**kwargs)
        self.in_channels = 3
        self.image_size = 32 if self.image_size is None else self.image_size
        self.root = root
        self.download = download
        # Cheap early check; torchvision verifies the checksums when loading.
        if not download and not (Path(root) / self.folder).is_dir():
            raise FileNotFoundError(self._missing_message())

    def _missing_message(self) -> str:
        return (f"{self.dataset_name} not found under root={self.root!r} (expected {Path(self.root) / self.folder}/). "
                f"Pass download=True (CLI: --data.init_args.download=true) to download it there, or point root at "
                f"a directory that already holds {self.folder}/.")

    def _torchvision(self, train: bool, download: bool) -> Any:
        import torchvision.datasets

        cls = getattr(torchvision.datasets, self.dataset_name)
        try:
            return cls(self.root, train=train, download=download)
        except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
            raise FileNotFoundError(f"{self._missing_message()} (torchvision: {err})") from err

    def prepare_data(self) -> None:
        if self.download:
            for train in (True, False):
                self._torchvision(train, download=True)

    def _load(self) -> tuple[TensorImageDataset, TensorImageDataset]:
        return self._tensors(train=True), self._tensors(train=False)

    def _tensors(self, train: bool) -> TensorImageDataset:
        ds = self._torchvision(train, download=False)
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) uint8 -> NCHW
        return TensorImageDataset(images, torch.tensor(ds.targets, dtype=torch.int64))  # normalised after the split


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10: 10 classes, 3 channels, 32x32 (or ``image_size``); 50k train / 10k test."""

    dataset_name = "CIFAR10"
    folder = "cifar-10-batches-py"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    num_classes = 10


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100: 100 classes, 3 channels, 32x32 (or ``image_size``); 50k train / 10k test."""

    dataset_name = "CIFAR100"
    folder = "cifar-100-python"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    num_classes = 100
