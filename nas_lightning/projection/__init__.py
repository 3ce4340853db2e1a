"""Orthogonal gradient projection of shared weights (DI-NAS, arXiv:2003.13089, eqs. 6-8, after OWM,
arXiv:1810.01256): the math (``owm``), the per-layer input features it folds in (``layer_inputs``), and
the object that owns P and runs the update step by step (``projector``). The Lightning side is
``callbacks.projection_matrix_update.ProjectionMatrixUpdate``, which only calls ``OrthogonalProjector``."""

from nas_lightning.projection.layer_inputs import LayerInputRecorder, batch_sum, conv_patches, layer_features
from nas_lightning.projection.owm import (
    PROJECTABLE,
    LayerLayout,
    alpha_at,
    closed_form,
    gradient_matrix,
    project_gradient,
    project_layer_gradient,
    rank_one_update,
    woodbury_update,
)
from nas_lightning.projection.projector import (
    LAYER_TYPES,
    OrthogonalProjector,
    ProjectedSteps,
    Reduce,
    fold_features,
    mean_inputs,
    project_gradients,
    select_layers,
)

__all__ = [
    "LAYER_TYPES",
    "PROJECTABLE",
    "LayerInputRecorder",
    "LayerLayout",
    "OrthogonalProjector",
    "ProjectedSteps",
    "Reduce",
    "alpha_at",
    "batch_sum",
    "closed_form",
    "conv_patches",
    "fold_features",
    "gradient_matrix",
    "layer_features",
    "mean_inputs",
    "project_gradient",
    "project_gradients",
    "project_layer_gradient",
    "rank_one_update",
    "select_layers",
    "woodbury_update",
]
