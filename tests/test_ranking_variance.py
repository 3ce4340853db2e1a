"""Ranking variance across runs and epochs (arXiv:2001.01431, finding (1)), on hand-made CSVs of the formats the
callbacks write, checked against scipy.stats."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import kendalltau, rankdata

from nas_lightning.commands.ranking_variance import ranking_variance_command
from nas_lightning.metrics.ranking_variance import load_run, rank_spread, rank_table, ranking_variance, tau_matrix

ARCHS = [f"|op{i}|" for i in range(8)]


def write_history(path: Path, table: np.ndarray, archs: list[str] = ARCHS, gt: list[float] | None = None) -> Path:
    """A ``disturbance_history.csv``: arch, [gt_accuracy], epoch_0, epoch_1, ..."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", *(["gt_accuracy"] if gt is not None else []),
                    *(f"epoch_{e}" for e in range(table.shape[1]))])
        for i, arch in enumerate(archs):
            w.writerow([arch, *([gt[i]] if gt is not None else []), *table[i].tolist()])
    return path


def write_ranking(path: Path, acc: np.ndarray, archs: list[str] = ARCHS) -> Path:
    """A ``ranking_<stage>_epoch<n>.csv``: arch, gt_accuracy, inherited_accuracy, params, flops (best first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arch", "gt_accuracy", "inherited_accuracy", "params", "flops"])
        for i in np.argsort(-acc, kind="stable"):
            w.writerow([archs[i], 90.0 - i, float(acc[i]), 1000 + i, 2000 + i])
    return path


@pytest.fixture
def runs_table() -> np.ndarray:
    """(archs, runs) accuracies of 4 seeds at their last epoch, with a tie in run 2."""
    rng = np.random.default_rng(0)
    base = np.linspace(60, 80, len(ARCHS))
    table = base[:, None] + rng.normal(0, 4, (len(ARCHS), 4))
    table[3, 2] = table[5, 2]
    return np.round(table, 2)


def test_ranks_and_taus_match_scipy(runs_table: np.ndarray) -> None:
    ranks = rank_table(runs_table).numpy()
    for j in range(runs_table.shape[1]):
        np.testing.assert_allclose(ranks[:, j], rankdata(-runs_table[:, j]))  # average ranks, 1 = best
    np.testing.assert_allclose(rank_spread(runs_table).numpy(), np.std(ranks, axis=1, ddof=1))
    taus = tau_matrix(runs_table).numpy()
    for a, b in itertools.combinations(range(runs_table.shape[1]), 2):
        assert taus[a, b] == pytest.approx(kendalltau(runs_table[:, a], runs_table[:, b]).statistic, abs=1e-6)
        assert taus[b, a] == taus[a, b]
    np.testing.assert_allclose(np.diag(taus), 1.0)


def test_across_runs_from_histories(tmp_path: Path, runs_table: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    gt = list(rng.uniform(70, 90, len(ARCHS)))
    paths = []
    for j in range(runs_table.shape[1]):
        epochs = np.concatenate([runs_table[:, [j]] + rng.normal(0, 5, (len(ARCHS), 2)), runs_table[:, [j]]], 1)
        order = rng.permutation(len(ARCHS))  # a run may list the archs in another order
        paths.append(write_history(tmp_path / f"seed{j}" / "disturbance_history.csv", epochs[order],
                                   [ARCHS[i] for i in order], gt=[gt[i] for i in order]))
    result = ranking_variance([load_run(p) for p in paths], k=3)
    r = result.summary["across_runs"]
    assert list(r["gt_tau"].values()) == pytest.approx(
        [kendalltau(runs_table[:, j], gt).statistic for j in range(4)], abs=1e-6)
    pairs = [kendalltau(runs_table[:, a], runs_table[:, b]).statistic
             for a, b in itertools.combinations(range(4), 2)]
    assert r["kendall_tau_mean"] == pytest.approx(np.mean(pairs), abs=1e-6)
    assert r["kendall_tau_std"] == pytest.approx(np.std(pairs, ddof=1), abs=1e-6)
    assert r["kendall_tau_min"] == pytest.approx(min(pairs), abs=1e-6)
    tops = [ARCHS[int(np.argmax(runs_table[:, j]))] for j in range(4)]
    assert r["top1_archs"] == tops and r["distinct_top1"] == len(set(tops))
    assert r["top1_differs_fraction"] == pytest.approx(
        np.mean([tops[a] != tops[b] for a, b in itertools.combinations(range(4), 2)]))
    top3 = [set(np.argsort(-runs_table[:, j], kind="stable")[:3]) for j in range(4)]
    assert r["topk_differs_fraction"] == pytest.approx(
        np.mean([len(top3[b] - top3[a]) / 3 for a, b in itertools.combinations(range(4), 2)]))
    ranks = np.stack([rankdata(-runs_table[:, j]) for j in range(4)], 1)
    assert r["rank_std_mean"] == pytest.approx(np.std(ranks, axis=1, ddof=1).mean())
    by_arch = {row["arch"]: row for row in result.arch_rows}
    for i, arch in enumerate(ARCHS):
        assert by_arch[arch]["rank_std_runs"] == pytest.approx(np.std(ranks[i], ddof=1))
        assert by_arch[arch]["best_rank_runs"] == ranks[i].min()


def test_across_epochs_of_one_run(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    table = np.round(rng.uniform(50, 90, (len(ARCHS), 5)), 1)
    table[:, 3] = table[:, 2]  # an epoch that changes nothing
    gt = list(np.linspace(70, 90, len(ARCHS)))
    path = write_history(tmp_path / "disturbance_history.csv", table, gt=gt)
    result = ranking_variance([load_run(path)], k=2, from_epoch=1)
    assert "across_runs" not in result.summary
    run = result.summary["across_epochs"]["per_run"][str(path)]
    taus = [kendalltau(table[:, e - 1], table[:, e]).statistic for e in range(2, 5)]
    assert run["consecutive_tau_mean"] == pytest.approx(np.mean(taus), abs=1e-6)
    assert run["consecutive_tau_std"] == pytest.approx(np.std(taus, ddof=1), abs=1e-6)
    rows = [r for r in result.epoch_rows if r["epoch"] >= 2]
    assert [r["epoch"] for r in result.epoch_rows] == [1, 2, 3, 4]
    tops = [int(np.argmax(table[:, e])) for e in range(1, 5)]
    assert [r["top1_arch"] for r in result.epoch_rows] == [ARCHS[t] for t in tops]
    assert [r["top1_changed"] for r in rows] == [float(tops[i] != tops[i - 1]) for i in range(1, 4)]
    assert rows[1]["top1_changed"] == 0.0 and rows[1]["topk_changed"] == 0.0 and rows[1]["ktau_vs_previous"] == 1.0
    top2 = [set(np.argsort(-table[:, e], kind="stable")[:2]) for e in range(1, 5)]
    assert [r["topk_changed"] for r in rows] == [len(top2[i] - top2[i - 1]) for i in range(1, 4)]
    assert run["performance_change_mean"] == pytest.approx(
        np.mean([np.abs(table[:, e] - table[:, e - 1]).mean() for e in range(2, 5)]))
    ranks = np.stack([rankdata(-table[:, e]) for e in range(1, 5)], 1)
    assert run["rank_std_mean"] == pytest.approx(np.std(ranks, axis=1, ddof=1).mean())
    assert result.arch_rows[0]["gt_accuracy"] == pytest.approx(gt[0])


def test_ranking_csvs_of_a_run_directory_are_its_epochs(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    table = rng.uniform(50, 90, (len(ARCHS), 3))
    for e in range(3):
        write_ranking(tmp_path / "run" / "ranking" / f"ranking_fit_epoch{e * 2}.csv", table[:, e])
    write_ranking(tmp_path / "run" / "ranking" / "ranking_validate_epoch4.csv", table[:, 0])  # another stage
    run = load_run(tmp_path / "run")
    assert run.epochs == [0, 2, 4] and sorted(run.archs) == sorted(ARCHS)
    np.testing.assert_allclose(run.restrict(ARCHS).numpy(), table)
    assert run.gt is not None and run.gt[ARCHS[1]] == 89.0


def test_command_writes_summary_csvs_and_plots(tmp_path: Path, runs_table: np.ndarray) -> None:
    for j in range(3):
        write_history(tmp_path / f"s{j}" / "disturbance_history.csv",
                      np.stack([runs_table[:, j] - 1, runs_table[:, j]], 1))
    out = tmp_path / "out"
    ranking_variance_command([f"seeds={tmp_path}/s*"], output_dir=str(out), top_k=3)
    summary = json.loads((out / "ranking_variance.json").read_text())
    pairs = [kendalltau(runs_table[:, a], runs_table[:, b]).statistic for a, b in itertools.combinations(range(3), 2)]
    assert summary["across_runs"]["kendall_tau_mean"] == pytest.approx(np.mean(pairs))
    assert summary["num_runs"] == 3 and summary["num_archs"] == len(ARCHS)
    with (out / "ranking_variance_tau.csv").open() as f:
        tau_rows = list(csv.DictReader(f))
    assert len(tau_rows) == 3
    for name in ("rank_spread.png", "tau_matrix.png", "topk_changes.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert len((out / "ranking_variance_epochs.csv").read_text().splitlines()) == 1 + 3 * 2


def test_runs_without_common_archs_are_refused_naming_the_file(tmp_path: Path) -> None:
    a = write_history(tmp_path / "a" / "disturbance_history.csv", np.ones((4, 2)) * np.arange(4)[:, None], ARCHS[:4])
    b = write_history(tmp_path / "b" / "disturbance_history.csv", np.ones((4, 2)) * np.arange(4)[:, None], ARCHS[4:])
    with pytest.raises(ValueError, match=rf"{b}.* shares 0 arch"):
        ranking_variance([load_run(a), load_run(b)])
    with pytest.raises(ValueError, match=str(b)):
        ranking_variance_command([str(a), str(b)], output_dir=str(tmp_path / "out"))


def test_a_single_run_with_a_single_epoch_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = write_ranking(tmp_path / "ranking_fit_epoch3.csv", np.arange(8.0))
    with pytest.raises(ValueError, match=rf"{path}.*single run with a single epoch"):
        ranking_variance_command([str(path)], output_dir=str(tmp_path / "out"))
    history = write_history(tmp_path / "h" / "disturbance_history.csv", np.random.default_rng(0).random((8, 3)))
    with pytest.raises(ValueError, match=rf"{history}.*single run"):
        ranking_variance([load_run(history)], from_epoch=2)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_run(tmp_path / "missing")


def test_wandb_offline_logging(tmp_path: Path, runs_table: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    paths = [write_history(tmp_path / f"s{j}" / "disturbance_history.csv", runs_table[:, [j]]) for j in range(2)]
    out = tmp_path / "out"
    ranking_variance_command([str(p) for p in paths], output_dir=str(out), wandb_project="test",
                             wandb_mode="offline")
    assert list((out / "wandb").glob("offline-run-*")), "no offline W&B run written"
