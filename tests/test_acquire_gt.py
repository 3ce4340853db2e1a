"""``nas-lightning acquire-gt`` (WPNAS, section 4 step 2): fine-tuning from inherited weights, resuming after a
kill to the file an uninterrupted run writes, and refusing files and checkpoints of another space."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

import nas_lightning.commands.acquire_gt as acquire
from nas_lightning.cli import main
from nas_lightning.data import SyntheticDataModule
from nas_lightning.methods import SPOS, StandaloneModule
from nas_lightning.metrics.ground_truth import load_ground_truth
from nas_lightning.spaces import ChainSpace


def make_space(num_layers: int = 2) -> ChainSpace:
    return ChainSpace(num_layers=num_layers, C=4, num_classes=4, in_channels=1, input_size=8)


def make_data() -> SyntheticDataModule:
    return SyntheticDataModule(num_classes=4, image_size=8, num_train=96, num_test=32, batch_size=32,
                               eval_batch_size=32, val_fraction=0.25, seed=0)


def save_supernet(path: Path, space: ChainSpace, seed: int = 0) -> Path:
    """A SPOS checkpoint as `fit` writes its weights (``state_dict`` with the ``supernet.`` prefix)."""
    torch.manual_seed(seed)
    torch.save({"state_dict": SPOS(space).state_dict()}, path)
    return path


def run(tmp: Path, ckpt: Path, **kw: object) -> dict:
    out = tmp / "gt.json"
    settings = {"num_archs": 4, "max_epochs": 1, "split": "val", "accelerator": "cpu", "progress": False,
                "optimizer": lambda p: torch.optim.SGD(p, lr=0.05)} | kw
    acquire.acquire_gt(make_space(), make_data(), str(ckpt), output=str(out), **settings)
    return json.loads(out.read_text())


def test_fine_tuning_starts_from_the_inherited_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    space = make_space()
    ckpt = save_supernet(tmp_path / "s.ckpt", space)
    supernet = acquire.load_supernet(str(ckpt), space)
    arch = acquire.sample_unique(space, 1, 0)[0]
    seen = {}
    real_fit = acquire.pl.Trainer.fit

    def spy(trainer: pl.Trainer, model: StandaloneModule, datamodule: SyntheticDataModule) -> None:
        seen.update({k: v.clone() for k, v in model.network.state_dict().items()})  # weights as fine-tuning starts
        real_fit(trainer, model, datamodule=datamodule)

    monkeypatch.setattr(acquire.pl.Trainer, "fit", spy)
    acc = acquire._fine_tune(space, supernet, make_data(), arch, 0, 1, 1.0, lambda p: torch.optim.SGD(p, lr=0.05),
                             None, "val", "cpu", "32-true")
    inherited = supernet.export(arch).state_dict()
    assert seen.keys() == inherited.keys() and all(torch.equal(seen[k], inherited[k]) for k in seen)
    assert 0.0 <= acc <= 100.0


def test_sample_is_uniform_distinct_and_seeded() -> None:
    space = make_space()
    a, b = acquire.sample_unique(space, 16, 3), acquire.sample_unique(space, 16, 3)
    assert a == b and len(set(a)) == 16 == space.num_archs  # all 16 archs of the space, none twice
    assert acquire.sample_unique(space, 5, 4) != acquire.sample_unique(space, 5, 5)
    with pytest.raises(ValueError, match="num_archs=17 exceeds the 16 archs"):
        acquire.sample_unique(space, 17, 0)


def test_resume_after_a_kill_writes_the_uninterrupted_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = save_supernet(tmp_path / "s.ckpt", make_space())
    (tmp_path / "full").mkdir()
    full = run(tmp_path / "full", ckpt)

    real, calls = acquire._fine_tune, []

    def killed_after_two(*args: object) -> float:
        if len(calls) == 2:
            raise KeyboardInterrupt  # the job is killed while fine-tuning the third arch
        calls.append(args[3])
        return real(*args)

    (tmp_path / "resumed").mkdir()
    monkeypatch.setattr(acquire, "_fine_tune", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed", ckpt)
    assert len((tmp_path / "resumed" / "gt.json.runs.jsonl").read_text().splitlines()) == 2
    calls.clear()
    monkeypatch.setattr(acquire, "_fine_tune", lambda *args: calls.append(args[3]) or real(*args))
    resumed = run(tmp_path / "resumed", ckpt)
    assert len(calls) == 2  # only the two missing archs were fine-tuned again
    assert resumed == full
    assert (tmp_path / "resumed" / "gt.json").read_text() == (tmp_path / "full" / "gt.json").read_text()
    gt = load_ground_truth(tmp_path / "full" / "gt.json", make_space())  # the format every GT reader takes
    assert sorted(map(str, gt.archs)) == sorted(e["arch"] for e in full["archs"])
    assert "fine-tuned 1 epochs" in full["source"]


def test_a_runs_file_of_another_space_or_checkpoint_is_refused(tmp_path: Path) -> None:
    ckpt = save_supernet(tmp_path / "s.ckpt", make_space())
    run(tmp_path, ckpt, num_archs=1)
    other = save_supernet(tmp_path / "other.ckpt", make_space(), seed=1)
    with pytest.raises(ValueError, match=r"gt\.json\.runs\.jsonl line 1 was made with supernet_sha256="):
        run(tmp_path, other, num_archs=1)
    runs = tmp_path / "gt.json.runs.jsonl"
    record = json.loads(runs.read_text())
    runs.write_text(json.dumps(record | {"space": "nas_lightning.spaces.nb201.NB201Space"}) + "\n")
    with pytest.raises(ValueError, match=r"runs\.jsonl line 1 was made with space=.*NB201Space.*another acquisition"):
        run(tmp_path, ckpt, num_archs=1)
    runs.write_text(json.dumps(record | {"arch": "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|"}) + "\n")
    with pytest.raises(ValueError, match=r"runs\.jsonl line 1: arch .* is not an arch of ChainSpace"):
        run(tmp_path, ckpt, num_archs=1)


def test_a_checkpoint_of_another_space_is_refused(tmp_path: Path) -> None:
    ckpt = save_supernet(tmp_path / "three.ckpt", make_space(num_layers=3))
    with pytest.raises(ValueError, match=r"three\.ckpt does not fit ChainSpace"):
        run(tmp_path, ckpt)
    torch.save({"state_dict": {"network.w": torch.zeros(1)}}, tmp_path / "alone.ckpt")
    with pytest.raises(ValueError, match=r"alone\.ckpt holds no supernet weights"):
        run(tmp_path, tmp_path / "alone.ckpt")


def test_the_command_writes_its_command_line_as_the_header(tmp_path: Path) -> None:
    ckpt = save_supernet(tmp_path / "s.ckpt", make_space())
    out = tmp_path / "gt.json"
    argv = ["acquire-gt", "--space", "nas_lightning.spaces.ChainSpace", "--space.num_layers", "2", "--space.C", "4",
            "--data", "nas_lightning.data.SyntheticDataModule", "--data.num_classes", "4", "--data.image_size", "8",
            "--data.num_train", "96", "--data.num_test", "32", "--data.batch_size", "32", "--data.val_fraction",
            "0.25", "--checkpoint", str(ckpt), "--num_archs", "1", "--max_epochs", "1", "--split", "val",
            "--accelerator", "cpu", "--progress", "false", "--output", str(out)]
    main(argv)
    source = json.loads(out.read_text())["source"]
    assert source.startswith("nas-lightning acquire-gt --space nas_lightning.spaces.ChainSpace") and str(ckpt) in source
