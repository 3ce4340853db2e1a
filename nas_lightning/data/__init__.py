"""LightningDataModules: a seeded supernet-train / supernet-val split of each dataset's training set."""

from nas_lightning.data.base import SplitDataModule
from nas_lightning.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from nas_lightning.data.fashion_mnist import FashionMNISTDataModule
from nas_lightning.data.imagenet import ImageFolderDataModule
from nas_lightning.data.synthetic import SyntheticDataModule

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "SplitDataModule",
    "SyntheticDataModule",
]
