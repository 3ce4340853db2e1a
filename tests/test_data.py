"""Data modules: IDX reader, Fashion-MNIST from the Debian files, splits, errors, ImageFolder, synthetic data."""

from __future__ import annotations

import gzip
import struct
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch

from nas_lightning.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    SyntheticDataModule,
)
from nas_lightning.data import fashion_mnist as fashion_mnist_module
from nas_lightning.data.base import GlobalBatchSampler, TensorImageDataset, cutout
from nas_lightning.data.batch_source import BatchSource, seeded_batches
from nas_lightning.data.idx import read_idx

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fashion_mnist = pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.exists(), reason="Debian package dataset-fashion-mnist not installed"
)


# -- IDX reader ----------------------------------------------------------------------------------------------------


def _idx_bytes(dims: tuple[int, ...], payload: bytes, type_code: int = 0x08) -> bytes:
    return bytes([0, 0, type_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


@pytest.mark.parametrize("compress", [False, True])
def test_idx_reader_round_trip(tmp_path: Path, compress: bool) -> None:
    payload = bytes(range(24))  # a 2x3x4 uint8 array 0..23
    raw = _idx_bytes((2, 3, 4), payload)
    path = tmp_path / ("x.idx.gz" if compress else "x.idx")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    out = read_idx(path)
    assert out.dtype == torch.uint8
    assert out.shape == (2, 3, 4)
    assert torch.equal(out, torch.arange(24, dtype=torch.uint8).view(2, 3, 4))


def test_idx_reader_big_endian_int32(tmp_path: Path) -> None:
    path = tmp_path / "labels.idx"
    path.write_bytes(_idx_bytes((3,), struct.pack(">3i", 1, -2, 70000), type_code=0x0C))
    assert read_idx(path).tolist() == [1, -2, 70000]


def test_idx_reader_rejects_bad_magic_and_size(tmp_path: Path) -> None:
    bad_magic = tmp_path / "bad_magic"
    bad_magic.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad_magic)
    short = tmp_path / "short"
    short.write_bytes(_idx_bytes((5,), b"\x00\x01"))
    with pytest.raises(ValueError, match="payload"):
        read_idx(short)


# -- Fashion-MNIST from the Debian files ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion() -> FashionMNISTDataModule:
    dm = FashionMNISTDataModule(val_fraction=0.1, seed=0, batch_size=32)
    dm.setup("fit")
    return dm


@needs_fashion_mnist
def test_fashion_mnist_official_counts(fashion: FashionMNISTDataModule) -> None:
    assert (fashion.num_classes, fashion.in_channels, fashion.image_size) == (10, 1, 28)
    train, val, test = fashion.supernet_train_dataset, fashion.supernet_val_dataset, fashion.test_dataset
    assert len(train) + len(val) == 60_000
    assert len(test) == 10_000
    assert (len(train), len(val)) == (54_000, 6_000)
    # The two splits together are exactly the official train set: 6,000 images of each class.
    labels = torch.cat([train.labels, val.labels])
    assert torch.equal(torch.bincount(labels, minlength=10), torch.full((10,), 6_000))
    assert int(test.labels.min()) == 0 and int(test.labels.max()) == 9
    assert torch.equal(torch.bincount(test.labels, minlength=10), torch.full((10,), 1_000))
    # Normalised with the dataset statistics.
    assert abs(float(train.images.mean())) < 0.05 and abs(float(train.images.std()) - 1.0) < 0.05


@needs_fashion_mnist
def test_fashion_mnist_split_is_a_seeded_partition(fashion: FashionMNISTDataModule) -> None:
    train_idx, val_idx = fashion.split_indices(60_000)
    assert len(val_idx) == 6_000
    assert torch.equal(torch.sort(torch.cat([train_idx, val_idx])).values, torch.arange(60_000))
    raw_labels = read_idx(fashion.files["train_labels"]).long()
    assert torch.equal(fashion.supernet_val_dataset.labels, raw_labels[val_idx])
    # Same seed -> same split in a fresh instance; another seed -> a different split.
    again = FashionMNISTDataModule(val_fraction=0.1, seed=0)
    assert torch.equal(again.split_indices(60_000)[1], val_idx)
    other = FashionMNISTDataModule(val_fraction=0.1, seed=1)
    assert not torch.equal(other.split_indices(60_000)[1], val_idx)
    quarter = FashionMNISTDataModule(val_fraction=0.25, seed=0)
    assert len(quarter.split_indices(60_000)[1]) == 15_000


@needs_fashion_mnist
def test_fashion_mnist_same_seed_same_data(fashion: FashionMNISTDataModule) -> None:
    again = FashionMNISTDataModule(val_fraction=0.1, seed=0, batch_size=32)
    again.setup("fit")
    assert torch.equal(again.supernet_val_dataset.images, fashion.supernet_val_dataset.images)
    x1, y1 = next(iter(fashion.train_dataloader()))
    x2, y2 = next(iter(again.train_dataloader()))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (32, 1, 28, 28)


@needs_fashion_mnist
def test_fashion_mnist_subset_and_resize() -> None:
    dm = FashionMNISTDataModule(train_subset=1_000, val_fraction=0.2, image_size=32, batch_size=64)
    dm.setup("fit")
    dm.setup("validate")  # idempotent
    assert (len(dm.supernet_train_dataset), len(dm.supernet_val_dataset), len(dm.test_dataset)) == (800, 200, 10_000)
    assert dm.image_size == 32
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(dm.train_dataloader()) == 800 // 64  # drop_last
    xt, _ = next(iter(dm.test_dataloader()))
    assert xt.shape[1:] == (1, 32, 32)


@needs_fashion_mnist
def test_fashion_mnist_root_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A torchvision-style root holding the Debian files (symlinked) is found, directly or through the env var.
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in DEBIAN_FASHION_MNIST.parent.iterdir():
        (raw / f.name).symlink_to(f)
    assert FashionMNISTDataModule(root=str(tmp_path)).files["train_images"].parent == raw
    monkeypatch.setenv(fashion_mnist_module.ENV_VAR, str(tmp_path))
    assert FashionMNISTDataModule().files["test_labels"].parent == raw


def test_fashion_mnist_missing_explains_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(fashion_mnist_module.ENV_VAR, raising=False)
    monkeypatch.setattr(fashion_mnist_module, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.chdir(tmp_path)  # so ./data/FashionMNIST/raw does not exist either
    with pytest.raises(FileNotFoundError) as info:
        FashionMNISTDataModule(root="/nonexistent")
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "/nonexistent" in message and "download=True" in message
    with pytest.raises(FileNotFoundError) as info:
        FashionMNISTDataModule()
    assert str(tmp_path / "no-debian") in str(info.value)


# -- CIFAR ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [CIFAR10DataModule, CIFAR100DataModule])
def test_cifar_missing_without_download(cls: type, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="download=True"):
        cls(root=str(tmp_path))


# -- ImageFolder ---------------------------------------------------------------------------------------------------


def _make_image_folder(root: Path) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, per_class in (("train", 6), ("val", 2)):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = torch.randint(0, 256, (20, 24, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_image_folder(tmp_path: Path) -> None:
    _make_image_folder(tmp_path)
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=16, batch_size=4, val_fraction=0.25)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (2, 3, 16)
    dm.setup("fit")
    assert (len(dm.supernet_train_dataset), len(dm.supernet_val_dataset), len(dm.test_dataset)) == (9, 3, 4)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and set(y.tolist()) <= {0, 1}
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape[1:] == (3, 16, 16)
    _, yt = next(iter(dm.test_dataloader()))
    assert sorted(yt.tolist()) == [0, 0, 1, 1]


def test_image_folder_missing(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="val"):
        ImageFolderDataModule(root=str(tmp_path))


# -- Synthetic -----------------------------------------------------------------------------------------------------


def test_synthetic_deterministic() -> None:
    a, b, c = SyntheticDataModule(seed=3), SyntheticDataModule(seed=3), SyntheticDataModule(seed=4)
    for dm in (a, b, c):
        dm.setup("fit")
    assert torch.equal(a.supernet_train_dataset.images, b.supernet_train_dataset.images)
    assert torch.equal(a.test_dataset.labels, b.test_dataset.labels)
    assert not torch.equal(a.test_dataset.images, c.test_dataset.images)
    assert (len(a.supernet_train_dataset), len(a.supernet_val_dataset), len(a.test_dataset)) == (461, 51, 256)
    assert (a.num_classes, a.in_channels, a.image_size) == (10, 1, 16)


def test_synthetic_is_learnable() -> None:
    torch.manual_seed(0)
    dm = SyntheticDataModule(num_classes=10, in_channels=1, image_size=8, batch_size=32, seed=0)
    dm.setup("fit")
    model = torch.nn.Linear(dm.in_channels * dm.image_size**2, dm.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        for x, y in dm.train_dataloader():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x.flatten(1)), y).backward()
            opt.step()
    with torch.no_grad():
        correct = sum(int((model(x.flatten(1)).argmax(1) == y).sum()) for x, y in dm.test_dataloader())
    assert correct / len(dm.test_dataset) > 0.5  # chance is 0.1


def test_augment_keeps_shape_and_draws_from_the_generator() -> None:
    dm = SyntheticDataModule(image_size=16, batch_size=16, augment=True)
    dm.setup("fit")
    x, _ = next(iter(dm.train_dataloader()))  # the loader itself does not augment
    a = dm.augment_batch(x, torch.Generator().manual_seed(0))
    b = dm.augment_batch(x, torch.Generator().manual_seed(0))
    c = dm.augment_batch(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    # A crop (2 px at 16x16) moves pixels and pads with zeros; a flip only reorders them.
    assert a.abs().sum() <= x.abs().sum() + 1e-4


def test_cutout_zeroes_one_clipped_square_per_image() -> None:
    images = torch.ones(64, 2, 10, 10)
    out = cutout(images, 4, torch.Generator().manual_seed(0))
    for img in out:
        zero_rows = torch.nonzero((img[0] == 0).any(1)).flatten()
        zero_cols = torch.nonzero((img[0] == 0).any(0)).flatten()
        # One axis-aligned rectangle, the same on every channel, of side 4 unless clipped by the border.
        assert torch.equal(img[0] == 0, img[1] == 0)
        assert int((img[0] == 0).sum()) == len(zero_rows) * len(zero_cols)
        assert 2 <= len(zero_rows) <= 4 and 2 <= len(zero_cols) <= 4
        assert len(zero_rows) == 4 or zero_rows[0] == 0 or zero_rows[-1] == 9
    sides = [int((img[0] == 0).sum()) for img in out]
    assert sides.count(16) > 10  # most centres are far enough from the border
    with pytest.raises(ValueError, match="augment=True"):
        CIFAR10DataModule(root="no-such-dir", cutout=8)
    with pytest.raises(ValueError, match="cutout=8: ImageFolderDataModule augments per sample"):
        ImageFolderDataModule(root="no-such-dir", cutout=8)


def test_training_batches_are_augmented_and_validation_batches_are_not(tmp_path: Path) -> None:
    class Seen(pl.Callback):
        def __init__(self) -> None:
            self.train: list[torch.Tensor] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.train.append(batch[0].clone())

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(16 * 16, 4)

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self.lin(batch[0].flatten(1)), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    dm = SyntheticDataModule(num_classes=4, image_size=16, batch_size=8, num_train=64, val_fraction=0.25,
                             augment=True)
    seen = Seen()
    pl.Trainer(max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, callbacks=[seen],
               default_root_dir=tmp_path).fit(Tiny(), datamodule=dm)
    raw = list(dm.train_dataloader())[:2]
    assert len(seen.train) == 2
    assert all(not torch.equal(s, r[0]) for s, r in zip(seen.train, raw))  # augmented on the way in
    assert torch.equal(dm.on_after_batch_transfer(raw[0], 0)[0], raw[0][0])  # no trainer is training now


# -- Evaluation batches and the number of processes ---------------------------------------------------------------


def _small(**kw) -> SyntheticDataModule:
    # 25 supernet-val images (eval batches 7, 7, 7, 4), 30 test images (7, 7, 7, 7, 2), 75 supernet-train images.
    return SyntheticDataModule(num_classes=4, image_size=4, num_train=100, num_test=30, batch_size=8,
                               eval_batch_size=7, val_fraction=0.25, **kw)


def _on(dm: SyntheticDataModule, world: int, rank: int) -> SyntheticDataModule:
    """``dm`` set up as rank ``rank`` of ``world`` processes (the loaders read only these two numbers)."""
    dm.trainer = SimpleNamespace(world_size=world, global_rank=rank)  # type: ignore[assignment]
    dm.setup("fit")
    return dm


@pytest.mark.parametrize(("n", "batch", "world"), [(100, 11, 2), (101, 10, 2), (23, 5, 3), (40, 8, 4), (7, 7, 1)])
def test_global_batches_split_over_ranks_hold_every_image_once(n: int, batch: int, world: int) -> None:
    dataset = TensorImageDataset(torch.zeros(n, 1, 1, 1), torch.zeros(n))
    per_rank = [list(GlobalBatchSampler(dataset, batch, world, r)) for r in range(world)]
    whole = [list(range(start, min(start + batch, n))) for start in range(0, n, batch)]
    for r, batches in enumerate(per_rank):
        assert len(GlobalBatchSampler(dataset, batch, world, r)) == len(whole) and all(batches)  # none empty
        assert batches == [g[r::world] for g in whole if g[r::world]]
    # Lightning's limit_val_batches=N takes each rank's first N batches: together, the first N global batches.
    for limit in range(1, len(whole) + 1):
        seen = [i for batches in per_rank for b in batches[:limit] for i in b]
        assert sorted(seen) == list(range(min(limit * batch, n)))  # each image once, nothing padded


@pytest.mark.parametrize("split", ["val", "test"])
def test_eval_loaders_give_each_rank_its_slice_of_the_one_process_batches(split: str) -> None:
    whole = list(getattr(_on(_small(), 1, 0), f"{split}_dataloader")())
    assert [len(y) for _, y in whole] == ([7, 7, 7, 4] if split == "val" else [7, 7, 7, 7, 2])
    for rank in range(3):
        mine = list(getattr(_on(_small(), 3, rank), f"{split}_dataloader")())
        expected = [(x[rank::3], y[rank::3]) for x, y in whole if len(y[rank::3])]  # rank 2 has no test slice of 2
        assert len(mine) == len(expected)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(mine, expected))
    # Unsharded on request, and the seeded (DI-NAS reward) batches are whole batches whatever loader they start from.
    assert [len(y) for _, y in _on(_small(), 3, 1).eval_dataloader(split)] == [len(y) for _, y in whole]
    sharded = _on(_small(), 3, 1).val_dataloader()
    assert [len(y) for _, y in seeded_batches(sharded, 5, torch.Generator().manual_seed(0))] == [7] * 5


def test_eval_batches_too_small_to_split_over_the_processes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"eval_batch_size=2.*3 processes"):
        _on(SyntheticDataModule(num_train=100, batch_size=8, eval_batch_size=2), 3, 0).val_dataloader()


def test_calibration_batches_do_not_depend_on_the_number_of_processes() -> None:
    first = list(_on(_small(), 1, 0).train_dataloader())[:3]  # the first batches one process trains on
    for world, rank in ((1, 0), (2, 0), (2, 1), (3, 2)):
        dm = _on(_small(), world, rank)
        module = SimpleNamespace(_trainer=SimpleNamespace(datamodule=dm, world_size=world, global_rank=rank),
                                 device=torch.device("cpu"))
        calibration = BatchSource(module, calibration_batches=3).calibration()  # type: ignore[arg-type]
        assert len(calibration) == 3
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(calibration, first))
    sharded = next(iter(_on(_small(), 2, 1).train_dataloader()))  # while training is sharded
    assert not torch.equal(sharded[0], first[0][0])


def test_a_mid_epoch_position_from_another_number_of_processes_warns_that_the_data_order_changes() -> None:
    dm = _small()
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.state_dict() == {"epoch": 0, "samples_seen": 0, "num_replicas": 1}  # the position's unit
    loader.load_state_dict({"epoch": 0, "samples_seen": 16, "num_replicas": 2})
    with pytest.warns(UserWarning, match=r"written by 2 process\(es\) on 1: the data order changes"):
        list(loader)
    loader.load_state_dict({"epoch": 0, "samples_seen": 16, "num_replicas": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list(loader)) == 75 // 8 - 2  # the same number of processes: silent, resumed exactly


def test_resuming_a_two_process_checkpoint_on_one_warns(tmp_path: Path) -> None:
    """A mid-epoch checkpoint whose loader position says 2 processes (written by hand: a real 2-process run is
    slow), resumed by ``fit`` on 1."""
    from nas_lightning.methods import SPOS
    from nas_lightning.spaces import ChainSpace

    def run(steps: int, **kw) -> None:
        model = SPOS(ChainSpace(num_layers=2, C=4, num_classes=4, in_channels=1, input_size=4), num_eval_archs=0)
        pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path,
                   callbacks=[pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)]
                   ).fit(model, datamodule=_small(), **kw)

    run(3)  # 9 batches an epoch: step 3 is mid-epoch
    (path,) = tmp_path.glob("*step=3.ckpt")
    checkpoint = torch.load(path, weights_only=False)
    (position,) = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert position == {"epoch": 0, "samples_seen": 24, "num_replicas": 1}
    position["num_replicas"] = 2
    torch.save(checkpoint, path)
    with pytest.warns(UserWarning, match="data order changes"):
        run(5, ckpt_path=str(path))


# -- Argument validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"val_fraction": 1.5}, "1.5"),
        ({"val_fraction": -0.1}, "-0.1"),
        ({"batch_size": 0}, "batch_size"),
        ({"eval_batch_size": -3}, "-3"),
        ({"train_subset": 0}, "train_subset"),
        ({"num_workers": -1}, "num_workers"),
    ],
)
def test_bad_arguments(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        SyntheticDataModule(**kwargs)


def test_train_subset_larger_than_data() -> None:
    with pytest.raises(ValueError, match="train_subset=1000"):
        SyntheticDataModule(num_train=100, train_subset=1000).setup("fit")


def test_batch_larger_than_train_split() -> None:
    with pytest.raises(ValueError, match="batch_size=64"):
        SyntheticDataModule(num_train=50, batch_size=64).setup("fit")
