"""Evaluation of archs with inherited weights."""

from nas_lightning.evaluation.inherited import (
    Batch,
    EvalTotals,
    Reduce,
    Unit,
    assign_archs,
    default_batches_per_forward,
    evaluate_archs,
    evaluate_units,
    preserved_state,
    recalibrate_bn,
    use_batch_statistics,
)

__all__ = [
    "Batch",
    "EvalTotals",
    "Reduce",
    "Unit",
    "assign_archs",
    "default_batches_per_forward",
    "evaluate_archs",
    "evaluate_units",
    "preserved_state",
    "recalibrate_bn",
    "use_batch_statistics",
]
