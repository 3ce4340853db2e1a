"""Orthogonal gradient projection of shared weights (DI-NAS, arXiv:2003.13089, eqs. 6-8): the math
(``owm``) and the per-layer input features it folds in (``layer_inputs``). The Lightning side is
``callbacks.projection_matrix_update.ProjectionMatrixUpdate``."""

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

__all__ = [
    "PROJECTABLE",
    "LayerInputRecorder",
    "LayerLayout",
    "alpha_at",
    "batch_sum",
    "closed_form",
    "conv_patches",
    "gradient_matrix",
    "layer_features",
    "project_gradient",
    "project_layer_gradient",
    "rank_one_update",
    "woodbury_update",
]
