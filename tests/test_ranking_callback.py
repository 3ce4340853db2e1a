"""RankingEvaluation during fit: when it runs, what it writes, and how it refuses bad ground truth."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from scipy import stats

from callbacks import RankingEvaluation
from nas_lightning.data import SyntheticDataModule
from nas_lightning.methods import SPOS
from nas_lightning.spaces import ChainSpace


def space() -> ChainSpace:
    return ChainSpace(num_layers=2, ops=("nor_conv_1x1", "nor_conv_3x3", "skip_connect"), C=8, num_classes=4,
                      in_channels=1, input_size=12)


def fit(tmp_path: Path, callback: pl.Callback, epochs: int = 2) -> pl.Trainer:
    model = SPOS(space(), optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), num_eval_archs=2)
    data = SyntheticDataModule(num_classes=4, in_channels=1, image_size=12, num_train=512, num_test=32,
                               batch_size=32, val_fraction=0.25, noise=0.5)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         default_root_dir=tmp_path, callbacks=[callback])
    trainer.fit(model, datamodule=data)
    return trainer


def test_ranks_at_every_epoch_and_writes_consistent_files(tmp_path: Path) -> None:
    archs = list(space().enumerate())
    gt_path = tmp_path / "gt.json"
    # Any GT will do here: the test checks the bookkeeping, not the supernet's quality.
    gt_path.write_text(json.dumps({str(a): [50.0 + i, 51.0 + i * 0.5] for i, a in enumerate(archs)}))
    callback = RankingEvaluation(str(gt_path), every_n_epochs=1, output_dir=str(tmp_path / "rank"), k=(1, 3))
    trainer = fit(tmp_path, callback)
    for epoch in (0, 1):
        rows = list(csv.DictReader((tmp_path / "rank" / f"ranking_fit_epoch{epoch}.csv").open()))
        assert len(rows) == 9
        assert [float(r["inherited_accuracy"]) for r in rows] == sorted(
            (float(r["inherited_accuracy"]) for r in rows), reverse=True)
    summary = callback.last_summary
    assert summary is not None and summary["epoch"] == 1
    gt = [float(r["gt_accuracy"]) for r in rows]
    inherited = [float(r["inherited_accuracy"]) for r in rows]
    assert len(set(inherited)) > 1, "the supernet ranks every arch alike: nothing to compare"
    assert summary["supernet"]["kendall_tau"] == pytest.approx(stats.kendalltau(inherited, gt).statistic, abs=1e-6)
    # Per-seed GT gives the ceiling: seeds 0 and 1 rank the archs identically here.
    assert summary["gt_seed_to_seed_tau"] == pytest.approx(1.0)
    assert trainer.logged_metrics["rank/kendall_tau"] == pytest.approx(summary["supernet"]["kendall_tau"], abs=1e-6)


def test_ground_truth_that_covers_no_arch_is_a_clear_error(tmp_path: Path) -> None:
    gt_path = tmp_path / "gt.csv"
    gt_path.write_text("arch,accuracy\n")
    with pytest.raises(ValueError, match=r"gt\.csv"):
        fit(tmp_path, RankingEvaluation(str(gt_path)), epochs=1)


def test_ground_truth_with_unknown_op_names_it(tmp_path: Path) -> None:
    gt_path = tmp_path / "gt.csv"
    gt_path.write_text("arch,accuracy\n|nor_conv_1x1|sep_conv_9x9|,50.0\n|nor_conv_1x1|skip_connect|,60.0\n")
    with pytest.raises(ValueError, match="sep_conv_9x9"):
        fit(tmp_path, RankingEvaluation(str(gt_path)), epochs=1)


def test_archs_file_restricts_the_ranking_and_must_be_covered(tmp_path: Path) -> None:
    archs = list(space().enumerate())
    gt_path = tmp_path / "gt.csv"
    gt_path.write_text("arch,accuracy\n" + "".join(f"{a},{50 + i}\n" for i, a in enumerate(archs[:6])))
    subset = tmp_path / "subset.txt"
    subset.write_text("\n".join(str(a) for a in archs[1:4]) + "\n")
    callback = RankingEvaluation(str(gt_path), archs_file=str(subset), output_dir=str(tmp_path / "rank"))
    fit(tmp_path, callback, epochs=1)
    assert callback.archs == archs[1:4]
    uncovered = tmp_path / "uncovered.txt"
    uncovered.write_text("\n".join(str(a) for a in archs[6:]) + "\n")
    with pytest.raises(ValueError, match="covers none"):
        fit(tmp_path, RankingEvaluation(str(gt_path), archs_file=str(uncovered)), epochs=1)
