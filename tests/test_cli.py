"""The command line end to end, on synthetic data: fit, ground truth, validate with ranking and
evolutionary search, stand-alone retraining of the winner, cost export, mixed precision, W&B offline."""

from __future__ import annotations

import csv
import json
import logging
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from scipy import stats

from nas_lightning.cli import main

# No num_classes, in_channels or input_size: the CLI links them from the data module.
SPACE = {"class_path": "nas_lightning.spaces.ChainSpace",
         "init_args": {"num_layers": 2, "ops": ["nor_conv_1x1", "nor_conv_3x3", "skip_connect"], "C": 8}}
DATA = {"class_path": "nas_lightning.data.SyntheticDataModule",
        "init_args": {"num_classes": 4, "in_channels": 1, "image_size": 12, "num_train": 512, "num_test": 128,
                      "noise": 0.5, "batch_size": 32, "val_fraction": 0.25}}
SGD = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05, "momentum": 0.9}}


def write_config(tmp_path: Path, **trainer) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": 1, "default_root_dir": str(tmp_path),
                    "enable_progress_bar": False, "num_sanity_val_steps": 0, "logger": False,
                    "callbacks": [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True,
                                                 "save_top_k": 0}}], **trainer},
        "model": {"class_path": "nas_lightning.methods.SPOS",
                  "init_args": {"space": SPACE, "seed": 0, "optimizer": SGD, "num_eval_archs": 4}},
        "data": DATA,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_fit_ground_truth_rank_search_retrain(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    config = write_config(tmp_path)
    main(["fit", "-c", str(config)])
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    assert ckpt.exists() and "nas_sampler" in torch.load(ckpt, weights_only=False)

    # Ground truth for all 9 archs, 2 seeds; a second call resumes and trains nothing.
    gt_path = tmp_path / "gt.csv"
    gt_args = ["ground-truth", "--space", json.dumps(SPACE), "--data", json.dumps(DATA), "--all_archs", "true",
               "--seeds", "[0, 1]", "--max_epochs", "2", "--optimizer", json.dumps(SGD), "--output", str(gt_path),
               "--accelerator", "cpu", "--progress", "false"]
    main(gt_args)
    runs = (tmp_path / "gt.csv.runs.jsonl").read_text().splitlines()
    assert len(runs) == 18
    out = capsys.readouterr().out
    assert "seed-to-seed Kendall tau" in out and "params as a proxy" in out
    main(gt_args)
    assert len((tmp_path / "gt.csv.runs.jsonl").read_text().splitlines()) == 18
    assert "18 runs done, 0 to go" in capsys.readouterr().out
    # The file says how it was made (a '#' line), and the loader reads past it.
    header, *table = gt_path.read_text().splitlines()
    assert header == "# made by: " + shlex.join(["nas-lightning", *gt_args])
    gt_rows = list(csv.DictReader(table))
    assert len(gt_rows) == 9 and {"arch", "accuracy", "accuracy_seed0", "accuracy_seed1", "params", "flops"} <= set(
        gt_rows[0])

    # validate = ranking against GT + evolutionary search.
    extra = tmp_path / "search.yaml"
    extra.write_text(yaml.safe_dump({"trainer": {"callbacks+": [
        {"class_path": "callbacks.RankingEvaluation",
         "init_args": {"ground_truth": str(gt_path), "output_dir": str(tmp_path / "ranking"), "k": [1, 3]}},
        {"class_path": "callbacks.EvolutionSearch",
         "init_args": {"population": 4, "generations": 2, "topk": 2, "num_mutation": 2, "num_crossover": 2,
                       "output_dir": str(tmp_path / "search"), "progress": False}},
    ]}}))
    main(["validate", "-c", str(config), "-c", str(extra), "--ckpt_path", str(ckpt)])
    with (tmp_path / "ranking" / "ranking_validate_epoch0.csv").open() as f:
        rows = list(csv.DictReader(f))
    summary = json.loads((tmp_path / "ranking" / "ranking_validate_epoch0.json").read_text())
    assert len(rows) == 9 and summary["num_archs"] == 9
    inherited = [float(r["inherited_accuracy"]) for r in rows]
    gt = [float(r["gt_accuracy"]) for r in rows]
    assert len(set(inherited)) > 1, "the supernet ranks every arch alike: nothing to compare"
    assert summary["supernet"]["kendall_tau"] == pytest.approx(stats.kendalltau(inherited, gt).statistic, abs=1e-6)
    assert summary["proxies"]["params"]["kendall_tau"] == pytest.approx(
        stats.kendalltau([float(r["params"]) for r in rows], gt).statistic, abs=1e-6)
    assert "gt_seed_to_seed_tau" in summary and "kendall_tau_equal_cost" in summary["supernet"]

    top = json.loads((tmp_path / "search" / "top_archs.json").read_text())
    assert [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
    assert any(f"best arch: {top[0]['arch']}" in r.getMessage() for r in caplog.records)

    # Retrain the winner stand-alone through the same CLI.
    retrain = tmp_path / "retrain.yaml"
    retrain.write_text(yaml.safe_dump({
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "logger": False, "enable_progress_bar": False,
                    "enable_checkpointing": False, "default_root_dir": str(tmp_path / "retrain")},
        "model": {"class_path": "nas_lightning.methods.StandaloneModule",
                  "init_args": {"space": SPACE, "arch": top[0]["arch"], "optimizer": SGD}},
        "data": DATA,
    }))
    main(["fit", "-c", str(retrain)])


def test_cost_command_prints_official_params(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
    archs_file = tmp_path / "archs.txt"
    archs_file.write_text(arch + "\n")
    out = tmp_path / "cost.csv"
    main(["cost", "--space", "nas_lightning.spaces.NB201Space", "--archs_file", str(archs_file),
          "--output", str(out)])
    assert "0.802426" in capsys.readouterr().out
    with out.open() as f:
        (row,) = list(csv.DictReader(f))
    assert int(row["params"]) == 802_426 and float(row["mflops"]) == pytest.approx(227.9, abs=0.1)


def test_unknown_op_in_arch_file_is_named(tmp_path: Path) -> None:
    archs_file = tmp_path / "archs.txt"
    archs_file.write_text("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|conv_7x7~1|none~2|\n")
    with pytest.raises(ValueError, match="conv_7x7"):
        main(["cost", "--space", "nas_lightning.spaces.NB201Space", "--archs_file", str(archs_file)])


@pytest.mark.slow
def test_bf16_mixed_precision_on_cpu(tmp_path: Path) -> None:
    main(["fit", "-c", str(write_config(tmp_path, precision="bf16-mixed", max_epochs=1))])
    assert (tmp_path / "ckpt" / "last.ckpt").exists()


@pytest.mark.slow
def test_wandb_logger_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = write_config(tmp_path, max_epochs=1)
    logger = Path(__file__).parents[1] / "configs" / "logger" / "wandb.yaml"
    main(["fit", "-c", str(config), "-c", str(logger), "--trainer.logger.init_args.save_dir", str(tmp_path)])
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_the_space_takes_classes_and_image_shape_from_the_data(tmp_path: Path) -> None:
    from nas_lightning.cli import NASLightningCLI

    cli = NASLightningCLI(["-c", str(write_config(tmp_path))], run=False)
    space = cli.model.space
    assert (space.num_classes, space.in_channels, space.input_size) == (4, 1, 12)  # DATA's values, given once
    # The same value written twice is accepted; a contradicting one is refused, naming the key and the data's value.
    NASLightningCLI(["-c", str(write_config(tmp_path)), "--model.init_args.space.init_args.num_classes=4"], run=False)
    with pytest.raises(ValueError, match=r"space.init_args.input_size=32 but the data gives image_size=12"):
        NASLightningCLI(["-c", str(write_config(tmp_path)), "--model.init_args.space.init_args.input_size=32"],
                        run=False)


def test_ground_truth_on_the_supernet_val_split(tmp_path: Path) -> None:
    """``--split val`` measures GT on the supernet-val split (the fit itself runs no validation)."""
    space = {"class_path": "nas_lightning.spaces.ChainSpace",
             "init_args": {"num_layers": 1, "ops": ["nor_conv_1x1", "skip_connect"], "C": 4}}
    out = tmp_path / "gt.csv"
    main(["ground-truth", "--space", json.dumps(space), "--data", json.dumps(DATA), "--all_archs", "true",
          "--seeds", "[0]", "--max_epochs", "1", "--output", str(out), "--accelerator", "cpu", "--progress", "false",
          "--split", "val"])
    rows = list(csv.DictReader(line for line in out.read_text().splitlines() if not line.startswith("#")))
    assert len(rows) == 2 and all(0.0 <= float(r["accuracy"]) <= 100.0 for r in rows)
