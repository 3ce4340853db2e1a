"""Ranking metrics, ground-truth tables and performance-disturbance measurements."""

from nas_lightning.metrics.disturbance import (
    DisturbanceMatrix,
    disturbance_matrix,
    draw_archs,
    epoch_ktau,
    epoch_metrics,
    gt_tau,
    performance_change,
    save_disturbance_matrix,
)
from nas_lightning.metrics.disturbance_tracker import DisturbanceTracker
from nas_lightning.metrics.ground_truth import GroundTruth, check_coverage, load_ground_truth, save_ground_truth
from nas_lightning.metrics.ranking import cost_proxy_metrics, ranking_metrics, seed_to_seed_tau
from nas_lightning.metrics.ranking_report import RankingEvaluator, format_report, ranking_report

__all__ = [
    "DisturbanceMatrix",
    "DisturbanceTracker",
    "GroundTruth",
    "RankingEvaluator",
    "check_coverage",
    "cost_proxy_metrics",
    "disturbance_matrix",
    "draw_archs",
    "epoch_ktau",
    "epoch_metrics",
    "format_report",
    "gt_tau",
    "load_ground_truth",
    "performance_change",
    "ranking_metrics",
    "ranking_report",
    "save_disturbance_matrix",
    "save_ground_truth",
    "seed_to_seed_tau",
]
