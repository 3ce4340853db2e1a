"""Lightning callbacks of nas-lightning: what happens between (or after) supernet training steps."""

from callbacks.evolution_search import EvolutionSearch
from callbacks.ranking_evaluation import RankingEvaluation

__all__ = ["EvolutionSearch", "RankingEvaluation"]
