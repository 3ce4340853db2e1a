"""Evaluation of archs with inherited weights."""

from nas_lightning.evaluation.inherited import EvalTotals, evaluate_archs, preserved_state, recalibrate_bn

__all__ = ["EvalTotals", "evaluate_archs", "preserved_state", "recalibrate_bn"]
