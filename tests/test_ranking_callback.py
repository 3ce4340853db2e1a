"""RankingEvaluation during fit: when it runs, what it writes, and how it refuses bad ground truth; and the
library it hands off to (``RankingEvaluator``, ``read_arch_file``) without a Trainer."""

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
from nas_lightning.metrics.ranking_report import (
    RankingEvaluator,
    evaluation_due,
    format_report,
    logged_metrics,
    select_archs,
)
from nas_lightning.spaces import ChainSpace
from nas_lightning.utils.arch_file import read_arch_file


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


# --- the library, without a Trainer ---------------------------------------------------------------------


def test_evaluator_reports_against_scipy_and_writes_its_files(tmp_path: Path) -> None:
    sp = space()
    archs = list(sp.enumerate())
    gt_path = tmp_path / "gt.json"
    seeds = {str(a): [50.0 + (7 * i) % 9, 50.0 + (4 * i) % 9] for i, a in enumerate(archs)}
    gt_path.write_text(json.dumps(seeds))
    evaluator = RankingEvaluator(str(gt_path), max_archs=6, seed=1, k=(1, 3))
    chosen = evaluator.prepare(sp)
    assert len(chosen) == 6 and chosen == [a for a in archs if a in chosen], "a subset, in the GT's order"
    assert evaluator.prepare(sp) is chosen, "prepared once"
    assert chosen == select_archs(evaluator.gt, archs, 6, 1, "gt") != select_archs(evaluator.gt, archs, 6, 2, "gt")

    inherited = [float(v) for v in torch.randperm(6, generator=torch.Generator().manual_seed(0))]
    summary, rows = evaluator.report(sp, inherited, epoch=4, stage="validate")
    gt = [sum(seeds[str(a)]) / 2 for a in chosen]
    assert summary["supernet"]["kendall_tau"] == pytest.approx(stats.kendalltau(inherited, gt).statistic, abs=1e-6)
    assert summary["supernet"]["spearman"] == pytest.approx(stats.spearmanr(inherited, gt).statistic, abs=1e-6)
    params = [sp.params(a) for a in chosen]
    assert summary["proxies"]["params"]["kendall_tau"] == pytest.approx(stats.kendalltau(params, gt).statistic,
                                                                        abs=1e-6)
    per_seed = [seeds[str(a)] for a in chosen]
    assert summary["gt_seed_to_seed_tau"] == pytest.approx(stats.kendalltau(*zip(*per_seed)).statistic, abs=1e-6)
    assert (summary["epoch"], summary["stage"], summary["num_archs"]) == (4, "validate", 6)
    assert evaluator.last_summary is summary
    assert [r["inherited_accuracy"] for r in rows] == sorted(inherited, reverse=True)
    assert {r["arch"]: r["gt_accuracy"] for r in rows} == {str(a): g for a, g in zip(chosen, gt)}

    logged = logged_metrics(summary)
    assert logged["rank/kendall_tau"] == summary["supernet"]["kendall_tau"]
    assert logged["rank/flops_kendall_tau"] == summary["proxies"]["flops"]["kendall_tau"]
    assert logged["rank/gt_seed_to_seed_tau"] == summary["gt_seed_to_seed_tau"]
    assert "ranking over 6 archs" in format_report(summary)

    csv_path, json_path = evaluator.write(tmp_path / "out", "validate_epoch4", summary, rows)
    assert [r["arch"] for r in csv.DictReader(csv_path.open())] == [r["arch"] for r in rows]
    assert json.loads(json_path.read_text())["supernet"]["kendall_tau"] == pytest.approx(
        summary["supernet"]["kendall_tau"])
    with pytest.raises(ValueError, match="one accuracy per arch"):
        evaluator.report(sp, inherited[:-1])
    with pytest.raises(ValueError, match="max_archs"):
        RankingEvaluator(str(gt_path), max_archs=1)


def test_evaluation_due_during_fit_every_n_and_at_the_last_epoch() -> None:
    assert [evaluation_due(True, e, 5, 2) for e in range(5)] == [False, True, False, True, True]
    assert [evaluation_due(True, e, 3, 0) for e in range(3)] == [False, False, True]
    assert not evaluation_due(True, 7, -1, 0) and not evaluation_due(True, 7, None, 3)
    assert evaluation_due(False, 0, 5, 0), "validate always ranks"


def test_read_arch_file_reads_lines_csv_and_json(tmp_path: Path) -> None:
    sp = space()
    archs = list(sp.enumerate())[:3]
    text = tmp_path / "archs.txt"
    text.write_text("# chosen archs\n" + "\n".join(str(a) for a in archs) + "\n\n")
    table = tmp_path / "archs.csv"
    table.write_text("arch,score\n" + "".join(f"{a},{i}\n" for i, a in enumerate(archs)))
    top = tmp_path / "top.json"
    top.write_text(json.dumps([{"arch": str(a), "score": 1.0} for a in archs]))
    listed = tmp_path / "pool.json"
    listed.write_text(json.dumps({"archs": [str(a) for a in archs]}))
    for path in (text, table, top, listed):
        assert read_arch_file(path, sp) == archs, path.name
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{archs[0]}\n|nor_conv_1x1|conv_9x9|\n")
    with pytest.raises(ValueError, match=r"bad\.txt, entry 1: .*conv_9x9"):
        read_arch_file(bad, sp)
    with pytest.raises(FileNotFoundError, match="missing"):
        read_arch_file(tmp_path / "missing.txt", sp)
