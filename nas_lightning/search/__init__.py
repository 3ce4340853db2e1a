"""Architecture search over a trained supernet: SPOS evolution, PC-NAS potentials."""

from nas_lightning.search.evolution import EvolutionConfig, EvolutionResult, evolution_search, export_top_archs
from nas_lightning.search.evolution_run import EvolutionRun, format_top_archs
from nas_lightning.search.potential import PotentialResult, draw_completions, potentials

__all__ = [
    "EvolutionConfig",
    "EvolutionResult",
    "EvolutionRun",
    "PotentialResult",
    "draw_completions",
    "evolution_search",
    "export_top_archs",
    "format_top_archs",
    "potentials",
]
