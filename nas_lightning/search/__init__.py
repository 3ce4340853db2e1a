"""Architecture search over a trained supernet: SPOS evolution, PC-NAS potentials."""

from nas_lightning.search.evolution import EvolutionConfig, EvolutionResult, evolution_search, export_top_archs
from nas_lightning.search.potential import PotentialResult, draw_completions, potentials

__all__ = [
    "EvolutionConfig",
    "EvolutionResult",
    "PotentialResult",
    "draw_completions",
    "evolution_search",
    "export_top_archs",
    "potentials",
]
