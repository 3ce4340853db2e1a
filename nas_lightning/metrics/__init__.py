"""Ranking metrics and ground-truth tables for judging how well a supernet ranks archs."""

from nas_lightning.metrics.ground_truth import GroundTruth, check_coverage, load_ground_truth, save_ground_truth
from nas_lightning.metrics.ranking import cost_proxy_metrics, ranking_metrics, seed_to_seed_tau

__all__ = [
    "GroundTruth",
    "check_coverage",
    "cost_proxy_metrics",
    "load_ground_truth",
    "ranking_metrics",
    "save_ground_truth",
    "seed_to_seed_tau",
]
