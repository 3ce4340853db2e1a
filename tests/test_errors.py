"""A user's mistake gets one clear message that names the file, setting or value and what to do: a truncated
IDX download, a data module that cannot find its data (not buried in jsonargparse's dump of every
alternative), a multi-megabyte bad arch string (cut to its start and length), and validation data too small
for what the run needs (refused at ``setup``, not after the warm-up epochs or with a silent empty run)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch
import yaml

from nas_lightning.cli import NASLightningCLI
from nas_lightning.data.idx import read_idx
from nas_lightning.spaces import ArchFormatError, SearchSpace

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "configs"
HUGE = 3_000_000


def test_a_truncated_gzip_idx_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    data = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 100]) + bytes(100))
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated or corrupt gzip file.*download it again") as error:
        read_idx(path)
    assert str(path) in str(error.value)


def test_fashion_mnist_names_its_truncated_download(tmp_path: Path) -> None:
    from nas_lightning.data import FashionMNISTDataModule

    def idx(shape: tuple[int, ...]) -> bytes:
        header = bytes([0, 0, 8, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)
        return header + bytes(int(torch.tensor(shape).prod()))

    for name, shape in (("train-images-idx3-ubyte", (20, 28, 28)), ("train-labels-idx1-ubyte", (20,)),
                        ("t10k-images-idx3-ubyte", (4, 28, 28)), ("t10k-labels-idx1-ubyte", (4,))):
        data = gzip.compress(idx(shape))
        (tmp_path / f"{name}.gz").write_bytes(data[:-20] if name == "train-images-idx3-ubyte" else data)
    dm = FashionMNISTDataModule(root=str(tmp_path), batch_size=4)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz: truncated or corrupt gzip file"):
        dm.setup("fit")


def test_a_missing_data_set_is_the_error_the_user_sees(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        NASLightningCLI(["-c", str(CONFIGS / "spos" / "chain_fashion_mnist.yaml"), "--trainer.logger=false",
                         "--data.init_args.root", str(tmp_path / "nonexistent")], run=False)
    message = str(error.value)
    assert message.startswith("Fashion-MNIST not found") and "apt-get install dataset-fashion-mnist" in message
    assert "Union" not in message and "Given value" not in message


def _junk_archs(space: SearchSpace) -> list[str]:
    """Huge strings that break each space's grammar, and one with a huge op in a valid structure."""
    valid = space.encode(space.sample_many(1, torch.Generator().manual_seed(0))[0])
    first = space.choice_names(space.decode(valid))[0]
    return ["x" * HUGE, valid + "+" + "q" * HUGE, valid.replace(first, "y" * HUGE, 1)]


def test_a_huge_bad_arch_string_is_cut_to_its_start_and_length(small_space: SearchSpace) -> None:
    for text in _junk_archs(small_space):
        with pytest.raises(ArchFormatError) as error:
            small_space.decode(text)
        message = str(error.value)
        assert len(message) < 2000 and "characters)" in message, message[:300]


def test_a_bad_arch_in_the_config_is_the_error_the_user_sees(tmp_path: Path) -> None:
    with pytest.raises(ArchFormatError) as error:
        NASLightningCLI(["-c", str(CONFIGS / "spos" / "chain_synthetic.yaml"), "--trainer.logger=false",
                         "--model.init_args.eval_archs", yaml.safe_dump(["|" + "z" * HUGE + "|"])], run=False)
    message = str(error.value)
    assert len(message) < 2000 and f"{HUGE + 2:,} characters" in message and "Union" not in message


def test_validate_without_validation_data_fails(tmp_path: Path) -> None:
    base = ["validate", "-c", str(CONFIGS / "spos" / "chain_synthetic.yaml"), "--trainer.logger=false",
            "--trainer.default_root_dir", str(tmp_path)]
    with pytest.raises(ValueError, match=r"no supernet-val data.*raise data.init_args.val_fraction"):
        NASLightningCLI([*base, "--data.init_args.val_fraction", "0"])
    with pytest.raises(ValueError, match=r"trainer.limit_val_batches=0"):
        NASLightningCLI([*base, "--trainer.limit_val_batches", "0"])


@pytest.mark.parametrize("config", ["pcnas/chain_synthetic.yaml", "dinas/nb201_synthetic.yaml"])
def test_search_methods_check_their_validation_data_at_setup(config: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the configs write under runs/
    with pytest.raises(ValueError, match=r"full supernet-val batches of 64 images.*raise data.init_args.val_fraction"):
        NASLightningCLI(["fit", "-c", str(CONFIGS / config), "--trainer.logger=false", "--trainer.max_epochs", "2",
                         "--data.init_args.num_train", "640", "--data.init_args.val_fraction", "0.05",
                         "--data.init_args.eval_batch_size", "64"])
    assert not list(tmp_path.rglob("*.ckpt")), "the run trained before failing"
