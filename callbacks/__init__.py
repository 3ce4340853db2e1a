"""Lightning callbacks of nas-lightning: what happens between (or after) supernet training steps."""

from callbacks.controller_step import ControllerStep
from callbacks.disturbance_metrics import DisturbanceMetrics
from callbacks.evolution_search import EvolutionSearch
from callbacks.policy_step import PolicyStep
from callbacks.pool_shrinking import PoolShrinking
from callbacks.projection_matrix_update import ProjectionMatrixUpdate
from callbacks.ranking_evaluation import RankingEvaluation
from callbacks.sharing_state_update import SharingStateUpdate

__all__ = [
    "ControllerStep",
    "DisturbanceMetrics",
    "EvolutionSearch",
    "PolicyStep",
    "PoolShrinking",
    "ProjectionMatrixUpdate",
    "RankingEvaluation",
    "SharingStateUpdate",
]
