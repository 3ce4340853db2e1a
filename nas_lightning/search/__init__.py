"""Architecture search over a trained supernet: SPOS evolution."""

from nas_lightning.search.evolution import EvolutionConfig, EvolutionResult, evolution_search, export_top_archs

__all__ = ["EvolutionConfig", "EvolutionResult", "evolution_search", "export_top_archs"]
