"""Synthetic class-template images for tests: deterministic from the seed, instant, learnable."""

from __future__ import annotations

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
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        train_subset: int | None = None,
        seed: int = 0,
        augment: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
                         val_fraction=val_fraction, train_subset=train_subset, seed=seed, image_size=image_size,
                         augment=augment)
        checks = (("num_classes", num_classes, 2), ("in_channels", in_channels, 1), ("image_size", image_size, 1),
                  ("num_train", num_train, 1), ("num_test", num_test, 1))
        for name, value, minimum in checks:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if not isinstance(noise, int | float) or noise < 0:
            raise ValueError(f"noise must be a number >= 0, got {noise!r}")
        self.save_hyperparameters()
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
