"""Synthetic class-template images for tests: deterministic from the seed, instant, learnable."""

from __future__ import annotations

from typing import Any

import torch

from nas_lightning.data.base import SplitDataModule, TensorImageDataset


class SyntheticDataModule(SplitDataModule):
    """Each class has a fixed random template image; a sample is its class template plus Gaussian noise.

    Templates and samples are standard normal (times ``noise`` for the noise), so inputs are roughly
    normalised already and a linear model separates the classes well above chance.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 16,
        num_train: int = 512,
        num_test: int = 256,
        noise: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_size=image_size, **kwargs)
        checks = (("num_classes", num_classes, 2), ("in_channels", in_channels, 1), ("image_size", image_size, 1),
                  ("num_train", num_train, 1), ("num_test", num_test, 1))
        for name, value, minimum in checks:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if not isinstance(noise, int | float) or noise < 0:
            raise ValueError(f"noise must be a number >= 0, got {noise!r}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        self.num_train = num_train
        self.num_test = num_test
        self.noise = float(noise)

    def _load(self) -> tuple[TensorImageDataset, TensorImageDataset]:
        # Its own generator (offset from the split seed) so the data does not depend on the global RNG.
        g = torch.Generator().manual_seed(self.seed + 1_000_003)
        shape = (self.in_channels, self.image_size, self.image_size)
        templates = torch.randn(self.num_classes, *shape, generator=g)

        def sample(n: int) -> TensorImageDataset:
            labels = torch.randint(0, self.num_classes, (n,), generator=g)
            images = templates[labels] + self.noise * torch.randn(n, *shape, generator=g)
            return TensorImageDataset(images, labels)

        return sample(self.num_train), sample(self.num_test)
