"""Base data module: a seeded supernet-train / supernet-val split of the official training set."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.parsing import AttributeDict
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate
from typing_extensions import override

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
    sees exactly the batches an uninterrupted run would have seen, provided it runs on as many processes
    (a rank's position counts samples of its own slice; otherwise it warns). Being a ``DistributedSampler``,
    Lightning keeps it under DDP instead of swapping in its own.
    """

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self._resume: tuple[int, int, int] | None = None

    def resume_from(self, epoch: int, samples_seen: int, num_replicas: int | None = None) -> None:
        """Skip the first ``samples_seen`` samples of this rank's slice of ``epoch``, a position written by a run on
        ``num_replicas`` processes (None: this run's number)."""
        self._resume = (epoch, samples_seen, self.num_replicas if num_replicas is None else num_replicas)

    @override
    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self._resume is not None and self._resume[0] == self.epoch:
            _, seen, saved_replicas = self._resume
            if saved_replicas != self.num_replicas and seen > 0:
                # Warned here, where the position is applied, not at load: a checkpoint taken at an epoch's end
                # resumes at the next epoch's start, whose order is simply this run's.
                rank_zero_warn(  # every rank would say the same
                    f"resuming mid-epoch {self.epoch} from a checkpoint written by {saved_replicas} process(es) on "
                    f"{self.num_replicas}: the data order changes (each process trains its slice of the (seed, "
                    "epoch) permutation, and the slices depend on the number of processes), so the rest of this "
                    "epoch is not what the uninterrupted run trained on (on fewer processes some of its images are "
                    f"trained on twice, on more some are skipped). Resume on {saved_replicas} process(es) to continue "
                    "exactly.")
            indices = indices[seen:]
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
        # The position counts samples of this rank's slice, so it is recorded with the number of slices.
        return {"epoch": sampler.epoch, "samples_seen": self._batches_done() * (self.batch_size or 1),
                "num_replicas": sampler.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.sampler
        assert isinstance(sampler, ResumableSampler)
        # Checkpoints written before num_replicas was recorded are taken to come from this many processes.
        sampler.resume_from(int(state["epoch"]), int(state["samples_seen"]),
                            int(state.get("num_replicas", sampler.num_replicas)))


class GlobalBatchSampler(DistributedSampler):
    """The evaluation order, the same at any number of processes: the dataset in order, cut into global batches of
    ``batch_size``, rank r taking the slice ``r::num_replicas`` of each (as DI-NAS rewards slice their batch).

    Every sample lies in exactly one rank's slice: no padding duplicates samples and the last, smaller batch is kept,
    so totals summed over ranks equal one process's totals. Every rank's k-th batch is its slice of global batch k,
    so Lightning's per-rank ``limit_val_batches`` (N batches, or a fraction of ``len``) selects the same global
    batches on any number of processes. ``len`` is the number of global batches on every rank, so that a fraction
    rounds alike everywhere; a rank whose slice of the last batch is empty ends one batch early (an empty batch
    would break batch statistics and collation).

    Yields one list of indices per batch: use it with ``DataLoader(BatchIndexedDataset(dataset), batch_size=None)``
    (``SplitDataModule.eval_dataloader``). Being a ``DistributedSampler``, Lightning keeps it under DDP instead of
    injecting its own, which would pad and re-shard.
    """

    def __init__(self, dataset: Dataset, batch_size: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        _check_int("batch_size", batch_size, minimum=1)
        self.batch_size = batch_size

    @override
    def __iter__(self) -> Iterator[list[int]]:  # type: ignore[override]
        n = len(self.dataset)  # type: ignore[arg-type]
        for start in range(0, n, self.batch_size):
            part = list(range(start + self.rank, min(start + self.batch_size, n), self.num_replicas))
            if part:
                yield part

    @override
    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)  # type: ignore[arg-type]


class BatchIndexedDataset(Dataset):
    """``dataset`` indexed by a list of indices, one batch per item, for a loader with ``batch_size=None``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    @override
    def __getitem__(self, indices: list[int]) -> Any:
        # Fetched as the DataLoader fetches a batch (one gather where the dataset has __getitems__), then
        # collated by the loader's collate_fn.
        getitems = getattr(self.dataset, "__getitems__", None)
        return getitems(indices) if callable(getitems) else [self.dataset[i] for i in indices]


class SplitDataModule(pl.LightningDataModule, ABC):
    """Splits the official training set into supernet-train and supernet-val; the test split is the official one.

    Subclasses set ``num_classes``, ``in_channels`` and ``image_size`` (the effective side) in ``__init__`` and
    implement ``_load() -> (train_dataset, test_dataset)``. If ``_load`` returns ``TensorImageDataset`` the splits
    are in-memory tensors; raw ``uint8`` images are normalised with ``mean``/``std`` and resized to ``image_size``
    after subsetting, so ``train_subset`` also saves the conversion. Other datasets override ``_split_datasets``
    (see ``ImageFolderDataModule``).

    Args:
        batch_size: supernet-train batch size (the last incomplete batch is dropped).
        eval_batch_size: size of the val/test batches, defaults to ``batch_size``. Under DDP these are global
            batches, each rank taking its slice (``GlobalBatchSampler``), so an evaluation sees the same images, and
            ``limit_val_batches`` the same batches, at any number of processes; BN recalibration batches are
            unsharded (``calibration_dataloader``).
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
    @override
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

    @override
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

    def augment_batch(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Batched random crop (4 px at 32x32, as in the CIFAR recipe), flip and optional Cutout of a
        supernet-train batch. Subclasses that augment per sample (``ImageFolderDataModule``) return ``images``."""
        images = random_crop_flip(images, padding=max(1, self.image_size // 8), generator=generator)
        return cutout(images, self.cutout, generator) if self.cutout else images

    @override
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

    @override
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

    def calibration_dataloader(self) -> DataLoader:
        """Supernet-train batches in epoch-0 order, unsharded and not augmented: BN recalibration's batches
        (``BatchSource.calibration``), the same on every rank whatever the number of processes."""
        dataset = self.supernet_train_dataset
        if dataset is None:
            raise RuntimeError("supernet_train_dataset is not set up: call setup() first")
        # One replica: the whole epoch-0 permutation, i.e. the first batches a one-process run trains on.
        return DataLoader(dataset, batch_size=self.batch_size, drop_last=True,
                          sampler=ResumableSampler(dataset, self.seed), collate_fn=collate_batch,
                          num_workers=self.num_workers, pin_memory=torch.cuda.is_available())

    def eval_dataloader(self, split: Literal["val", "test"], num_replicas: int = 1, rank: int = 0) -> DataLoader:
        """The supernet-val (``"val"``) or test split in order, in global batches of ``eval_batch_size``, this rank
        taking its slice of each (``GlobalBatchSampler``); unsharded with the default ``num_replicas=1``."""
        dataset = {"val": self.supernet_val_dataset, "test": self.test_dataset}[split]
        if dataset is None:
            raise RuntimeError(f"the {split} split is not set up: call setup() first")
        smallest = min(len(dataset), self.eval_batch_size)  # type: ignore[arg-type]
        if 0 < smallest < num_replicas:
            # A rank with no images would skip the evaluation whose sums over ranks the others wait for.
            raise ValueError(f"the {split} split ({len(dataset)} images, eval_batch_size={self.eval_batch_size}) "  # type: ignore[arg-type]
                             f"cannot give each of the {num_replicas} processes a share of its first batch: raise "
                             "data.eval_batch_size (and data.val_fraction) to at least the number of processes")
        return DataLoader(BatchIndexedDataset(dataset), batch_size=None,
                          sampler=GlobalBatchSampler(dataset, self.eval_batch_size, num_replicas, rank),
                          collate_fn=collate_batch, num_workers=self.num_workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0)

    def _replicas(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    @override
    def val_dataloader(self) -> DataLoader:
        """This rank's slices of the supernet-val batches (``eval_dataloader``): the images an evaluation sees, and
        what ``limit_val_batches`` selects, do not depend on the number of processes."""
        return self.eval_dataloader("val", *self._replicas())

    @override
    def test_dataloader(self) -> DataLoader:
        """This rank's slices of the test batches, as ``val_dataloader``."""
        return self.eval_dataloader("test", *self._replicas())


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
