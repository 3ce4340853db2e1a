"""ImageNet-style ``train/`` + ``val/`` image folders, decoded and transformed per sample."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import find_classes

from nas_lightning.data.base import SplitDataModule

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _FixedClassesImageFolder(ImageFolder):
    """``ImageFolder`` with a given class->index map, so ``val/`` labels match ``train/`` even if a class is absent."""

    def __init__(self, root: str | Path, class_to_idx: dict[str, int], **kwargs: Any) -> None:
        self._fixed_class_to_idx = class_to_idx
        super().__init__(root, allow_empty=True, **kwargs)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        return sorted(self._fixed_class_to_idx, key=self._fixed_class_to_idx.__getitem__), self._fixed_class_to_idx


class ImageFolderDataModule(SplitDataModule):
    """Image folders ``root/train/<class>/*`` and ``root/val/<class>/*`` (the ImageNet layout).

    The official ``val/`` is the test split; supernet-val is carved out of ``train/`` by the seeded split and gets
    the eval transform (Resize + CenterCrop). Supernet-train gets RandomResizedCrop + flip when ``augment``, per
    sample in the loader's workers (seeded by Lightning's ``seed_everything(workers=True)``), so unlike the tensor
    datasets' batched augmentation, a mid-epoch resume does not redraw exactly the same crops.
    ``num_classes`` is the number of class folders in ``train/``.
    """

    def __init__(self, root: str, image_size: int = 224, augment: bool = True, **kwargs: Any) -> None:
        """``image_size`` and ``augment`` default to the ImageNet recipe; ``kwargs``: see ``SplitDataModule``."""
        if image_size is None:
            raise ValueError("image_size must be an int for ImageFolderDataModule, got None")
        if kwargs.get("cutout"):
            raise ValueError(f"cutout={kwargs['cutout']}: ImageFolderDataModule augments per sample with torchvision "
                             "transforms, not with the batched crop/flip/Cutout; leave cutout at 0")
        super().__init__(image_size=image_size, augment=augment, **kwargs)
        self.root = Path(root)
        missing = [str(self.root / s) for s in ("train", "val") if not (self.root / s).is_dir()]
        if missing:
            raise FileNotFoundError(f"ImageFolderDataModule needs root/train/<class>/ and root/val/<class>/ folders; "
                                    f"missing: {', '.join(missing)}")
        classes, self.class_to_idx = find_classes(self.root / "train")
        val_classes = set(find_classes(self.root / "val")[0])
        if not val_classes <= set(classes):
            raise ValueError(f"{self.root / 'val'} has classes not in train/: {sorted(val_classes - set(classes))}")
        self.classes = classes
        self.num_classes = len(classes)
        self.in_channels = 3
        self.image_size = image_size

    def train_transform(self) -> transforms.Compose:
        if not self.augment:
            return self.eval_transform()
        return transforms.Compose([
            transforms.RandomResizedCrop(self.image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def eval_transform(self) -> transforms.Compose:
        return transforms.Compose([
            transforms.Resize(round(self.image_size / 0.875)),  # the usual 256 -> 224 ratio
            transforms.CenterCrop(self.image_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def _load(self) -> tuple[Dataset, Dataset]:
        train = _FixedClassesImageFolder(self.root / "train", self.class_to_idx, transform=self.train_transform())
        test = _FixedClassesImageFolder(self.root / "val", self.class_to_idx, transform=self.eval_transform())
        return train, test

    def _split_datasets(self, train: Dataset, train_idx: torch.Tensor,
                        val_idx: torch.Tensor) -> tuple[Dataset, Dataset]:
        # A shallow copy shares the (large) file list; only the transform differs.
        val_view = copy.copy(train)
        val_view.transform = self.eval_transform()
        return Subset(train, train_idx.tolist()), Subset(val_view, val_idx.tolist())

    def augment_batch(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return images  # augmented per sample by train_transform
