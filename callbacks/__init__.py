"""Lightning callbacks of nas-lightning: what happens between (or after) supernet training steps."""

from callbacks.disturbance_metrics import DisturbanceMetrics
from callbacks.evolution_search import EvolutionSearch
from callbacks.ranking_evaluation import RankingEvaluation

__all__ = ["DisturbanceMetrics", "EvolutionSearch", "RankingEvaluation"]
