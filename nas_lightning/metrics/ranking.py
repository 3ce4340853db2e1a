"""Ranking metrics: how well a predicted score orders archs against their ground-truth accuracy.

Every score here is "higher = better" for both ``predicted`` and ``target``. Correlations come
from torchmetrics in float64; precision@k, the top-1 GT rank and the equal-cost Kendall tau are
computed here, vectorised with torch (pairwise sign matrices, fine for n up to a few thousand).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics.functional.regression import kendall_rank_corrcoef, pearson_corrcoef, spearman_corrcoef

__all__ = ["cost_proxy_metrics", "ranking_metrics", "seed_to_seed_tau"]

ArrayLike = Tensor | Sequence[float]


def _as_vector(x: ArrayLike, name: str) -> Tensor:
    t = x.detach().to("cpu", torch.float64) if isinstance(x, Tensor) else torch.as_tensor(x, dtype=torch.float64)
    if t.dim() != 1:
        t = t.squeeze()
        if t.dim() != 1:
            raise ValueError(f"{name} must be a 1-D sequence of scores, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _check_pair(predicted: ArrayLike, target: ArrayLike) -> tuple[Tensor, Tensor]:
    p, t = _as_vector(predicted, "predicted"), _as_vector(target, "target")
    if p.numel() != t.numel():
        raise ValueError(f"predicted and target must have the same length, got {p.numel()} and {t.numel()}")
    if p.numel() < 2:
        raise ValueError(f"ranking metrics need at least 2 archs, got {p.numel()}")
    return p, t


def _is_constant(x: Tensor) -> bool:
    return bool((x == x[0]).all())


def _kendall_tau_b(p: Tensor, t: Tensor) -> float:
    if _is_constant(p) or _is_constant(t):
        return math.nan
    return float(kendall_rank_corrcoef(p, t, variant="b"))


def _correlation(fn, p: Tensor, t: Tensor) -> float:
    # A constant vector has no ranking; torchmetrics returns 0 or NaN with a warning, we return NaN.
    if _is_constant(p) or _is_constant(t):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(p, t))


def _minmax(x: Tensor) -> Tensor:
    return (x - x.min()) / (x.max() - x.min())


def _top_order(x: Tensor) -> Tensor:
    """Indices sorted by descending score; ties broken by lower index first (stable sort)."""
    return torch.sort(x, descending=True, stable=True).indices


def _equal_cost_tau(p: Tensor, t: Tensor, costs: Tensor, tolerance: float) -> tuple[float, int]:
    diff = (costs[:, None] - costs[None, :]).abs()
    scale = torch.maximum(costs.abs()[:, None], costs.abs()[None, :])
    equal = diff <= tolerance * scale
    equal = torch.triu(equal, diagonal=1)  # each unordered pair (i < j) once
    n_pairs = int(equal.sum())
    if n_pairs == 0:
        return math.nan, 0
    sp = torch.sign(p[:, None] - p[None, :])[equal]
    st = torch.sign(t[:, None] - t[None, :])[equal]
    untied_p = int((sp != 0).sum())
    untied_t = int((st != 0).sum())
    if untied_p == 0 or untied_t == 0:
        return math.nan, n_pairs
    return float((sp * st).sum()) / math.sqrt(untied_p * untied_t), n_pairs


def ranking_metrics(predicted: ArrayLike, target: ArrayLike, k: Sequence[int] = (1, 5, 10),
                    costs: Sequence[float] | Tensor | None = None, cost_tolerance: float = 0.0) -> dict[str, float]:
    """Agreement between a predicted score and the ground truth over the same n archs (higher = better).

    Returns a dict with:

    * ``kendall_tau`` (tau-b), ``spearman``, ``pearson``: torchmetrics, float64 inputs. NaN when either
      vector is constant (no ranking to compare).
    * ``mse_minmax``: mean squared error between ``predicted`` and ``target`` after each is min-max
      scaled to [0, 1] independently. NaN when either vector is constant.
    * ``precision@{k}`` for each ``k <= n``: ``|top-k by predicted ∩ top-k by target| / k``; ties are
      broken by index (the lower index ranks first), so the result is deterministic.
    * ``top1_gt_rank``: 1-based GT rank of the arch ranked first by ``predicted`` (ties in predicted:
      the lowest index). The rank is ``1 + #archs with strictly higher target``, so archs tied in GT
      share the best rank among them. ``top1_gt_percentile`` is ``top1_gt_rank / n`` (1/n = best).
    * With ``costs``: ``equal_cost_pairs``, the number of unordered pairs ``i < j`` of equal cost,
      ``|c_i - c_j| <= cost_tolerance * max(|c_i|, |c_j|)`` (``cost_tolerance = 0``: exact equality);
      and ``kendall_tau_equal_cost``, a tau-b restricted to those pairs:

          (sum over pairs of sign(p_i - p_j) * sign(t_i - t_j)) / sqrt(U_p * U_t)

      where ``U_p`` (``U_t``) counts the equal-cost pairs not tied in predicted (target). Without
      ties this is (concordant - discordant) / pairs; when all costs fall in one group it equals the
      ordinary tau-b on that group. NaN when there are no equal-cost pairs or every pair is tied.

    Raises ``ValueError`` when the lengths differ, ``n < 2``, a ``k`` is not positive or the values
    are not finite.
    """
    p, t = _check_pair(predicted, target)
    n = p.numel()
    out: dict[str, float] = {
        "kendall_tau": _kendall_tau_b(p, t),
        "spearman": _correlation(spearman_corrcoef, p, t),
        "pearson": _correlation(pearson_corrcoef, p, t),
        "mse_minmax": math.nan if _is_constant(p) or _is_constant(t)
        else float(((_minmax(p) - _minmax(t)) ** 2).mean()),
    }
    order_p, order_t = _top_order(p), _top_order(t)
    for kk in k:
        kk = int(kk)
        if kk < 1:
            raise ValueError(f"precision@k needs k >= 1, got {kk}")
        if kk > n:
            continue
        top_p = torch.zeros(n, dtype=torch.bool)
        top_p[order_p[:kk]] = True
        out[f"precision@{kk}"] = int(top_p[order_t[:kk]].sum()) / kk
    best = order_p[0]
    rank = 1 + int((t > t[best]).sum())
    out["top1_gt_rank"] = float(rank)
    out["top1_gt_percentile"] = rank / n
    if costs is not None:
        c = _as_vector(costs, "costs")
        if c.numel() != n:
            raise ValueError(f"costs must have one entry per arch ({n}), got {c.numel()}")
        if cost_tolerance < 0:
            raise ValueError(f"cost_tolerance must be >= 0, got {cost_tolerance}")
        tau, pairs = _equal_cost_tau(p, t, c, float(cost_tolerance))
        out["kendall_tau_equal_cost"] = tau
        out["equal_cost_pairs"] = float(pairs)
    return out


def cost_proxy_metrics(target: ArrayLike, proxies: Mapping[str, ArrayLike],
                       k: Sequence[int] = (1, 5, 10)) -> dict[str, dict[str, float]]:
    """``ranking_metrics(proxy, target)`` for each cost proxy (e.g. ``{"params": ..., "flops": ...}``).

    Every ranking figure should stand beside what these trivial proxies achieve on the same archs.
    """
    return {name: ranking_metrics(values, target, k=k) for name, values in proxies.items()}


def seed_to_seed_tau(per_seed: Tensor | Sequence[Sequence[float]]) -> float:
    """Mean Kendall tau-b over all pairs of seeds of a (n_archs, n_seeds) table: the GT's own ceiling.

    NaN with a single seed. Pairs whose tau is undefined (a constant column) are skipped; NaN if all are.
    """
    x = per_seed.detach().to("cpu", torch.float64) if isinstance(per_seed, Tensor) \
        else torch.as_tensor(per_seed, dtype=torch.float64)
    if x.dim() != 2:
        raise ValueError(f"per_seed must have shape (n_archs, n_seeds), got {tuple(x.shape)}")
    n_archs, n_seeds = x.shape
    if n_seeds < 2:
        return math.nan
    if n_archs < 2:
        raise ValueError(f"seed_to_seed_tau needs at least 2 archs, got {n_archs}")
    if not torch.isfinite(x).all():
        raise ValueError("per_seed contains NaN or infinite values")
    taus = [_kendall_tau_b(x[:, a], x[:, b]) for a in range(n_seeds) for b in range(a + 1, n_seeds)]
    taus = [v for v in taus if not math.isnan(v)]
    return sum(taus) / len(taus) if taus else math.nan
