"""Fashion-MNIST, the project's default data: read from local IDX files into normalised tensors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from nas_lightning.data.base import SplitDataModule, TensorImageDataset
from nas_lightning.data.idx import read_idx

ENV_VAR = "NAS_LIGHTNING_FASHION_MNIST"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package ``dataset-fashion-mnist``
DEFAULT_DOWNLOAD_ROOT = "data"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _find_files(directory: Path) -> dict[str, Path] | None:
    """The four IDX files in ``directory`` (each ``.gz`` or plain), or None if any is missing."""
    found = {}
    for key, name in FILES.items():
        for candidate in (directory / f"{name}.gz", directory / name):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


class FashionMNISTDataModule(SplitDataModule):
    """Fashion-MNIST: 10 classes, 1 channel, 28x28 (or ``image_size``); 60k train / 10k test.

    Files are looked up in ``root`` if given (directly or in its torchvision layout ``FashionMNIST/raw/``);
    otherwise in ``$NAS_LIGHTNING_FASHION_MNIST``, then the Debian path ``/usr/share/datasets/fashion-mnist/``,
    then ``./data/FashionMNIST/raw/``. With ``download=True`` and nothing found, torchvision downloads it into
    ``root`` (or ``./data``) in ``prepare_data``.
    """

    mean = (0.2860,)
    std = (0.3530,)

    def __init__(self, root: str | None = None, download: bool = False, **kwargs: Any) -> None:
        """``kwargs``: see ``SplitDataModule``."""
        super().__init__(**kwargs)
        self.num_classes = 10
        self.in_channels = 1
        self.image_size = 28 if self.image_size is None else self.image_size
        self.root = root
        self.download = download
        self.files = self._search()
        if self.files is None:
            if not download:
                raise FileNotFoundError(self._missing_message())
            self._download_root = root or os.environ.get(ENV_VAR) or DEFAULT_DOWNLOAD_ROOT

    def candidate_dirs(self) -> list[Path]:
        """Directories searched for the IDX files, in order."""
        if self.root is not None:
            bases = [Path(self.root)]
        else:
            env = os.environ.get(ENV_VAR)
            bases = ([Path(env)] if env else []) + [DEBIAN_DIR, Path(DEFAULT_DOWNLOAD_ROOT)]
        dirs: list[Path] = []
        for base in bases:
            dirs += [base, base / "FashionMNIST" / "raw"]
        return dirs

    def _search(self) -> dict[str, Path] | None:
        for directory in self.candidate_dirs():
            found = _find_files(directory)
            if found is not None:
                return found
        return None

    def _missing_message(self) -> str:
        tried = "\n".join(f"  {d}" for d in self.candidate_dirs())
        return (
            "Fashion-MNIST not found; looked for train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
            f"t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz] in:\n{tried}\n"
            "To get it, either:\n"
            "  - on Debian/Ubuntu, as root: apt-get install dataset-fashion-mnist  (installs into "
            f"{DEBIAN_DIR}/)\n"
            "  - let torchvision download it: download=True (CLI: --data.init_args.download=true)\n"
            f"  - point root=... (or ${ENV_VAR}) at a directory holding the files"
        )

    def prepare_data(self) -> None:
        if self.files is None:  # runs on one process per node, before setup
            from torchvision.datasets import FashionMNIST

            for train in (True, False):
                FashionMNIST(self._download_root, train=train, download=True)

    def _load(self) -> tuple[TensorImageDataset, TensorImageDataset]:
        if self.files is None:
            self.files = self._search()
            if self.files is None:
                raise FileNotFoundError(self._missing_message())
        f = self.files
        return self._tensors(f["train_images"], f["train_labels"]), self._tensors(f["test_images"], f["test_labels"])

    def _tensors(self, images_path: Path, labels_path: Path) -> TensorImageDataset:
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{images_path} {tuple(images.shape)} and {labels_path} {tuple(labels.shape)} "
                             "are not a matching (N, H, W) / (N,) pair")
        if int(labels.max()) >= self.num_classes:
            raise ValueError(f"{labels_path}: label {int(labels.max())} outside 0..{self.num_classes - 1}")
        return TensorImageDataset(images.unsqueeze(1), labels.to(torch.int64))  # normalised after the split
