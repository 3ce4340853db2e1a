"""Ranking metrics against scipy and hand-worked numbers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from nas_lightning.metrics import cost_proxy_metrics, ranking_metrics, seed_to_seed_tau


@pytest.mark.parametrize("n", [2, 3, 7, 40, 300])
@pytest.mark.parametrize("seed", [0, 1])
def test_correlations_match_scipy_with_ties(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    # few distinct values -> many ties in both vectors
    pred = rng.integers(0, max(2, n // 3), n).astype(float)
    target = rng.integers(0, max(2, n // 4), n).astype(float) + 0.1 * pred
    if np.all(pred == pred[0]) or np.all(target == target[0]):
        pred[0], target[-1] = pred[0] + 1.0, target[-1] - 1.0
    m = ranking_metrics(torch.tensor(pred), target.tolist())
    assert m["kendall_tau"] == pytest.approx(stats.kendalltau(pred, target).statistic, abs=1e-6)
    assert m["spearman"] == pytest.approx(stats.spearmanr(pred, target).statistic, abs=1e-5)
    assert m["pearson"] == pytest.approx(stats.pearsonr(pred, target).statistic, abs=1e-9)


def test_continuous_scores_match_scipy() -> None:
    rng = np.random.default_rng(3)
    target = rng.normal(size=500)
    pred = target + rng.normal(scale=2.0, size=500)
    m = ranking_metrics(pred.tolist(), target.tolist())
    assert m["kendall_tau"] == pytest.approx(stats.kendalltau(pred, target).statistic, abs=1e-6)
    assert m["spearman"] == pytest.approx(stats.spearmanr(pred, target).statistic, abs=1e-5)
    assert 0.1 < m["kendall_tau"] < 0.6  # sanity: a noisy but positive ranking


def test_perfect_and_reversed() -> None:
    x = [0.1, 0.5, 0.3, 0.9, 0.7]
    up = ranking_metrics(x, x, k=(1, 2, 5))
    assert up["kendall_tau"] == pytest.approx(1.0) and up["spearman"] == pytest.approx(1.0, abs=1e-5)
    assert up["precision@1"] == up["precision@2"] == up["precision@5"] == 1.0
    assert up["top1_gt_rank"] == 1.0 and up["mse_minmax"] == 0.0
    down = ranking_metrics([-v for v in x], x, k=(1, 2))
    assert down["kendall_tau"] == pytest.approx(-1.0) and down["precision@1"] == 0.0
    assert down["top1_gt_rank"] == 5.0 and down["top1_gt_percentile"] == 1.0


def test_precision_and_top1_hand_worked() -> None:
    # target order (best first): idx 3 (0.9), 4 (0.8), 0 (0.7), 1 (0.2), 2 (0.1)
    target = [0.7, 0.2, 0.1, 0.9, 0.8]
    # predicted order: idx 1 (5), 3 (4), 0 (3), 4 (2), 2 (1)
    pred = [3.0, 5.0, 1.0, 4.0, 2.0]
    m = ranking_metrics(pred, target, k=(1, 2, 3, 5, 10))
    assert m["precision@1"] == 0.0  # {1} vs {3}
    assert m["precision@2"] == 0.5  # {1,3} vs {3,4}
    assert m["precision@3"] == pytest.approx(2 / 3)  # {1,3,0} vs {3,4,0}
    assert m["precision@5"] == 1.0
    assert "precision@10" not in m  # k > n is skipped
    assert m["top1_gt_rank"] == 4.0  # idx 1 has the 4th best GT
    assert m["top1_gt_percentile"] == pytest.approx(4 / 5)


def test_ties_broken_by_index() -> None:
    # all predicted equal -> top-k by predicted is the first k indices
    target = [0.1, 0.9, 0.8, 0.2]
    m = ranking_metrics([1.0, 1.0, 1.0, 1.0], target, k=(1, 2))
    assert m["precision@1"] == 0.0  # {0} vs {1}
    assert m["precision@2"] == 0.5  # {0,1} vs {1,2}
    assert m["top1_gt_rank"] == 4.0  # idx 0 is worst
    assert math.isnan(m["kendall_tau"]) and math.isnan(m["spearman"]) and math.isnan(m["mse_minmax"])
    # GT ties: rank = 1 + number strictly better
    m = ranking_metrics([0.0, 5.0, 1.0], [0.3, 0.5, 0.5], k=(1,))
    assert m["top1_gt_rank"] == 1.0
    # predicted tie at the top: lower index wins -> idx 0 (GT 0.2, rank 3)
    m = ranking_metrics([9.0, 9.0, 1.0], [0.2, 0.9, 0.5], k=(1,))
    assert m["top1_gt_rank"] == 3.0 and m["precision@1"] == 0.0


def test_mse_minmax_by_hand() -> None:
    # pred scaled: (0, 0.5, 1); target [10, 30, 20] scaled: (0, 1, 0.5)
    m = ranking_metrics([1.0, 2.0, 3.0], [10.0, 30.0, 20.0])
    assert m["mse_minmax"] == pytest.approx((0.0 + 0.25 + 0.25) / 3)
    # invariant to affine rescaling of either side
    m2 = ranking_metrics([100.0, 200.0, 300.0], [-1.0, 1.0, 0.0])
    assert m2["mse_minmax"] == pytest.approx(m["mse_minmax"])


def _equal_cost_tau_reference(pred, target, costs, tol):
    """Brute force: explicit double loop over pairs."""
    s = pairs = untied_p = untied_t = 0
    n = len(pred)
    for i in range(n):
        for j in range(i + 1, n):
            if abs(costs[i] - costs[j]) > tol * max(abs(costs[i]), abs(costs[j])):
                continue
            pairs += 1
            a, b = np.sign(pred[i] - pred[j]), np.sign(target[i] - target[j])
            s += a * b
            untied_p += a != 0
            untied_t += b != 0
    tau = s / math.sqrt(untied_p * untied_t) if untied_p and untied_t else math.nan
    return tau, pairs


@pytest.mark.parametrize("tol", [0.0, 0.05])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_cost_tau_matches_double_loop(seed: int, tol: float) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    costs = rng.choice([100.0, 103.0, 200.0, 205.0, 300.0], size=n)
    pred = rng.integers(0, 6, n).astype(float)
    target = rng.integers(0, 8, n).astype(float)
    m = ranking_metrics(pred, target, costs=costs.tolist(), cost_tolerance=tol)
    ref_tau, ref_pairs = _equal_cost_tau_reference(pred, target, costs, tol)
    assert m["equal_cost_pairs"] == ref_pairs
    assert m["kendall_tau_equal_cost"] == pytest.approx(ref_tau, abs=1e-12)
    if tol == 0.0:  # exact grouping: pairs = sum over groups of C(size, 2)
        sizes = np.unique(costs, return_counts=True)[1]
        assert ref_pairs == sum(s * (s - 1) // 2 for s in sizes)


def test_equal_cost_tau_single_group_equals_scipy_tau_b() -> None:
    rng = np.random.default_rng(5)
    pred, target = rng.integers(0, 4, 30).astype(float), rng.integers(0, 5, 30).astype(float)
    costs = np.array([7.0] * 12 + [100.0 + i for i in range(18)])  # one group of 12, the rest unique
    m = ranking_metrics(pred, target, costs=costs)
    assert m["equal_cost_pairs"] == 66
    assert m["kendall_tau_equal_cost"] == pytest.approx(stats.kendalltau(pred[:12], target[:12]).statistic)
    # all costs equal -> the plain tau-b
    m = ranking_metrics(pred, target, costs=[1.0] * 30)
    assert m["kendall_tau_equal_cost"] == pytest.approx(m["kendall_tau"], abs=1e-6)


def test_equal_cost_no_pairs_is_nan() -> None:
    m = ranking_metrics([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], costs=[1.0, 2.0, 3.0])
    assert m["equal_cost_pairs"] == 0 and math.isnan(m["kendall_tau_equal_cost"])
    assert "kendall_tau_equal_cost" not in ranking_metrics([1.0, 2.0], [1.0, 2.0])


def test_seed_to_seed_tau_matches_scipy() -> None:
    rng = np.random.default_rng(7)
    base = rng.normal(size=50)
    table = np.stack([np.round(base + rng.normal(scale=0.5, size=50), 1) for _ in range(4)], axis=1)
    expected = np.mean([stats.kendalltau(table[:, a], table[:, b]).statistic
                        for a, b in itertools.combinations(range(4), 2)])
    assert seed_to_seed_tau(torch.tensor(table)) == pytest.approx(expected, abs=1e-6)
    assert math.isnan(seed_to_seed_tau(torch.tensor(table[:, :1])))


def test_cost_proxy_metrics() -> None:
    target = [0.5, 0.7, 0.9, 0.6]
    out = cost_proxy_metrics(target, {"params": [1, 2, 3, 4], "flops": [4, 3, 2, 1]})
    assert set(out) == {"params", "flops"}
    assert out["params"]["kendall_tau"] == pytest.approx(stats.kendalltau([1, 2, 3, 4], target).statistic)
    assert out["flops"]["kendall_tau"] == pytest.approx(-out["params"]["kendall_tau"])


def test_errors() -> None:
    with pytest.raises(ValueError, match="same length"):
        ranking_metrics([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least 2"):
        ranking_metrics([1.0], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        ranking_metrics([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="costs"):
        ranking_metrics([1.0, 2.0], [1.0, 2.0], costs=[1.0])
    with pytest.raises(ValueError, match="k >= 1"):
        ranking_metrics([1.0, 2.0], [1.0, 2.0], k=(0,))
    with pytest.raises(ValueError, match="n_archs, n_seeds"):
        seed_to_seed_tau(torch.zeros(5))
