"""Base data module: a seeded supernet-train / supernet-val split of the official training set."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities.parsing import AttributeDict
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from nas_lightning.utils.distributed import step_generator


class TensorImageDataset(Dataset):
    """Images and labels held as tensors: ``(N, C, H, W)`` (float, or raw ``uint8`` before normalising), ``(N,)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"expected images (N, C, H, W) and labels (N,), got {tuple(images.shape)} and "
                             f"{tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        # The DataLoader fetches a whole batch with one gather instead of a Python loop per sample.
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.labels[index]

    def subset(self, indices: torch.Tensor) -> TensorImageDataset:
        """A copy holding only ``indices``, so later indexing stays a plain tensor lookup."""
        return TensorImageDataset(self.images[indices], self.labels[indices])


def to_normalized_float(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                        size: int | None = None, chunk: int = 8192) -> torch.Tensor:
    """``uint8`` ``(N, C, H, W)`` -> normalised float, resized to ``size`` (antialiased bilinear) once up front."""
    # Folding /255 into the affine map keeps this to two in-place passes over each chunk.
    scale = 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
    shift = -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    out_size = size if size is not None else images.shape[-1]
    resize = size is not None and tuple(images.shape[-2:]) != (size, size)
    out = torch.empty(len(images), images.shape[1], out_size, out_size, dtype=torch.float32)
    # Chunked so resizing 60k images never holds two full float copies.
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].float()
        if resize:
            # Antialiasing only matters (and only costs) when shrinking.
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=size < max(images.shape[-2:]))
        out[start:start + chunk] = x.add_(shift).mul_(scale)
    return out


def random_crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Batched random crop (zero padding, i.e. the mean after normalisation) and horizontal flip.

    The offsets and flips are drawn on the CPU from ``generator``, so a seeded generator gives the same
    augmentation on any device."""
    n, c, h, w = images.shape
    dev = images.device
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        images = padded[torch.arange(n, device=dev)[:, None, None, None],
                        torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    flip = (torch.rand(n, generator=generator) < 0.5).to(dev)
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def cutout(images: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """Batched Cutout (DeVries & Taylor 2017, as in the DARTS code): per image, zero a ``length`` x ``length``
    square centred on a uniformly drawn pixel, clipped at the border (zero is the mean after normalisation)."""
    n, _, h, w = images.shape
    dev = images.device
    cy = torch.randint(0, h, (n,), generator=generator).to(dev)
    cx = torch.randint(0, w, (n,), generator=generator).to(dev)
    half = length // 2
    rows = torch.arange(h, device=dev)[None, :]
    cols = torch.arange(w, device=dev)[None, :]
    in_rows = (rows >= (cy[:, None] - half)) & (rows < (cy[:, None] - half + length))
    in_cols = (cols >= (cx[:, None] - half)) & (cols < (cx[:, None] - half + length))
    hole = in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return images.masked_fill(hole, 0.0)


def collate_batch(batch: Any) -> Any:
    """A batch that ``TensorImageDataset.__getitems__`` already gathered passes through; lists of samples
    from other datasets are collated as usual."""
    if isinstance(batch, tuple) and len(batch) == 2 and all(isinstance(t, torch.Tensor) for t in batch):
        return batch
    return default_collate(batch)


class ResumableSampler(DistributedSampler):
    """The supernet-train order: a permutation seeded by (seed, epoch), sharded over ranks, that can
    start mid-epoch.

    Lightning calls ``set_epoch`` before every epoch, so each epoch's order depends only on (seed,
    epoch) and is the same on every rank (each rank takes its own slice). ``resume_from`` skips the
    samples this rank already trained on in that epoch, so a run resumed from a mid-epoch checkpoint
    sees exactly the batches an uninterrupted run would have seen. Being a ``DistributedSampler``,
    Lightning keeps it under DDP instead of swapping in its own.
    """

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self._resume: tuple[int, int] | None = None

    def resume_from(self, epoch: int, samples_seen: int) -> None:
        self._resume = (epoch, samples_seen)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self._resume is not None and self._resume[0] == self.epoch:
            indices = indices[self._resume[1]:]
            self._resume = None
        return iter(indices)


class ResumableDataLoader(DataLoader):
    """A train loader whose position is part of the checkpoint (Lightning saves ``state_dict`` of
    loaders that have one, and calls ``load_state_dict`` when it restarts mid-epoch)."""

    def __init__(self, *args: Any, batches_done: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches_done = batches_done

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        assert isinstance(sampler, ResumableSampler)
        return {"epoch": sampler.epoch, "samples_seen": self._batches_done() * (self.batch_size or 1)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.sampler
        assert isinstance(sampler, ResumableSampler)
        sampler.resume_from(int(state["epoch"]), int(state["samples_seen"]))


class SplitDataModule(pl.LightningDataModule, ABC):
    """Splits the official training set into supernet-train and supernet-val; the test split is the official one.

    Subclasses set ``num_classes``, ``in_channels`` and ``image_size`` (the effective side) in ``__init__`` and
    implement ``_load() -> (train_dataset, test_dataset)``. If ``_load`` returns ``TensorImageDataset`` the splits
    are in-memory tensors; raw ``uint8`` images are normalised with ``mean``/``std`` and resized to ``image_size``
    after subsetting, so ``train_subset`` also saves the conversion. Other datasets override ``_split_datasets``
    (see ``ImageFolderDataModule``).

    Args:
        batch_size: supernet-train batch size (the last incomplete batch is dropped).
        eval_batch_size: batch size for val/test loaders; defaults to ``batch_size``.
        num_workers: DataLoader worker processes.
        val_fraction: fraction of the (subset of the) training set held out as supernet-val, in [0, 1).
        train_subset: use only this many training images (seeded choice) before splitting.
        seed: seeds the subset choice, the split and the train shuffling; identical on every rank.
        image_size: resize images to this side; None keeps the native size.
        augment: batched random crop + horizontal flip on supernet-train batches, drawn from (seed, rank, epoch,
            batch index), so resume is exact with augmentation too (``augment_batch``).
        cutout: with ``augment``, also cut out a square of this side from each supernet-train image (0: off).
    """

    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...] = ()  # per-channel statistics for raw uint8 images
    std: tuple[float, ...] = ()

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        train_subset: int | None = None,
        seed: int = 0,
        image_size: int | None = None,
        augment: bool = False,
        cutout: int = 0,
    ) -> None:
        super().__init__()
        _check_int("batch_size", batch_size, minimum=1)
        if eval_batch_size is not None:
            _check_int("eval_batch_size", eval_batch_size, minimum=1)
        _check_int("num_workers", num_workers, minimum=0)
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float) or not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
        if train_subset is not None:
            _check_int("train_subset", train_subset, minimum=1)
        _check_int("seed", seed, minimum=0)
        if image_size is not None:
            _check_int("image_size", image_size, minimum=1)
        _check_int("cutout", cutout, minimum=0)
        if cutout and not augment:
            raise ValueError(f"cutout={cutout} is part of the training augmentation: set augment=True as well")
        self.batch_size = batch_size
        self.eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        self.num_workers = num_workers
        self.val_fraction = float(val_fraction)
        self.train_subset = train_subset
        self.seed = seed
        self.image_size = image_size  # subclasses replace None with the native size
        self.augment = augment
        self.cutout = cutout
        # Called here, Lightning collects the arguments of this __init__ and of every subclass __init__ up the
        # call chain (which pass these through **kwargs), so each subclass need not repeat this signature.
        self.save_hyperparameters()
        self.supernet_train_dataset: Dataset | None = None
        self.supernet_val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    @property
    def hparams_initial(self) -> AttributeDict:
        """The hyperparameters loggers get, each under ``data.``: Lightning merges them with the method's and
        refuses keys both have with different values, such as a method seed 1 beside a data seed 0."""
        return AttributeDict({k if k == "_class_path" else f"data.{k}": v for k, v in super().hparams_initial.items()})

    # -- subclass hooks -------------------------------------------------------------------------------------------

    @abstractmethod
    def _load(self) -> tuple[Dataset, Dataset]:
        """Return ``(official_train, official_test)``."""

    def _split_datasets(self, train: Dataset, train_idx: torch.Tensor,
                        val_idx: torch.Tensor) -> tuple[Dataset, Dataset]:
        if not isinstance(train, TensorImageDataset):
            raise TypeError(f"{type(self).__name__}._load returned {type(train).__name__}; override _split_datasets")
        return self._finalize(train.subset(train_idx)), self._finalize(train.subset(val_idx))

    def _finalize(self, dataset: Dataset) -> Dataset:
        """Normalise and resize raw ``uint8`` tensor images; anything else is returned as is."""
        if isinstance(dataset, TensorImageDataset) and dataset.images.dtype == torch.uint8:
            images = to_normalized_float(dataset.images, self.mean, self.std, self.image_size)
            return TensorImageDataset(images, dataset.labels)
        return dataset

    # -- split ----------------------------------------------------------------------------------------------------

    def split_indices(self, num_train: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(supernet_train_idx, supernet_val_idx)`` into the official training set; a pure function of the seed."""
        perm = torch.randperm(num_train, generator=torch.Generator().manual_seed(self.seed))
        if self.train_subset is not None:
            if self.train_subset > num_train:
                raise ValueError(f"train_subset={self.train_subset} exceeds the {num_train} training images")
            perm = perm[:self.train_subset]
        num_val = round(self.val_fraction * len(perm))
        return perm[num_val:], perm[:num_val]

    def setup(self, stage: str | None = None) -> None:
        if self.test_dataset is not None:  # idempotent: Lightning calls setup once per stage
            return
        train, test = self._load()
        train_idx, val_idx = self.split_indices(len(train))
        if len(train_idx) < self.batch_size:
            raise ValueError(f"supernet-train has {len(train_idx)} images, fewer than batch_size={self.batch_size} "
                             "(every batch would be dropped); lower batch_size or val_fraction")
        self.supernet_train_dataset, self.supernet_val_dataset = self._split_datasets(train, train_idx, val_idx)
        self.test_dataset = self._finalize(test)

    # -- loaders --------------------------------------------------------------------------------------------------

    def _loader(self, dataset: Dataset | None, name: str, **kwargs: Any) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{name} is not set up: call setup() first")
        kwargs.setdefault("collate_fn", collate_batch)
        return DataLoader(dataset, num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=self.num_workers > 0, **kwargs)

    def augment_batch(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Batched random crop (4 px at 32x32, as in the CIFAR recipe), flip and optional Cutout of a
        supernet-train batch. Subclasses that augment per sample (``ImageFolderDataModule``) return ``images``."""
        images = random_crop_flip(images, padding=max(1, self.image_size // 8), generator=generator)
        return cutout(images, self.cutout, generator) if self.cutout else images

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Augmenting here (on the device, after the loader) rather than in the loader's workers ties the
        # random draws to (seed, rank, epoch, batch index) alone: a run resumed mid-epoch gets the crops and
        # flips the uninterrupted run got, whatever num_workers is.
        trainer = self.trainer
        if not self.augment or trainer is None or not trainer.training:
            return batch
        images, labels = batch
        batch_idx = trainer.fit_loop.epoch_loop.batch_progress.current.ready  # this batch's index in the epoch
        generator = step_generator(self.seed, f"augment/rank{trainer.global_rank}/epoch{trainer.current_epoch}",
                                   batch_idx)
        return self.augment_batch(images, generator), labels

    def train_dataloader(self) -> DataLoader:
        dataset = self.supernet_train_dataset
        if dataset is None:
            raise RuntimeError("supernet_train_dataset is not set up: call setup() first")
        trainer = self.trainer
        sampler = ResumableSampler(dataset, self.seed, num_replicas=trainer.world_size if trainer else 1,
                                   rank=trainer.global_rank if trainer else 0)
        return ResumableDataLoader(
            dataset, batch_size=self.batch_size, drop_last=True, sampler=sampler,
            collate_fn=collate_batch, num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0,
            batches_done=self._train_batches_done,
        )

    def _train_batches_done(self) -> int:
        # Batches of the current epoch already trained on: the checkpoint is written after batch k's
        # step (processed = k + 1) or at the end of the epoch.
        trainer = self.trainer
        return 0 if trainer is None else trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.supernet_val_dataset, "supernet_val_dataset", batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test_dataset", batch_size=self.eval_batch_size)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
